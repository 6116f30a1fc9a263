import { createTempDir, type TempDir } from './tmp.js';

/** What we need of node:test's TestContext (or SuiteContext-like objects). */
export interface TestHooks {
  readonly name: string;
  after(hook: () => Promise<void>): void;
}

export interface TestScope {
  /** A temp dir private to this test, removed after everything else is cleaned up. */
  readonly dir: TempDir;
  /** Registers a cleanup; cleanups run in reverse order of registration after the test. */
  defer(cleanup: () => unknown): void;
}

/**
 * A temp dir plus a cleanup stack for one test. node:test runs `t.after` hooks in the order
 * they were added, which would remove the temp dir while the registry started later still
 * writes into it; here the last thing started is the first thing stopped, and the dir goes last.
 * Every cleanup runs even if an earlier one throws; the failures are reported together.
 */
export async function createTestScope(t: TestHooks): Promise<TestScope> {
  const dir = await createTempDir(t.name);
  const cleanups: Array<() => unknown> = [() => dir.remove()];
  t.after(async () => {
    const failures: unknown[] = [];
    for (const cleanup of cleanups.reverse()) {
      try {
        await cleanup();
      } catch (error) {
        failures.push(error);
      }
    }
    if (failures.length > 0) throw new AggregateError(failures, `${failures.length} cleanup(s) of "${t.name}" failed`);
  });
  return { dir, defer: (cleanup) => cleanups.push(cleanup) };
}
