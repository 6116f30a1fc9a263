import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify as toYaml } from 'yaml';
import { scrapeMetrics, type MetricsSnapshot } from './metrics.js';
import { startProcess, type ProcessExit } from './process.js';

/**
 * The built Ferry daemon as a real process: `daemon/bin/ferry.js daemon --config FILE`, the same
 * command an operator runs. The config object is written as YAML next to the data dir; the daemon
 * validates it at start (daemon/src/config.ts), so a bad key fails here with the log tail.
 *
 * Files under `<dir>/ferry-<name>/`:
 *   config.yaml    the config as written
 *   ferry.log      stdout and stderr: pino JSON lines, one per event
 *   data/          dataDir, unless the config names another; committed blobs are
 *                  data/blobs/sha256/<first two hex>/<64 hex>
 */

// dist-test/harness/ferry.js -> daemon/bin/ferry.js, the shell trampoline that runs the project's Node.
const FERRY_BIN = fileURLToPath(new URL('../../daemon/bin/ferry.js', import.meta.url));
const SERVING_MESSAGE = 'ferry is serving';

/** One upstream, as in the config file's `registries.<host>.upstreams[]`. */
export interface FerryUpstreamConfig {
  name?: string;
  url: string;
  /** `passwordFile` relative to the config file's directory, i.e. `<dir>/ferry-<name>/`. */
  auth?: { username: string; password?: string; passwordFile?: string };
  timeout?: { connect?: string; firstByte?: string; idle?: string };
  breaker?: { failures?: number; open?: string };
}

/**
 * The YAML config document (see daemon/src/config.ts for every key). `listen` defaults to
 * 127.0.0.1:0 and `dataDir` to `data/` in the instance directory.
 */
export interface FerryConfigDocument {
  listen?: string;
  dataDir?: string;
  defaultRegistry?: string;
  log?: { level?: string };
  tagTimeout?: string;
  orphanTimeout?: string;
  shutdownTimeout?: string;
  registries: Record<string, { upstreams: FerryUpstreamConfig[]; peers?: boolean }>;
  /** Region peers (`p2p:` in daemon/src/config.ts); written as given. */
  p2p?: Record<string, unknown>;
  /** Store quota (`store:` in daemon/src/config.ts); written as given. */
  store?: Record<string, unknown>;
}

export interface StartFerryOptions {
  /** The test's temp dir; the instance lives in `<dir>/ferry-<name>`. */
  dir: string;
  /** Names the instance directory and appears in error messages. Default "ferry". */
  name?: string;
  config: FerryConfigDocument;
  /** Files written into the instance directory before start, e.g. `{ 'robot.pass': 'secret' }`. */
  files?: Record<string, string>;
  readyTimeoutMs?: number;
  /** Runs the daemon through this prefix, e.g. a network namespace's `ip netns exec <name>`. */
  execPrefix?: readonly string[];
  /** How long SIGTERM may take before SIGKILL; longer than the daemon's own shutdownTimeout. Default 15 s. */
  stopTimeoutMs?: number;
}

/** A pino log line: level, time, msg and whatever fields the event carries. */
export interface FerryLogLine {
  level: number;
  msg: string;
  [field: string]: unknown;
}

export interface Ferry {
  readonly name: string;
  /** e.g. http://127.0.0.1:40123, as the daemon logged it. */
  readonly url: string;
  /** host:port, for registries.conf mirrors. */
  readonly host: string;
  readonly port: number;
  readonly pid: number;
  readonly dir: string;
  readonly dataDir: string;
  readonly configPath: string;
  readonly logPath: string;
  /** Where a committed blob lives: `<dataDir>/blobs/sha256/<xx>/<hex>`. */
  blobPath(digest: string): string;
  /** GET /metrics, parsed. */
  scrapeMetrics(): Promise<MetricsSnapshot>;
  /** Every JSON line logged so far. */
  readLog(): Promise<FerryLogLine[]>;
  /** SIGTERM (graceful shutdown), SIGKILL after a bound; a clean shutdown exits with code 0. Idempotent. */
  stop(): Promise<ProcessExit>;
}

export function parseFerryLog(text: string): FerryLogLine[] {
  const lines: FerryLogLine[] = [];
  for (const line of text.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      lines.push(JSON.parse(line) as FerryLogLine);
    } catch {
      // A line cut off by a crash, or not ours; only whole JSON events count.
    }
  }
  return lines;
}

export async function startFerry(options: StartFerryOptions): Promise<Ferry> {
  const name = options.name ?? 'ferry';
  const dir = join(options.dir, `ferry-${name}`);
  await mkdir(dir, { recursive: true });
  for (const [file, contents] of Object.entries(options.files ?? {})) await writeFile(join(dir, file), contents);
  const dataDir = options.config.dataDir ?? join(dir, 'data');
  const config: FerryConfigDocument = {
    listen: '127.0.0.1:0',
    log: { level: 'info' },
    ...options.config,
    dataDir,
  };
  const configPath = join(dir, 'config.yaml');
  await writeFile(configPath, toYaml(config));

  // FERRY_* variables would override the file; the test's config is the whole truth.
  const env = Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith('FERRY_')));
  const logPath = join(dir, 'ferry.log');
  let url: string | undefined;
  const [command, ...prefix] = [...(options.execPrefix ?? []), FERRY_BIN] as unknown as [string, ...string[]];
  const child = await startProcess({
    name: `ferry ${name}${options.execPrefix ? ` (${options.execPrefix.join(' ')})` : ''}`,
    command,
    args: [...prefix, 'daemon', '--config', configPath],
    env,
    logFile: logPath,
    readyTimeoutMs: options.readyTimeoutMs ?? 20_000,
    stopTimeoutMs: options.stopTimeoutMs ?? 15_000,
    isReady: async () => {
      const serving = parseFerryLog(await readFile(logPath, 'utf8')).find((line) => line.msg === SERVING_MESSAGE);
      if (typeof serving?.url === 'string') url = serving.url;
      return url !== undefined;
    },
  });
  const { host, port } = new URL(url!);

  return {
    name,
    url: url!,
    host,
    port: Number(port),
    pid: child.pid,
    dir,
    dataDir,
    configPath,
    logPath,
    blobPath: (digest) => {
      const [algorithm, hex] = digest.split(':') as [string, string];
      return join(dataDir, 'blobs', algorithm, hex.slice(0, 2), hex);
    },
    scrapeMetrics: () => scrapeMetrics(`${url}/metrics`),
    readLog: async () => parseFerryLog(await readFile(logPath, 'utf8')),
    stop: () => child.stop(),
  };
}
