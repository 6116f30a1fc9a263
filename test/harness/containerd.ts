import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { runCommand, startProcess, type CommandOutput } from './process.js';
import type { RegistryCredentials } from './skopeo.js';

/**
 * containerd 1.6 as the real client of a registry mirror, isolated from any system
 * containerd: own root, state and sockets under the test's temp dir, CRI plugin disabled
 * (`ctr` does not need it). The CRI plugin on a real node reads the same hosts.toml files
 * (`config_path`) through the same parser as `ctr --hosts-dir`.
 *
 * What it sends to a mirror listed in hosts.toml:
 *   HEAD /v2/<name>/manifests/<tag>?ns=<registry host>     (needs Docker-Content-Digest back)
 *   GET  /v2/<name>/manifests/sha256:<hex>?ns=<registry host>
 *   GET  /v2/<name>/blobs/sha256:<hex>?ns=<registry host>
 * no `/v2/` ping and no credentials; on a connection error or any 4xx/5xx it moves on to the
 * next host, then to `server`.
 */

/** Namespace for everything the harness pulls; keeps it apart from other users' images. */
export const CONTAINERD_NAMESPACE = 'ferrytest';

export interface StartContainerdOptions {
  /** The test's temp dir; containerd's files go to `<dir>/containerd`. */
  dir: string;
}

export interface ContainerdPullOptions {
  /** Directory with `<registry host:port>/hosts.toml` files, see writeHostsToml. */
  hostsDir: string;
  /** e.g. "linux/arm64"; default is the machine's platform. */
  platform?: string;
  allPlatforms?: boolean;
  credentials?: RegistryCredentials;
  timeoutMs?: number;
}

export interface ImageRecord {
  name: string;
  mediaType: string;
  /** Digest of the manifest or index the image name points to. */
  digest: string;
}

export interface Containerd {
  /** The gRPC socket, for `ctr --address`. */
  readonly address: string;
  readonly namespace: string;
  readonly root: string;
  readonly logPath: string;
  /** Runs `ctr --address <socket> -n <namespace> ...args`. */
  ctr(args: readonly string[], options?: { timeoutMs?: number }): Promise<CommandOutput>;
  /** `ctr image pull`: fetches, unpacks (overlayfs) and records the image. */
  pull(reference: string, options: ContainerdPullOptions): Promise<ImageRecord>;
  /**
   * `ctr content fetch`: fetches the blobs of the image (one platform unless allPlatforms)
   * without unpacking. containerd 1.6 records the image name as well, like a pull.
   */
  contentFetch(reference: string, options: ContainerdPullOptions): Promise<void>;
  listImages(): Promise<ImageRecord[]>;
  /** Digests of every blob in the content store. */
  listContent(): Promise<string[]>;
  /** Removes every image and every blob, so the next pull goes to the network again. */
  removeEverything(): Promise<void>;
  stop(): Promise<void>;
}

function configToml(base: string): string {
  return `version = 2
root = ${JSON.stringify(join(base, 'root'))}
state = ${JSON.stringify(join(base, 'state'))}
# CRI would want a CNI setup and is not needed for ctr pulls.
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = ${JSON.stringify(join(base, 'containerd.sock'))}

[ttrpc]
  address = ${JSON.stringify(join(base, 'containerd.sock.ttrpc'))}

[debug]
  address = ${JSON.stringify(join(base, 'debug.sock'))}
  level = "info"

[plugins]
  # Collect garbage right after an image or blob is removed, not on a timer.
  [plugins."io.containerd.gc.v1.scheduler"]
    schedule_delay = "0s"
    startup_delay = "100ms"
`;
}

/**
 * Writes `<hostsDir>/<registryHost>/hosts.toml` sending pulls of `registryHost` to the mirrors
 * in order, then to `serverUrl`. containerd 1.6 rejects a file without any `[host."..."]`
 * table ("invalid `host` tree") and then silently falls back to https://<registryHost>.
 * The scheme in each URL decides plain HTTP; `ctr --plain-http` is not needed (observed with
 * 1.6.20: http:// hosts are used as written, and a loopback registry without any hosts.toml is
 * reached over plain HTTP too).
 */
export async function writeHostsToml(
  hostsDir: string,
  registryHost: string,
  mirrorUrls: readonly string[],
  serverUrl: string,
): Promise<string> {
  if (mirrorUrls.length === 0) throw new Error('hosts.toml needs at least one mirror: containerd 1.6 rejects a file without [host]');
  const lines = [`server = ${JSON.stringify(serverUrl)}`];
  for (const mirrorUrl of mirrorUrls) {
    lines.push('', `[host.${JSON.stringify(mirrorUrl)}]`, '  capabilities = ["pull", "resolve"]');
  }
  const dir = join(hostsDir, registryHost);
  await mkdir(dir, { recursive: true });
  const path = join(dir, 'hosts.toml');
  await writeFile(path, lines.join('\n') + '\n');
  return path;
}

function remoteFlags(options: ContainerdPullOptions): string[] {
  return [
    '--hosts-dir',
    options.hostsDir,
    ...(options.platform ? ['--platform', options.platform] : []),
    ...(options.allPlatforms ? ['--all-platforms'] : []),
    ...(options.credentials ? ['--user', `${options.credentials.username}:${options.credentials.password}`] : []),
  ];
}

export async function startContainerd(options: StartContainerdOptions): Promise<Containerd> {
  const base = join(options.dir, 'containerd');
  await mkdir(base, { recursive: true });
  const configPath = join(base, 'config.toml');
  await writeFile(configPath, configToml(base));
  const address = join(base, 'containerd.sock');
  const logPath = join(base, 'containerd.log');

  const ctr = (args: readonly string[], ctrOptions: { timeoutMs?: number } = {}): Promise<CommandOutput> =>
    runCommand('ctr', ['--address', address, '--namespace', CONTAINERD_NAMESPACE, ...args], {
      timeoutMs: ctrOptions.timeoutMs ?? 60_000,
    });

  const child = await startProcess({
    name: 'containerd',
    command: 'containerd',
    args: ['--config', configPath],
    logFile: logPath,
    isReady: async () => {
      await ctr(['version'], { timeoutMs: 5_000 });
      return true;
    },
  });

  const listImages = async (): Promise<ImageRecord[]> => {
    // Columns: REF TYPE DIGEST SIZE PLATFORMS LABELS; SIZE contains a space ("1.2 KiB"),
    // so only the first three whitespace-separated fields are taken.
    const { stdout } = await ctr(['image', 'ls']);
    return stdout
      .split('\n')
      .slice(1)
      .filter((line) => line.trim() !== '')
      .map((line) => {
        const [name, mediaType, digest] = line.split(/\s+/) as [string, string, string];
        return { name, mediaType, digest };
      });
  };

  const listContent = async (): Promise<string[]> => {
    const { stdout } = await ctr(['content', 'ls', '--quiet']);
    return stdout.split('\n').filter((line) => line.startsWith('sha256:'));
  };

  return {
    address,
    namespace: CONTAINERD_NAMESPACE,
    root: join(base, 'root'),
    logPath,
    ctr,
    pull: async (reference, pullOptions) => {
      await ctr(['image', 'pull', ...remoteFlags(pullOptions), reference], { timeoutMs: pullOptions.timeoutMs ?? 120_000 });
      const record = (await listImages()).find((image) => image.name === reference);
      if (!record) throw new Error(`ctr image pull ${reference} succeeded but left no image record`);
      return record;
    },
    contentFetch: async (reference, pullOptions) => {
      await ctr(['content', 'fetch', ...remoteFlags(pullOptions), reference], { timeoutMs: pullOptions.timeoutMs ?? 120_000 });
    },
    listImages,
    listContent,
    removeEverything: async () => {
      const images = (await listImages()).map((image) => image.name);
      // --sync waits for the garbage collector, which also drops the unpacked snapshots.
      if (images.length > 0) await ctr(['image', 'rm', '--sync', ...images]);
      const blobs = await listContent();
      if (blobs.length > 0) await ctr(['content', 'rm', ...blobs]);
    },
    stop: async () => {
      await child.stop();
    },
  };
}
