import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A directory private to one test; everything a test starts keeps its data and logs here. */
export interface TempDir {
  readonly path: string;
  /** Joins segments onto the temp dir, so call sites never build paths by hand. */
  join(...segments: string[]): string;
  /** Removes the whole tree. Safe to call twice. */
  remove(): Promise<void>;
}

/**
 * Creates a fresh directory under os.tmpdir(). The label ends up in the name so a leftover
 * directory (from a crashed run) says which test made it.
 */
export async function createTempDir(label = 'test'): Promise<TempDir> {
  const safeLabel = label.replace(/[^A-Za-z0-9_-]+/g, '-').slice(0, 40);
  const path = await mkdtemp(join(tmpdir(), `ferry-${safeLabel}-`));
  return {
    path,
    join: (...segments) => join(path, ...segments),
    // maxRetries: containerd and the registry may still be closing files for a moment after exit.
    remove: () => rm(path, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 }),
  };
}
