import { randomUUID } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { stringify as toYaml } from 'yaml';
import { findFreePort } from './ports.js';
import { httpAnswers, runCommand, startProcess, waitFor } from './process.js';
import type { TokenIssuer } from './token-issuer.js';

/**
 * The CNCF distribution registry (`docker-registry` 2.8) as a real central or regional
 * registry. Things about it that shape this module:
 * - The access log (Apache combined format) goes to stdout, the application log to stderr;
 *   we capture them to separate files so the access log can be parsed.
 * - In proxy mode (`proxy.remoteurl`) it is a read-only pull-through cache. It learns the
 *   upstream's auth scheme once, at start-up: start the upstream first. It sends credentials
 *   only to a Bearer (token) upstream, not to a Basic one (distribution issue 3153). It fetches a
 *   missing blob from upstream twice, caches per repository, and resolves tags upstream first.
 */

export type RegistryAuthOptions =
  | { auth: 'none' }
  | { auth: 'htpasswd'; users: Record<string, string> }
  | { auth: 'token'; tokenIssuer: Pick<TokenIssuer, 'realm' | 'service' | 'issuer' | 'rootCertBundlePath'> };

export interface RegistryProxyOptions {
  /** The upstream registry, e.g. the central registry's url. */
  remoteurl: string;
  username?: string;
  password?: string;
}

export type StartRegistryOptions = RegistryAuthOptions & {
  /**
   * Run the registry inside a network namespace (netns.ts), listening on its inner address, so
   * that clients on the host reach it over the namespace's shaped link.
   */
  namespace?: { execPrefix: readonly string[]; innerAddress: string };
  /** Directory for config, storage and logs; a subdirectory named after the registry is used. */
  dir: string;
  /** Names the subdirectory and appears in error messages, e.g. "central". */
  name?: string;
  proxy?: RegistryProxyOptions;
};

/** One line of the access log. */
export interface AccessLogEntry {
  method: string;
  /** Request path without the query string. */
  path: string;
  query: string;
  status: number;
  /** Response body bytes as logged, undefined when the log says "-". */
  bytes: number | undefined;
  userAgent: string;
  /** For /v2/<name>/blobs/<digest> and /v2/<name>/manifests/<reference>. */
  repository?: string;
  kind: 'blob' | 'manifest' | 'other';
  /** Digest for blobs; digest or tag for manifests. */
  reference?: string;
}

export interface BlobGetFilter {
  /** Only GETs with this status (e.g. 200). Default: any status. */
  status?: number;
  repository?: string;
}

export interface Registry {
  readonly name: string;
  /** e.g. http://127.0.0.1:41235 */
  readonly url: string;
  readonly port: number;
  /** host:port, as it appears in image references and containerd's hosts dir. */
  readonly host: string;
  readonly configPath: string;
  readonly accessLogPath: string;
  /** The application log (stderr). */
  readonly logPath: string;
  /** Prometheus endpoint on the registry's debug listener. */
  readonly metricsUrl: string;
  /** The filesystem driver's `rootdirectory`. */
  readonly storageRoot: string;
  /**
   * Where the registry keeps a blob's bytes: `<root>/docker/registry/v2/blobs/sha256/<xx>/<hex>/data`.
   * The registry does not verify this file when it serves it, so tests can corrupt it in place.
   */
  blobDataPath(digest: string): string;
  /**
   * The access log up to now. A line is written just after its response ends, so a client may
   * see the response first; this sends a marker request and waits until the marker is logged.
   * Marker requests are left out of the result.
   */
  readAccessLog(): Promise<AccessLogEntry[]>;
  /** Number of `GET /v2/<repo>/blobs/<digest>` requests, optionally for one digest. */
  countBlobGets(digest?: string, filter?: BlobGetFilter): Promise<number>;
  /**
   * Freezes the registry (SIGSTOP): the kernel still accepts connections, but nothing is answered
   * until resume(). Lets a test hold a download open for as long as it needs, without sleeping.
   * readAccessLog() and countBlobGets() wait for the registry, so call them after resume().
   */
  pause(): void;
  /** Undoes pause() (SIGCONT). */
  resume(): void;
  stop(): Promise<void>;
}

// `127.0.0.1 - - [27/Nov/2025:16:15:00 +0000] "GET /v2/a/blobs/sha256:.. HTTP/1.1" 200 1234 "" "skopeo/1.9.3"`
const ACCESS_LOG_LINE = /^\S+ \S+ \S+ \[[^\]]*\] "(\S+) (\S+) [^"]*" (\d{3}) (\d+|-) "(?:[^"\\]|\\.)*" "((?:[^"\\]|\\.)*)"/;
const ACCESS_LOG_MARKER = 'ferry-access-log-marker';
const V2_OBJECT_PATH = /^\/v2\/(.+)\/(blobs|manifests)\/([^/]+)$/;

export function parseAccessLog(text: string): AccessLogEntry[] {
  const entries: AccessLogEntry[] = [];
  for (const line of text.split('\n')) {
    const match = ACCESS_LOG_LINE.exec(line);
    if (!match) continue;
    const [, method, target, status, bytes, userAgent] = match as unknown as [string, string, string, string, string, string];
    const queryStart = target.indexOf('?');
    const path = queryStart < 0 ? target : target.slice(0, queryStart);
    const entry: AccessLogEntry = {
      method,
      path,
      query: queryStart < 0 ? '' : target.slice(queryStart + 1),
      status: Number(status),
      bytes: bytes === '-' ? undefined : Number(bytes),
      userAgent,
      kind: 'other',
    };
    const object = V2_OBJECT_PATH.exec(path);
    if (object) {
      entry.repository = object[1]!;
      entry.kind = object[2] === 'blobs' ? 'blob' : 'manifest';
      entry.reference = decodeURIComponent(object[3]!);
    }
    entries.push(entry);
  }
  return entries;
}

function authConfig(options: RegistryAuthOptions, htpasswdPath: string): Record<string, unknown> | undefined {
  switch (options.auth) {
    case 'none':
      return undefined;
    case 'htpasswd':
      return { htpasswd: { realm: 'ferry-test', path: htpasswdPath } };
    case 'token':
      return {
        token: {
          realm: options.tokenIssuer.realm,
          service: options.tokenIssuer.service,
          issuer: options.tokenIssuer.issuer,
          rootcertbundle: options.tokenIssuer.rootCertBundlePath,
        },
      };
  }
}

async function writeHtpasswd(path: string, users: Record<string, string>): Promise<void> {
  // The registry accepts bcrypt entries only, which `htpasswd -B` writes.
  const lines: string[] = [];
  for (const [username, password] of Object.entries(users)) {
    const { stdout } = await runCommand('htpasswd', ['-Bbn', username, password]);
    lines.push(stdout.trim());
  }
  await writeFile(path, lines.join('\n') + '\n');
}

export async function startRegistry(options: StartRegistryOptions): Promise<Registry> {
  const name = options.name ?? 'registry';
  const dir = join(options.dir, `registry-${name}`);
  await mkdir(join(dir, 'data'), { recursive: true });
  const port = await findFreePort();
  const debugPort = await findFreePort();
  const bindAddress = options.namespace?.innerAddress ?? '127.0.0.1';
  const host = `${bindAddress}:${port}`;
  const configPath = join(dir, 'config.yml');
  const htpasswdPath = join(dir, 'htpasswd');
  if (options.auth === 'htpasswd') await writeHtpasswd(htpasswdPath, options.users);

  const auth = authConfig(options, htpasswdPath);
  const config = {
    version: '0.1',
    log: { level: 'info', formatter: 'text', accesslog: { disabled: false }, fields: { service: name } },
    storage: {
      filesystem: { rootdirectory: join(dir, 'data') },
      delete: { enabled: true },
      cache: { blobdescriptor: 'inmemory' },
      maintenance: { uploadpurging: { enabled: false } },
    },
    http: {
      addr: host,
      secret: `ferry-test-${name}-not-a-secret`,
      headers: { 'X-Content-Type-Options': ['nosniff'] },
      debug: { addr: `${bindAddress}:${debugPort}`, prometheus: { enabled: true, path: '/metrics' } },
    },
    ...(auth ? { auth } : {}),
    ...(options.proxy ? { proxy: options.proxy } : {}),
    health: { storagedriver: { enabled: false } },
  };
  await writeFile(configPath, toYaml(config));

  const url = `http://${host}`;
  const accessLogPath = join(dir, 'access.log');
  const logPath = join(dir, 'registry.log');
  const child = await startProcess({
    name: `registry ${name}`,
    command: options.namespace ? options.namespace.execPrefix[0]! : 'docker-registry',
    args: [...(options.namespace ? [...options.namespace.execPrefix.slice(1), 'docker-registry'] : []), 'serve', configPath],
    logFile: logPath,
    stdoutFile: accessLogPath,
    // 401 is the normal answer of an authenticating registry to the version check.
    isReady: () => httpAnswers(`${url}/v2/`, [200, 401]),
  });

  const readAccessLog = async (): Promise<AccessLogEntry[]> => {
    const marker = `${ACCESS_LOG_MARKER}=${randomUUID()}`;
    const response = await fetch(`${url}/v2/?${marker}`);
    await response.body?.cancel();
    let text = '';
    await waitFor(
      async () => {
        text = await readFile(accessLogPath, 'utf8');
        return text.includes(marker);
      },
      { description: `registry ${name} to log ${marker} in ${accessLogPath}` },
    );
    return parseAccessLog(text).filter((entry) => !entry.query.startsWith(ACCESS_LOG_MARKER));
  };

  return {
    name,
    url,
    port,
    host,
    configPath,
    accessLogPath,
    logPath,
    metricsUrl: `http://${bindAddress}:${debugPort}/metrics`,
    storageRoot: join(dir, 'data'),
    blobDataPath: (digest) => {
      const [algorithm, hex] = digest.split(':') as [string, string];
      return join(dir, 'data', 'docker', 'registry', 'v2', 'blobs', algorithm, hex.slice(0, 2), hex, 'data');
    },
    readAccessLog,
    countBlobGets: async (digest, filter = {}) =>
      (await readAccessLog()).filter(
        (entry) =>
          entry.kind === 'blob' &&
          entry.method === 'GET' &&
          (digest === undefined || entry.reference === digest) &&
          (filter.status === undefined || entry.status === filter.status) &&
          (filter.repository === undefined || entry.repository === filter.repository),
      ).length,
    pause: () => {
      process.kill(child.pid, 'SIGSTOP');
    },
    resume: () => {
      if (!child.hasExited()) process.kill(child.pid, 'SIGCONT');
    },
    stop: async () => {
      // A stopped process would not act on SIGTERM until the SIGKILL bound.
      if (!child.hasExited()) process.kill(child.pid, 'SIGCONT');
      await child.stop();
    },
  };
}
