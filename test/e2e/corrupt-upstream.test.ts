import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { access, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { CommandFailedError, corruptInPlace, waitFor } from '../harness/index.js';
import { blobPath, buildAndPush, httpRequest, manifestPath, upstreamSource, useTopology, waitForDownloadsSettled, type FetchedBody } from './topology.js';

// A blob whose bytes are wrong at every upstream: the CNCF registry serves its storage file
// without checking it, so overwriting bytes there makes both registries serve corrupt content
// with the right length. Ferry must never commit it, never send it whole, and keep serving.

const topology = useTopology('e2e-corrupt-upstream');

function sha256(data: Buffer): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}


/** True when the response delivered the whole blob: the status, every byte, and an ending that was not an error. */
function deliveredWhole(response: FetchedBody, size: number): boolean {
  return response.status === 200 && response.error === undefined && response.body.length === size;
}

test('a blob corrupted at every upstream is never committed or served whole, and Ferry keeps serving', async (t) => {
  const env = topology();
  const { ferry, central, containerd, hostsDir } = env;
  const regional = env.regional!;
  const image = await buildAndPush(env, 'team/corrupt', [{ randomBytes: 768 * 1024 }, { randomBytes: 128 * 1024 }], { seed: 'corrupt/image' });
  const victim = image.layers[0]!;
  const healthy = image.layers[1]!;

  // The regional registry caches the blob first (a direct GET), so both registries hold a copy.
  const primed = await httpRequest(regional.url, `/v2/${image.repository}/blobs/${victim.digest}`);
  assert.equal(sha256(primed.body), victim.digest, 'precondition: regional served the good blob once');
  const regionalFile = regional.blobDataPath(victim.digest);
  await waitFor(() => exists(regionalFile), { description: `regional to store ${regionalFile}` });
  await corruptInPlace(regionalFile);
  await corruptInPlace(central.blobDataPath(victim.digest));
  const corrupt = await httpRequest(regional.url, `/v2/${image.repository}/blobs/${victim.digest}`);
  assert.equal(corrupt.body.length, victim.size, 'precondition: regional serves the corrupt file at full length');
  assert.notEqual(sha256(corrupt.body), victim.digest, 'precondition: regional does not verify what it serves');

  const metricsBefore = await ferry.scrapeMetrics();
  for (let attempt = 1; attempt <= 2; attempt++) {
    const response = await httpRequest(ferry.url, blobPath(env, image.repository, victim.digest));
    t.diagnostic(`attempt ${attempt}: status ${response.status}, ${response.body.length} of ${victim.size} bytes, ${response.error?.message ?? 'no body error'}`);
    assert.ok(!deliveredWhole(response, victim.size), `attempt ${attempt}: the client never got the whole blob`);
    assert.ok(response.body.length < victim.size, `attempt ${attempt}: at least the last byte was held back (${response.body.length} bytes)`);
    if (response.status !== 200) {
      assert.ok(response.status >= 400, `attempt ${attempt}: an error status, not ${response.status}`);
      assert.ok(Array.isArray((JSON.parse(response.body.toString()) as { errors: unknown[] }).errors));
    }
    await waitForDownloadsSettled(ferry);
  }

  assert.equal(await exists(ferry.blobPath(victim.digest)), false, 'the corrupt blob is not in the store');
  assert.deepEqual(await readdir(join(ferry.dataDir, 'ingest')), [], 'no partial file left behind');
  const metricsAfter = await ferry.scrapeMetrics();
  const corruptFrom = (source: string) =>
    metricsAfter.sum('ferry_corrupt_content_total', { source }) - metricsBefore.sum('ferry_corrupt_content_total', { source });
  assert.ok(corruptFrom(upstreamSource(regional)) >= 1, 'regional was caught sending corrupt content');
  assert.ok(corruptFrom(upstreamSource(central)) >= 1, 'so was central, tried next');
  assert.equal(
    metricsAfter.sum('ferry_downloads_total', { kind: 'blob', result: 'committed' }),
    metricsBefore.sum('ferry_downloads_total', { kind: 'blob', result: 'committed' }),
    'nothing was committed',
  );

  // containerd cannot get the image either: Ferry fails the layer, central refuses anonymous pulls.
  await assert.rejects(containerd!.pull(image.reference, { hostsDir, timeoutMs: 60_000 }), CommandFailedError);
  assert.equal(await exists(ferry.blobPath(victim.digest)), false);

  // Everything else still works.
  const good = await httpRequest(ferry.url, blobPath(env, image.repository, healthy.digest));
  assert.equal(good.status, 200);
  assert.equal(sha256(good.body), healthy.digest);
  await waitForDownloadsSettled(ferry);
  assert.equal(await exists(ferry.blobPath(healthy.digest)), true);
  const manifest = await httpRequest(ferry.url, manifestPath(env, image.repository, 'v1'));
  assert.equal(manifest.status, 200);
  assert.equal(sha256(manifest.body), image.pushedDigest);
  assert.equal((await httpRequest(ferry.url, '/healthz')).status, 200);
});

test('a blob corrupted only at the regional registry is discarded, fetched again from central, and committed', async (t) => {
  const env = topology();
  const { ferry, central, containerd, hostsDir } = env;
  const regional = env.regional!;
  const image = await buildAndPush(env, 'team/half-corrupt', [{ randomBytes: 512 * 1024 }], { seed: 'corrupt/regional-only' });
  const layer = image.layers[0]!;
  const primed = await httpRequest(regional.url, `/v2/${image.repository}/blobs/${layer.digest}`);
  assert.equal(sha256(primed.body), layer.digest, 'precondition: regional served the good blob once');
  await waitFor(() => exists(regional.blobDataPath(layer.digest)), { description: 'regional to store the blob' });
  await corruptInPlace(regional.blobDataPath(layer.digest));
  const metricsBefore = await ferry.scrapeMetrics();

  // The client that happened to follow the corrupt attempt may be cut off, but never gets wrong bytes whole.
  const first = await httpRequest(ferry.url, blobPath(env, image.repository, layer.digest));
  t.diagnostic(`first request: status ${first.status}, ${first.body.length} of ${layer.size} bytes, ${first.error?.message ?? 'no body error'}`);
  if (deliveredWhole(first, layer.size)) assert.equal(sha256(first.body), layer.digest, 'a whole body is the right one');
  await waitForDownloadsSettled(ferry);

  const metricsAfter = await ferry.scrapeMetrics();
  const change = (name: string, labels: Record<string, string>) => metricsAfter.sum(name, labels) - metricsBefore.sum(name, labels);
  assert.equal(change('ferry_corrupt_content_total', { source: upstreamSource(regional) }), 1, 'regional was caught once');
  assert.equal(change('ferry_corrupt_content_total', { source: upstreamSource(central) }), 0);
  assert.equal(change('ferry_fetched_bytes_total', { kind: 'blob', source: upstreamSource(central) }), layer.size, 'central sent the whole blob');
  assert.equal(change('ferry_downloads_total', { kind: 'blob', result: 'committed' }), 1);
  assert.equal(await exists(ferry.blobPath(layer.digest)), true, 'the verified blob is in the store');

  const second = await httpRequest(ferry.url, blobPath(env, image.repository, layer.digest));
  assert.equal(sha256(second.body), layer.digest);
  assert.equal((await containerd!.pull(image.reference, { hostsDir })).digest, image.pushedDigest);
});
