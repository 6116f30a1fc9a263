import { createCipheriv, createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join, posix } from 'node:path';
import { runCommand } from './process.js';
import { copy, type RegistryCredentials } from './skopeo.js';

/**
 * Test images, built offline with umoci into an OCI image layout and pushed with skopeo.
 *
 * Builds are reproducible: the same layers, platform and seed give the same digests on every
 * run and machine. Layer tars are written here (sorted, uid/gid 0, mtime 0) and added with
 * `umoci raw add-layer`; every timestamp umoci would take from the clock is pinned.
 *
 * `umoci insert` is not used on purpose: the Debian umoci 0.4.7 writes a truncated layer from
 * it (the tar stream stops after the last file's data, without padding or end-of-archive
 * blocks), which GNU tar and containerd's unpacker reject.
 *
 * OCI image layout on disk (image-spec image-layout.md):
 *   <dir>/oci-layout                 {"imageLayoutVersion": "1.0.0"}
 *   <dir>/index.json                 one descriptor per tag (annotation org.opencontainers.image.ref.name)
 *   <dir>/blobs/sha256/<hex>         manifests, configs, gzip layers, and the image index we write
 */

export interface Platform {
  os: string;
  architecture: string;
}

/** Files written into one layer: path inside the image -> contents. */
export interface FilesLayer {
  files: Record<string, string | Buffer>;
}

/** One file of `randomBytes` pseudo-random bytes; incompressible, so the blob is about that big. */
export interface RandomLayer {
  randomBytes: number;
  /** Default: derived from the image seed, the platform and the layer's position. */
  seed?: string;
}

export type LayerSpec = FilesLayer | RandomLayer;

export interface BuildImageOptions {
  /** OCI layout directory; created if missing, shared by several tags if reused. */
  dir: string;
  layers: readonly LayerSpec[];
  platform?: Platform;
  tag?: string;
  /** Seeds the random layers that have no seed of their own. */
  seed?: string;
}

export interface LayerDescriptor {
  digest: string;
  /** Size of the compressed blob, as in the manifest. */
  size: number;
  mediaType: string;
}

export interface BuiltImage {
  layoutDir: string;
  tag: string;
  /** `oci:<dir>:<tag>`, ready for skopeo. */
  reference: string;
  platform: Platform;
  manifestDigest: string;
  manifestSize: number;
  configDigest: string;
  configSize: number;
  layers: LayerDescriptor[];
}

export interface BuildIndexOptions {
  dir: string;
  tag?: string;
  platforms?: readonly Platform[];
  /** The same layers for every platform, or a function giving each platform its own. */
  layers: readonly LayerSpec[] | ((platform: Platform) => readonly LayerSpec[]);
  seed?: string;
}

export interface BuiltIndex {
  layoutDir: string;
  tag: string;
  reference: string;
  indexDigest: string;
  indexSize: number;
  /** One per platform, in the order of the index. */
  images: BuiltImage[];
}

export const DEFAULT_PLATFORM: Platform = { os: 'linux', architecture: 'amd64' };
export const MEDIA_TYPE_OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
export const MEDIA_TYPE_OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const REF_NAME_ANNOTATION = 'org.opencontainers.image.ref.name';
// Any fixed instant will do; it only has to be the same on every build.
const FIXED_TIMESTAMP = '1970-01-01T00:00:00Z';

/**
 * Deterministic pseudo-random bytes: the AES-256-CTR keystream under the key sha256(seed).
 * Fast (hardware AES) and reproducible, unlike crypto.randomBytes.
 */
export function seededBytes(seed: string, length: number): Buffer {
  const key = createHash('sha256').update(seed).digest();
  const cipher = createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
  return Buffer.concat([cipher.update(Buffer.alloc(length)), cipher.final()]);
}

export function sha256Digest(data: Buffer | string): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

// --- ustar writer -------------------------------------------------------------------------
// Just enough of POSIX ustar for regular files and their parent directories; paths must fit
// the 100-byte name field.

function tarHeader(path: string, typeFlag: '0' | '5', size: number): Buffer {
  if (Buffer.byteLength(path) > 100) throw new Error(`tar path longer than 100 bytes: ${path}`);
  const header = Buffer.alloc(512);
  const field = (offset: number, length: number, value: string): void => {
    header.write(value, offset, length, 'utf8');
  };
  const octal = (offset: number, length: number, value: number): void => {
    field(offset, length, value.toString(8).padStart(length - 1, '0') + '\0');
  };
  field(0, 100, path);
  octal(100, 8, typeFlag === '5' ? 0o755 : 0o644);
  octal(108, 8, 0); // uid
  octal(116, 8, 0); // gid
  octal(124, 12, size);
  octal(136, 12, 0); // mtime
  field(148, 8, '        '); // checksum is computed over the header with this field as spaces
  field(156, 1, typeFlag);
  field(257, 6, 'ustar\0');
  field(263, 2, '00');
  field(265, 32, 'root');
  field(297, 32, 'root');
  let checksum = 0;
  for (const byte of header) checksum += byte;
  field(148, 8, checksum.toString(8).padStart(6, '0') + '\0 ');
  return header;
}

/** A tar of `files` (sorted, parents included as directories), deterministic byte for byte. */
export function createTar(files: Record<string, string | Buffer>): Buffer {
  const entries = new Map<string, Buffer | undefined>();
  for (const [rawPath, contents] of Object.entries(files)) {
    const path = posix.normalize(rawPath).replace(/^\/+/, '');
    if (path === '' || path === '.' || path.startsWith('../')) throw new Error(`bad path in layer: ${rawPath}`);
    const segments = path.split('/');
    for (let depth = 1; depth < segments.length; depth++) entries.set(segments.slice(0, depth).join('/') + '/', undefined);
    entries.set(path, Buffer.from(contents));
  }
  const parts: Buffer[] = [];
  for (const path of [...entries.keys()].sort()) {
    const contents = entries.get(path);
    if (contents === undefined) {
      parts.push(tarHeader(path, '5', 0));
      continue;
    }
    parts.push(tarHeader(path, '0', contents.length), contents);
    const padding = (512 - (contents.length % 512)) % 512;
    if (padding > 0) parts.push(Buffer.alloc(padding));
  }
  parts.push(Buffer.alloc(1024)); // end-of-archive marker
  return Buffer.concat(parts);
}

// --- OCI layout ---------------------------------------------------------------------------

interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  platform?: Platform;
}

interface LayoutIndex {
  schemaVersion: 2;
  mediaType?: string;
  manifests: Descriptor[];
}

function blobPath(layoutDir: string, digest: string): string {
  const [algorithm, hex] = digest.split(':');
  return join(layoutDir, 'blobs', algorithm!, hex!);
}

async function readLayoutIndex(layoutDir: string): Promise<LayoutIndex> {
  return JSON.parse(await readFile(join(layoutDir, 'index.json'), 'utf8')) as LayoutIndex;
}

function platformName(platform: Platform): string {
  return `${platform.os}-${platform.architecture}`;
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

export async function buildImage(options: BuildImageOptions): Promise<BuiltImage> {
  const tag = options.tag ?? 'latest';
  const platform = options.platform ?? DEFAULT_PLATFORM;
  const seed = options.seed ?? 'ferry';
  const layoutDir = options.dir;
  const image = `${layoutDir}:${tag}`;

  if (!(await exists(join(layoutDir, 'oci-layout')))) {
    await mkdir(dirname(layoutDir), { recursive: true });
    await runCommand('umoci', ['init', '--layout', layoutDir]);
  }
  await runCommand('umoci', ['new', '--image', image]);

  const scratchDir = await mkdtemp(join(dirname(layoutDir), '.layers-'));
  try {
    for (const [position, layer] of options.layers.entries()) {
      const files =
        'files' in layer
          ? layer.files
          : {
              [`random-${position}.bin`]: seededBytes(
                layer.seed ?? `${seed}/${platformName(platform)}/${position}`,
                layer.randomBytes,
              ),
            };
      const tarPath = join(scratchDir, `layer-${position}.tar`);
      await writeFile(tarPath, createTar(files));
      await runCommand('umoci', [
        'raw', 'add-layer', '--image', image,
        '--history.created', FIXED_TIMESTAMP, '--history.created_by', `ferry test layer ${position}`,
        tarPath,
      ]);
    }
  } finally {
    await rm(scratchDir, { recursive: true, force: true });
  }

  await runCommand('umoci', [
    'config', '--image', image, '--no-history',
    '--created', FIXED_TIMESTAMP, '--os', platform.os, '--architecture', platform.architecture,
  ]);
  // Each umoci step leaves the previous manifest and config behind as unreferenced blobs.
  await runCommand('umoci', ['gc', '--layout', layoutDir]);

  const descriptor = (await readLayoutIndex(layoutDir)).manifests.find(
    (entry) => entry.annotations?.[REF_NAME_ANNOTATION] === tag,
  );
  if (!descriptor) throw new Error(`umoci left no manifest tagged ${tag} in ${layoutDir}`);
  const manifest = JSON.parse(await readFile(blobPath(layoutDir, descriptor.digest), 'utf8')) as {
    config: Descriptor;
    layers: Descriptor[];
  };
  return {
    layoutDir,
    tag,
    reference: `oci:${layoutDir}:${tag}`,
    platform,
    manifestDigest: descriptor.digest,
    manifestSize: descriptor.size,
    configDigest: manifest.config.digest,
    configSize: manifest.config.size,
    layers: manifest.layers.map(({ digest, size, mediaType }) => ({ digest, size, mediaType })),
  };
}

/**
 * Builds one image per platform into one layout and ties them together with an OCI image
 * index. umoci cannot write an index, so we store the index blob and its index.json entry
 * ourselves. Each platform image also stays tagged `<tag>-<os>-<arch>`.
 */
export async function buildMultiPlatformIndex(options: BuildIndexOptions): Promise<BuiltIndex> {
  const tag = options.tag ?? 'latest';
  const platforms = options.platforms ?? [DEFAULT_PLATFORM, { os: 'linux', architecture: 'arm64' }];
  const images: BuiltImage[] = [];
  for (const platform of platforms) {
    images.push(
      await buildImage({
        dir: options.dir,
        tag: `${tag}-${platformName(platform)}`,
        platform,
        layers: typeof options.layers === 'function' ? options.layers(platform) : options.layers,
        seed: options.seed,
      }),
    );
  }

  const imageIndex: LayoutIndex = {
    schemaVersion: 2,
    mediaType: MEDIA_TYPE_OCI_INDEX,
    manifests: images.map((image) => ({
      mediaType: MEDIA_TYPE_OCI_MANIFEST,
      digest: image.manifestDigest,
      size: image.manifestSize,
      platform: image.platform,
    })),
  };
  const indexBytes = Buffer.from(JSON.stringify(imageIndex));
  const indexDigest = sha256Digest(indexBytes);
  await writeFile(blobPath(options.dir, indexDigest), indexBytes);

  const layoutIndex = await readLayoutIndex(options.dir);
  layoutIndex.manifests = layoutIndex.manifests.filter((entry) => entry.annotations?.[REF_NAME_ANNOTATION] !== tag);
  layoutIndex.manifests.push({
    mediaType: MEDIA_TYPE_OCI_INDEX,
    digest: indexDigest,
    size: indexBytes.length,
    annotations: { [REF_NAME_ANNOTATION]: tag },
  });
  await writeFile(join(options.dir, 'index.json'), JSON.stringify(layoutIndex));

  return {
    layoutDir: options.dir,
    tag,
    reference: `oci:${options.dir}:${tag}`,
    indexDigest,
    indexSize: indexBytes.length,
    images,
  };
}

export interface PushImageOptions {
  credentials?: RegistryCredentials;
  /** `v2s2` pushes a Docker schema 2 manifest (its digest differs from the OCI one). */
  format?: 'oci' | 'v2s2';
  /** Push an index with every platform image (`skopeo copy --all`). */
  all?: boolean;
}

/**
 * Pushes an image or index from an OCI layout (`oci:<dir>:<tag>`) to a registry
 * (`docker://127.0.0.1:PORT/repo:tag`) and returns the digest the registry now serves.
 */
export async function pushImage(source: string, destination: string, options: PushImageOptions = {}): Promise<string> {
  const { manifestDigest } = await copy(source, destination, {
    destinationCredentials: options.credentials,
    format: options.format,
    all: options.all,
  });
  return manifestDigest;
}
