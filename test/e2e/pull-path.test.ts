import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { test } from 'node:test';
import { Client, Pool } from 'undici';
import { buildMultiPlatformIndex, pushImage, skopeo, waitFor, type MetricsSnapshot, type Registry } from '../harness/index.js';
import {
  blobPath,
  buildAndPush,
  httpRequest,
  manifestPath,
  PUSHER,
  upstreamSource,
  useTopology,
  waitForDownloadsSettled,
  type Topology,
} from './topology.js';

// The pull path with the real parts: containerd and skopeo pulling through a Ferry daemon whose
// upstreams are a regional pull-through registry and a token-auth central registry. Each test
// pushes images of its own, so the tests do not depend on each other's order or state.

const topology = useTopology('e2e-pull-path');

const DOCKER_MANIFEST_V2 = 'application/vnd.docker.distribution.manifest.v2+json';
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
const FERRY_USER_AGENT = 'ferry/';

function totalSize(blobs: ReadonlyArray<{ size: number }>): number {
  return blobs.reduce((sum, blob) => sum + blob.size, 0);
}

/** Blob GETs a registry answered, per digest, optionally only those Ferry sent. */
async function blobGetsByDigest(registry: Registry, options: { fromFerry?: boolean } = {}): Promise<Map<string, number>> {
  const counts = new Map<string, number>();
  for (const entry of await registry.readAccessLog()) {
    if (entry.kind !== 'blob' || entry.method !== 'GET' || entry.reference === undefined) continue;
    if (options.fromFerry && !entry.userAgent.startsWith(FERRY_USER_AGENT)) continue;
    counts.set(entry.reference, (counts.get(entry.reference) ?? 0) + 1);
  }
  return counts;
}

function difference(after: Map<string, number>, before: Map<string, number>): Map<string, number> {
  const delta = new Map<string, number>();
  for (const [digest, count] of after) {
    const added = count - (before.get(digest) ?? 0);
    if (added !== 0) delta.set(digest, added);
  }
  return delta;
}

function delta(after: MetricsSnapshot, before: MetricsSnapshot, name: string, labels: Record<string, string> = {}): number {
  return after.sum(name, labels) - before.sum(name, labels);
}

function sha256(data: Buffer): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

/**
 * Pulls a cold image with containerd through Ferry and checks that it came from the regional
 * registry through Ferry: the pulled digest, Ferry's fetched bytes, and regional's access log.
 */
async function assertColdPullThroughFerry(
  env: Topology,
  reference: string,
  expectedDigest: string,
  blobs: ReadonlyArray<{ digest: string; size: number }>,
  pullOptions: { platform?: string } = {},
): Promise<void> {
  const { ferry, containerd, hostsDir } = env;
  const regional = env.regional!;
  const metricsBefore = await ferry.scrapeMetrics();
  const regionalBefore = await blobGetsByDigest(regional, { fromFerry: true });

  const pulled = await containerd!.pull(reference, { hostsDir, ...pullOptions });
  assert.equal(pulled.digest, expectedDigest, `containerd recorded ${reference} with the pushed digest`);
  const content = await containerd!.listContent();
  for (const blob of blobs) assert.ok(content.includes(blob.digest), `containerd has ${blob.digest}`);
  await waitForDownloadsSettled(ferry);

  const metricsAfter = await ferry.scrapeMetrics();
  assert.equal(
    delta(metricsAfter, metricsBefore, 'ferry_fetched_bytes_total', { kind: 'blob', source: upstreamSource(regional) }),
    totalSize(blobs),
    'Ferry fetched every blob of the image from the regional registry, each once',
  );
  assert.equal(delta(metricsAfter, metricsBefore, 'ferry_fetched_bytes_total', { kind: 'blob', source: upstreamSource(env.central) }), 0);
  assert.ok(delta(metricsAfter, metricsBefore, 'ferry_served_bytes_total', { kind: 'blob' }) >= totalSize(blobs));
  assert.deepEqual(
    difference(await blobGetsByDigest(regional, { fromFerry: true }), regionalBefore),
    new Map(blobs.map((blob) => [blob.digest, 1])),
    'regional served each blob of the image to Ferry exactly once, and nothing else',
  );
}

test('containerd pulls an OCI image, a Docker schema-2 image and one platform of an index through Ferry', async () => {
  const env = topology();
  const { central, containerd, scope } = env;
  const containerdAtCentralBefore = (await central.readAccessLog()).filter((entry) => entry.userAgent.startsWith('containerd/')).length;

  const oci = await buildAndPush(env, 'team/oci-app', [{ files: { 'etc/app.txt': 'oci image\n' } }, { randomBytes: 512 * 1024 }], {
    seed: 'pull-path/oci',
  });
  assert.equal(oci.pushedDigest, oci.manifestDigest);
  await assertColdPullThroughFerry(env, oci.reference, oci.pushedDigest, oci.blobs);

  const docker = await buildAndPush(env, 'team/docker-app', [{ files: { 'etc/app.txt': 'docker image\n' } }, { randomBytes: 512 * 1024 }], {
    seed: 'pull-path/docker',
    format: 'v2s2',
  });
  assert.equal(docker.pushedMediaType, DOCKER_MANIFEST_V2);
  await assertColdPullThroughFerry(env, docker.reference, docker.pushedDigest, docker.blobs);
  assert.equal((await containerd!.listImages()).find((image) => image.name === docker.reference)?.mediaType, DOCKER_MANIFEST_V2);

  const index = await buildMultiPlatformIndex({ dir: scope.dir.join('images', 'multi'), layers: [{ randomBytes: 256 * 1024 }], seed: 'pull-path/multi' });
  const indexReference = `${central.host}/team/multi-app:v1`;
  assert.equal(await pushImage(index.reference, `docker://${indexReference}`, { credentials: PUSHER, all: true }), index.indexDigest);
  const [amd64, arm64] = index.images as [(typeof index.images)[number], (typeof index.images)[number]];
  await assertColdPullThroughFerry(
    env,
    indexReference,
    index.indexDigest,
    [{ digest: arm64.configDigest, size: arm64.configSize }, ...arm64.layers],
    { platform: 'linux/arm64' },
  );
  assert.equal((await containerd!.listImages()).find((image) => image.name === indexReference)?.mediaType, OCI_INDEX);
  const contentAfterIndex = await containerd!.listContent();
  assert.ok(contentAfterIndex.includes(arm64.manifestDigest));
  assert.ok(!contentAfterIndex.includes(amd64.manifestDigest), 'the other platform was not pulled');
  assert.equal(await env.regional!.countBlobGets(amd64.layers[0]!.digest), 0, 'nor fetched by Ferry');

  const containerdAtCentral = (await central.readAccessLog()).filter((entry) => entry.userAgent.startsWith('containerd/')).length;
  assert.equal(containerdAtCentral, containerdAtCentralBefore, 'containerd never fell back to the server in hosts.toml');
});

test('a second pull of a cached image takes no blob bytes from any upstream', async () => {
  const env = topology();
  const { ferry, containerd, hostsDir, central } = env;
  const regional = env.regional!;
  const image = await buildAndPush(env, 'team/warm-app', [{ randomBytes: 384 * 1024 }, { randomBytes: 128 * 1024 }], { seed: 'pull-path/warm' });
  await assertColdPullThroughFerry(env, image.reference, image.pushedDigest, image.blobs);

  await containerd!.removeEverything();
  assert.deepEqual(await containerd!.listContent(), [], 'containerd forgot every blob');
  const metricsBefore = await ferry.scrapeMetrics();
  const regionalBlobGetsBefore = await regional.countBlobGets();
  const centralBlobGetsBefore = await central.countBlobGets();

  const pulled = await containerd!.pull(image.reference, { hostsDir });
  assert.equal(pulled.digest, image.pushedDigest);
  const content = await containerd!.listContent();
  for (const blob of image.blobs) assert.ok(content.includes(blob.digest), `containerd has ${blob.digest} again`);

  const metricsAfter = await ferry.scrapeMetrics();
  assert.equal(delta(metricsAfter, metricsBefore, 'ferry_fetched_bytes_total', { kind: 'blob' }), 0, 'no blob bytes fetched from any source');
  assert.equal(await regional.countBlobGets(), regionalBlobGetsBefore, 'regional served no blob');
  assert.equal(await central.countBlobGets(), centralBlobGetsBefore, 'central served no blob');
  assert.ok(
    delta(metricsAfter, metricsBefore, 'ferry_requests_total', { kind: 'blob', source: 'local', result: 'hit' }) >= image.blobs.length,
    'every blob was a local hit',
  );
  assert.ok(delta(metricsAfter, metricsBefore, 'ferry_served_bytes_total', { kind: 'blob', source: 'local' }) >= totalSize(image.blobs));
});

test('an image sharing layers with a cached image in another repository fetches only its new blobs', async () => {
  const env = topology();
  const { ferry, containerd, hostsDir } = env;
  const regional = env.regional!;
  const sharedLayers = [{ randomBytes: 384 * 1024, seed: 'pull-path/shared-0' }, { randomBytes: 256 * 1024, seed: 'pull-path/shared-1' }];
  const base = await buildAndPush(env, 'team/base', sharedLayers, { seed: 'pull-path/base' });
  const derived = await buildAndPush(env, 'other-team/derived', [...sharedLayers, { randomBytes: 192 * 1024 }], { seed: 'pull-path/derived' });
  const shared = base.layers.map((layer) => layer.digest);
  assert.deepEqual(derived.layers.slice(0, 2).map((layer) => layer.digest), shared, 'precondition: the first two layers are the same blobs');
  const newBlobs = derived.blobs.filter((blob) => !shared.includes(blob.digest));
  assert.equal(newBlobs.length, 2, 'the derived image adds a config and one layer');

  await assertColdPullThroughFerry(env, base.reference, base.pushedDigest, base.blobs);
  // Without this containerd would not ask for the shared layers at all.
  await containerd!.removeEverything();

  const metricsBefore = await ferry.scrapeMetrics();
  const regionalBefore = await blobGetsByDigest(regional);
  const pulled = await containerd!.pull(derived.reference, { hostsDir });
  assert.equal(pulled.digest, derived.pushedDigest);
  const metricsAfter = await ferry.scrapeMetrics();

  assert.deepEqual(
    difference(await blobGetsByDigest(regional), regionalBefore),
    new Map(newBlobs.map((blob) => [blob.digest, 1])),
    'regional served the new config and layer once each, and none of the shared layers',
  );
  assert.equal(delta(metricsAfter, metricsBefore, 'ferry_fetched_bytes_total', { kind: 'blob' }), totalSize(newBlobs));
  const sharedSize = totalSize(derived.blobs) - totalSize(newBlobs);
  assert.ok(delta(metricsAfter, metricsBefore, 'ferry_served_bytes_total', { kind: 'blob', source: 'local' }) >= sharedSize);
});

test('8 concurrent pulls of a cold image fetch each blob from upstream exactly once', async (t) => {
  const env = topology();
  const { ferry, containerd, hostsDir } = env;
  const regional = env.regional!;
  const image = await buildAndPush(env, 'team/popular', [{ randomBytes: 3 * 1024 * 1024 }, { randomBytes: 1024 * 1024 }], {
    seed: 'pull-path/popular',
  });
  const metricsBefore = await ferry.scrapeMetrics();
  const regionalBefore = await blobGetsByDigest(regional);
  const clients = 8;

  // Every client streams every blob at once over its own connections, like 8 nodes' worth of
  // containerd, and a real containerd pull of the same image runs alongside them. The regional
  // registry is frozen until Ferry has started its downloads, so no download can finish before
  // the clients' requests are in.
  const pool = new Pool(ferry.url, { connections: clients * image.blobs.length + 4 });
  try {
    regional.pause();
    let transfers;
    try {
      const streams = Array.from({ length: clients }, () =>
        image.blobs.map(async (blob) => ({ blob, response: await httpRequest(ferry.url, blobPath(env, image.repository, blob.digest), { pool }) })),
      ).flat();
      const manifests = Array.from({ length: clients }, () => httpRequest(ferry.url, manifestPath(env, image.repository, image.pushedDigest), { pool }));
      transfers = Promise.all([containerd!.pull(image.reference, { hostsDir }), Promise.all(streams), Promise.all(manifests)]);
      transfers.catch(() => undefined);
      await waitFor(async () => (await ferry.scrapeMetrics()).value('ferry_active_downloads') === image.blobs.length, {
        description: 'Ferry to start one download per blob',
      });
    } finally {
      regional.resume();
    }
    const [pulled, results, manifestResults] = await transfers;

    assert.equal(pulled.digest, image.pushedDigest);
    assert.equal(results.length, clients * image.blobs.length);
    for (const { blob, response } of results) {
      assert.equal(response.status, 200);
      assert.equal(response.error, undefined, `the body of ${blob.digest} ended normally`);
      assert.equal(response.body.length, blob.size);
      assert.equal(sha256(response.body), blob.digest, 'every client received the right bytes');
    }
    for (const response of manifestResults) assert.equal(sha256(response.body), image.pushedDigest);
  } finally {
    await pool.close();
  }
  await waitForDownloadsSettled(ferry);

  assert.deepEqual(
    difference(await blobGetsByDigest(regional), regionalBefore),
    new Map(image.blobs.map((blob) => [blob.digest, 1])),
    'regional served each blob once for 8 clients and containerd',
  );
  const metricsAfter = await ferry.scrapeMetrics();
  assert.equal(delta(metricsAfter, metricsBefore, 'ferry_downloads_total', { kind: 'blob' }), image.blobs.length, 'one download per blob');
  assert.equal(delta(metricsAfter, metricsBefore, 'ferry_downloads_total', { kind: 'blob', result: 'committed' }), image.blobs.length);
  assert.equal(delta(metricsAfter, metricsBefore, 'ferry_fetched_bytes_total', { kind: 'blob' }), totalSize(image.blobs));
  const answered = delta(metricsAfter, metricsBefore, 'ferry_requests_total', { kind: 'blob' });
  assert.ok(answered >= clients * image.blobs.length, `Ferry answered every request (${answered})`);
  const joined = delta(metricsAfter, metricsBefore, 'ferry_requests_total', { kind: 'blob', result: 'fetched' });
  t.diagnostic(`${joined} of ${answered} blob requests followed a running download; the rest were local hits`);
});

test('a download goes on after the client that started it disconnects', async () => {
  const env = topology();
  const { ferry } = env;
  const regional = env.regional!;
  const image = await buildAndPush(env, 'team/abandoned', [{ randomBytes: 1024 * 1024 }], { seed: 'pull-path/abandoned' });
  const layer = image.layers[0]!;
  const metricsBefore = await ferry.scrapeMetrics();
  const committed = async () => (await ferry.scrapeMetrics()).sum('ferry_downloads_total', { kind: 'blob', result: 'committed' });
  const committedBefore = await committed();

  // With regional frozen, the download is certainly still running when the only client hangs up.
  regional.pause();
  try {
    const client = new Client(ferry.url);
    const abandoned = client.request({ path: blobPath(env, image.repository, layer.digest), method: 'GET' }).then(
      () => undefined,
      (error: unknown) => error,
    );
    await waitFor(async () => (await ferry.scrapeMetrics()).value('ferry_active_downloads') === 1, { description: 'Ferry to start the download' });
    await client.destroy();
    assert.ok((await abandoned) instanceof Error, 'the client gave up before any answer');
    // A later request on another connection: by its answer Ferry has seen the hang-up.
    assert.equal((await httpRequest(ferry.url, '/healthz')).status, 200);
  } finally {
    regional.resume();
  }

  await waitFor(async () => (await committed()) > committedBefore, { description: 'the abandoned download to be committed' });
  assert.equal(await regional.countBlobGets(layer.digest), 1);
  const again = await httpRequest(ferry.url, blobPath(env, image.repository, layer.digest));
  assert.equal(sha256(again.body), layer.digest);
  const metricsAfter = await ferry.scrapeMetrics();
  assert.equal(delta(metricsAfter, metricsBefore, 'ferry_fetched_bytes_total', { kind: 'blob' }), layer.size, 'fetched once, in full');
  assert.equal(await regional.countBlobGets(layer.digest), 1, 'the second request was served from the store');
});

test('skopeo copies an image through Ferry (no ?ns=, the default registry) via a registries.conf mirror', async () => {
  const env = topology();
  const { ferry, central, scope } = env;
  const regional = env.regional!;
  const image = await buildAndPush(env, 'team/skopeo-app', [{ files: { 'etc/skopeo.txt': 'copied by skopeo\n' } }, { randomBytes: 256 * 1024 }], {
    seed: 'pull-path/skopeo',
  });
  const registriesConf = await skopeo.writeMirrorRegistriesConf(scope.dir.join('registries.conf'), {
    registry: central.host,
    mirrors: [ferry.host],
  });
  const skopeoAtCentral = async () => (await central.readAccessLog()).filter((entry) => entry.userAgent.startsWith('skopeo/')).length;
  const skopeoAtCentralBefore = await skopeoAtCentral();
  const metricsBefore = await ferry.scrapeMetrics();

  const destination = scope.dir.join('skopeo-copy');
  // No credentials: central would refuse skopeo, so the copy can only succeed through Ferry.
  const { manifestDigest } = await skopeo.copy(`docker://${image.reference}`, `oci:${destination}:copied`, { registriesConf });
  assert.equal(manifestDigest, image.pushedDigest);
  for (const blob of image.blobs) {
    const bytes = await readFile(`${destination}/blobs/sha256/${blob.digest.slice('sha256:'.length)}`);
    assert.equal(sha256(bytes), blob.digest, `the copy holds ${blob.digest}`);
  }

  const metricsAfter = await ferry.scrapeMetrics();
  assert.equal(await skopeoAtCentral(), skopeoAtCentralBefore, 'skopeo did not fall back to central');
  assert.ok(!(await regional.readAccessLog()).some((entry) => entry.userAgent.startsWith('skopeo/')), 'nor go to regional');
  assert.equal(delta(metricsAfter, metricsBefore, 'ferry_fetched_bytes_total', { kind: 'blob', source: upstreamSource(regional) }), totalSize(image.blobs));
  assert.ok(delta(metricsAfter, metricsBefore, 'ferry_requests_total', { kind: 'manifest' }) >= 1);
});
