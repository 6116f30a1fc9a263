import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runCommand } from './process.js';

/**
 * skopeo (containers/image) as a real client: pushes test images and pulls through mirrors
 * the way podman and CRI-O do. Unlike containerd it pings `/v2/` on a mirror, asks for
 * manifests by tag and sends no `?ns=` parameter.
 *
 * Every call is hermetic: `--insecure-policy` instead of /etc/containers/policy.json, an
 * explicit registries.conf (an explicit file also turns off the registries.conf.d drop-ins),
 * and `--*-no-creds` unless credentials are given, so nothing on the host changes what a test
 * sends.
 */

export interface RegistryCredentials {
  username: string;
  password: string;
}

export interface SkopeoCommonOptions {
  /** containers-registries.conf(5) file, e.g. from writeMirrorRegistriesConf. Default: none. */
  registriesConf?: string;
  timeoutMs?: number;
}

export interface SkopeoCopyOptions extends SkopeoCommonOptions {
  sourceCredentials?: RegistryCredentials;
  destinationCredentials?: RegistryCredentials;
  /** Manifest format to write; `v2s2` converts an OCI image to Docker schema 2 (a new digest). */
  format?: 'oci' | 'v2s2';
  /** Copy every image of an index (`--all`) instead of the one for this machine's platform. */
  all?: boolean;
}

export interface CopyResult {
  /** Digest of the manifest (or index) as written to the destination. */
  manifestDigest: string;
}

export interface RawManifest {
  text: string;
  /** sha256 of the exact bytes the registry served. */
  digest: string;
  /** The document's own `mediaType` field; OCI manifests written by umoci leave it out. */
  mediaType: string | undefined;
}

const EMPTY_REGISTRIES_CONF = '/dev/null';

function credentialsFlag(flag: string, noCredsFlag: string, credentials: RegistryCredentials | undefined): string[] {
  return credentials ? [flag, `${credentials.username}:${credentials.password}`] : [noCredsFlag];
}

function globalFlags(options: SkopeoCommonOptions): string[] {
  return ['--insecure-policy', '--registries-conf', options.registriesConf ?? EMPTY_REGISTRIES_CONF];
}

/** `skopeo copy SOURCE DESTINATION`, plain HTTP allowed on both sides. */
export async function copy(source: string, destination: string, options: SkopeoCopyOptions = {}): Promise<CopyResult> {
  const workDir = await mkdtemp(join(tmpdir(), 'ferry-skopeo-'));
  try {
    const digestFile = join(workDir, 'digest');
    await runCommand(
      'skopeo',
      [
        ...globalFlags(options),
        'copy',
        '--src-tls-verify=false',
        '--dest-tls-verify=false',
        ...credentialsFlag('--src-creds', '--src-no-creds', options.sourceCredentials),
        ...credentialsFlag('--dest-creds', '--dest-no-creds', options.destinationCredentials),
        ...(options.format ? ['--format', options.format] : []),
        ...(options.all ? ['--all'] : []),
        '--digestfile',
        digestFile,
        source,
        destination,
      ],
      { timeoutMs: options.timeoutMs ?? 120_000 },
    );
    return { manifestDigest: (await readFile(digestFile, 'utf8')).trim() };
  } finally {
    await rm(workDir, { recursive: true, force: true });
  }
}

export interface SkopeoInspectOptions extends SkopeoCommonOptions {
  credentials?: RegistryCredentials;
}

/** `skopeo inspect --raw`: the manifest or index exactly as served, with its digest. */
export async function inspectRaw(reference: string, options: SkopeoInspectOptions = {}): Promise<RawManifest> {
  const { stdout } = await runCommand(
    'skopeo',
    [
      ...globalFlags(options),
      'inspect',
      '--raw',
      '--tls-verify=false',
      ...credentialsFlag('--creds', '--no-creds', options.credentials),
      reference,
    ],
    { timeoutMs: options.timeoutMs ?? 60_000 },
  );
  const parsed = JSON.parse(stdout) as { mediaType?: string };
  return { text: stdout, digest: `sha256:${createHash('sha256').update(stdout).digest('hex')}`, mediaType: parsed.mediaType };
}

/** What `skopeo inspect` reports for the image matching this machine's platform. */
export interface ImageInspection {
  Digest: string;
  Architecture: string;
  Os: string;
  Layers: string[];
  [key: string]: unknown;
}

/** `skopeo inspect` without tag listing (which would need extra registry permissions). */
export async function inspect(reference: string, options: SkopeoInspectOptions = {}): Promise<ImageInspection> {
  const { stdout } = await runCommand(
    'skopeo',
    [
      ...globalFlags(options),
      'inspect',
      '--no-tags',
      '--tls-verify=false',
      ...credentialsFlag('--creds', '--no-creds', options.credentials),
      reference,
    ],
    { timeoutMs: options.timeoutMs ?? 60_000 },
  );
  return JSON.parse(stdout) as ImageInspection;
}

export interface MirrorRegistriesConf {
  /** The registry clients name in references, host:port. */
  registry: string;
  /** Mirrors tried in order before `registry`, host:port each. */
  mirrors: readonly string[];
}

/**
 * Writes a containers-registries.conf(5) that sends pulls of `registry` to the mirrors first,
 * all over plain HTTP (`insecure = true`).
 */
export async function writeMirrorRegistriesConf(path: string, conf: MirrorRegistriesConf): Promise<string> {
  const lines = [
    'unqualified-search-registries = []',
    '',
    '[[registry]]',
    `location = ${JSON.stringify(conf.registry)}`,
    'insecure = true',
    ...conf.mirrors.flatMap((mirror) => ['', '[[registry.mirror]]', `location = ${JSON.stringify(mirror)}`, 'insecure = true']),
  ];
  await writeFile(path, lines.join('\n') + '\n');
  return path;
}
