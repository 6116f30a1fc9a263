import { after, before } from 'node:test';
import { Client, type Dispatcher, type Pool } from 'undici';
import {
  buildImage,
  createTestScope,
  pushImage,
  startContainerd,
  startFerry,
  startRegistry,
  startTokenIssuer,
  skopeo,
  waitFor,
  writeHostsToml,
  MEDIA_TYPE_OCI_MANIFEST,
  type BuildImageOptions,
  type BuiltImage,
  type Containerd,
  type Ferry,
  type LayerSpec,
  type PushImageOptions,
  type Registry,
  type TestScope,
  type TokenIssuer,
} from '../harness/index.js';

/**
 * The deployment every end-to-end test runs against, started once per test file:
 *
 *   containerd ──hosts.toml──▶ Ferry ──1──▶ regional (docker-registry, proxy mode, anonymous)
 *                               │                │ robot credentials
 *                               └──────2──────▶ central (docker-registry, token auth) ◀── token issuer
 *
 * hosts.toml names Ferry as the only mirror and central as `server`. containerd has no
 * credentials and central refuses anonymous pulls, so a pull that succeeds came through Ferry.
 */

export const PUSHER = { username: 'ci-pusher', password: 'pusher-secret' };
/** Harbor-style robot account: the `$` is part of the name. */
export const ROBOT = { username: 'robot$ferry-pull', password: 'robot-secret' };
export const TOKEN_SERVICE = 'ferry-e2e-central';

export interface Topology {
  scope: TestScope;
  tokenIssuer: TokenIssuer;
  central: Registry;
  /** Absent when the topology was started with `regional: false`. */
  regional: Registry | undefined;
  ferry: Ferry;
  containerd: Containerd | undefined;
  /** containerd's `--hosts-dir`, sending `central.host` to Ferry. */
  hostsDir: string;
  /** The registry name clients use in references and `?ns=`: central's host:port. */
  registry: string;
}

export interface TopologyOptions {
  /** Put the regional registry in front of central (default true). */
  regional?: boolean;
  containerd?: boolean;
}

/** The token issuer, central (token auth) and, unless turned off, regional (proxy mode) in front of it. */
export async function startRegistries(
  scope: TestScope,
  options: { regional?: boolean } = {},
): Promise<{ tokenIssuer: TokenIssuer; central: Registry; regional: Registry | undefined }> {
  const { dir, defer } = scope;
  const tokenIssuer = await startTokenIssuer({
    dir: dir.path,
    service: TOKEN_SERVICE,
    users: { [PUSHER.username]: PUSHER.password, [ROBOT.username]: ROBOT.password },
    pushers: [PUSHER.username],
  });
  defer(() => tokenIssuer.stop());
  const central = await startRegistry({ dir: dir.path, name: 'central', auth: 'token', tokenIssuer });
  defer(() => central.stop());

  let regional: Registry | undefined;
  if (options.regional ?? true) {
    // After central: the proxy learns its upstream's auth scheme once, at start-up.
    regional = await startRegistry({ dir: dir.path, name: 'regional', auth: 'none', proxy: { remoteurl: central.url, ...ROBOT } });
    defer(() => regional!.stop());
  }
  return { tokenIssuer, central, regional };
}

export async function startTopology(scope: TestScope, options: TopologyOptions = {}): Promise<Topology> {
  const { dir, defer } = scope;
  const { tokenIssuer, central, regional } = await startRegistries(scope, options);

  const ferry = await startFerry({
    dir: dir.path,
    files: { 'robot.pass': `${ROBOT.password}\n` },
    config: {
      registries: {
        [central.host]: {
          upstreams: [
            ...(regional ? [{ url: regional.url }] : []),
            { url: central.url, auth: { username: ROBOT.username, passwordFile: 'robot.pass' } },
          ],
        },
      },
    },
  });
  // A graceful shutdown on SIGTERM is part of the contract: a hang or a crash fails the file.
  defer(async () => {
    const exit = await ferry.stop();
    if (exit.code !== 0) throw new Error(`ferry did not shut down cleanly on SIGTERM (code ${exit.code}, signal ${exit.signal}); see ${ferry.logPath}`);
  });

  let containerd: Containerd | undefined;
  if (options.containerd ?? true) {
    containerd = await startContainerd({ dir: dir.path });
    defer(() => containerd!.stop());
  }
  const hostsDir = dir.join('hosts');
  await writeHostsToml(hostsDir, central.host, [ferry.url], central.url);
  return { scope, tokenIssuer, central, regional, ferry, containerd, hostsDir, registry: central.host };
}

/**
 * Starts the topology in the file's `before` hook and tears it down in its `after` hook; the
 * returned function gives the running topology to tests. Tests in one file share it, so each test
 * pushes images of its own (own seed, own repository) and does not depend on another test's state.
 */
export function useTopology(name: string, options: TopologyOptions = {}): () => Topology {
  let topology: Topology | undefined;
  let cleanup: (() => Promise<void>) | undefined;
  before(async () => {
    const scope = await createTestScope({ name, after: (hook) => (cleanup = hook) });
    topology = await startTopology(scope, options);
  });
  after(async () => {
    await cleanup?.();
  });
  return () => {
    if (!topology) throw new Error('the topology did not start; see the before hook');
    return topology;
  };
}

export interface PushedImage extends BuiltImage {
  /** `<central host>/<repository>:<tag>`, for ctr. */
  reference: string;
  repository: string;
  /** The digest central serves for the tag (differs from manifestDigest for Docker schema 2). */
  pushedDigest: string;
  /** The media type central serves for the tag. */
  pushedMediaType: string;
  /** Config and layers as the pushed manifest names them: every blob a pull of this image fetches. */
  blobs: Array<{ digest: string; size: number }>;
}

/** Builds an image in the test's temp dir and pushes it to central as the pusher. */
export async function buildAndPush(
  topology: Topology,
  repository: string,
  layers: readonly LayerSpec[],
  options: { seed: string; tag?: string; format?: PushImageOptions['format']; platform?: BuildImageOptions['platform'] },
): Promise<PushedImage> {
  const tag = options.tag ?? 'v1';
  const image = await buildImage({
    dir: topology.scope.dir.join('images', `${repository.replaceAll('/', '_')}-${tag}`),
    layers,
    seed: options.seed,
    tag,
    ...(options.platform ? { platform: options.platform } : {}),
  });
  const pushedDigest = await pushImage(image.reference, `docker://${topology.central.host}/${repository}:${tag}`, {
    credentials: PUSHER,
    ...(options.format ? { format: options.format } : {}),
  });
  // The blobs as the pushed manifest names them: a Docker schema 2 conversion may rewrite the config.
  const pushed = await skopeo.inspectRaw(`docker://${topology.central.host}/${repository}@${pushedDigest}`, { credentials: PUSHER });
  const manifest = JSON.parse(pushed.text) as { config: Descriptor; layers: Descriptor[] };
  return {
    ...image,
    reference: `${topology.central.host}/${repository}:${tag}`,
    repository,
    pushedDigest,
    pushedMediaType: pushed.mediaType ?? MEDIA_TYPE_OCI_MANIFEST,
    blobs: [manifest.config, ...manifest.layers].map(({ digest, size }) => ({ digest, size })),
  };
}

interface Descriptor {
  digest: string;
  size: number;
}

/**
 * Waits until Ferry has no download running. A client's response may end as soon as the digest
 * matched, before the blob is renamed into place and counted as committed; tests that look at the
 * store or at ferry_downloads_total after a pull wait for this first.
 */
export async function waitForDownloadsSettled(ferry: Ferry): Promise<void> {
  await waitFor(async () => (await ferry.scrapeMetrics()).value('ferry_active_downloads') === 0, {
    description: `ferry ${ferry.name} to finish its downloads`,
  });
}

/** `upstream:<host:port>`: the `source` label Ferry gives an upstream named after its URL. */
export function upstreamSource(registry: Registry): string {
  return `upstream:${registry.host}`;
}

export interface FetchedBody {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
  /** Set when the body broke off (socket destroyed, truncated) instead of ending. */
  error: Error | undefined;
}

/**
 * One request with the path sent exactly as given: no URL normalisation, so bad input reaches the
 * daemon as written. A body that breaks off is reported in `error`, with the bytes received so far.
 * Without a `pool`, a connection of its own is opened and closed.
 */
export async function httpRequest(
  origin: string,
  path: string,
  options: { method?: Dispatcher.HttpMethod; headers?: Record<string, string>; pool?: Pool } = {},
): Promise<FetchedBody> {
  const dispatcher = options.pool ?? new Client(origin);
  try {
    const response = await dispatcher.request({ path, method: options.method ?? 'GET', headers: options.headers ?? {} });
    const chunks: Buffer[] = [];
    let error: Error | undefined;
    try {
      for await (const chunk of response.body) chunks.push(chunk as Buffer);
    } catch (caught) {
      error = caught as Error;
    }
    return { status: response.statusCode, headers: response.headers, body: Buffer.concat(chunks), error };
  } finally {
    if (!options.pool) await dispatcher.close();
  }
}

/** Path of a blob in the v2 API, with containerd's `?ns=`. */
export function blobPath(topology: Topology, repository: string, digest: string): string {
  return `/v2/${repository}/blobs/${digest}?ns=${encodeURIComponent(topology.registry)}`;
}

export function manifestPath(topology: Topology, repository: string, reference: string): string {
  return `/v2/${repository}/manifests/${reference}?ns=${encodeURIComponent(topology.registry)}`;
}
