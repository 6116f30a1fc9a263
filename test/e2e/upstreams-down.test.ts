import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CommandFailedError, startFerry, writeHostsToml } from '../harness/index.js';
import { ROBOT, blobPath, buildAndPush, httpRequest, manifestPath, useTopology, waitForDownloadsSettled } from './topology.js';

// Every upstream gone (regional and central stopped): what was pulled before still pulls by tag,
// from the last-known digest; what was never pulled fails with an answer, not a hang.

const topology = useTopology('e2e-upstreams-down');
/** Set by the first test: the image the restart test expects to find in the persisted cache. */
let cachedDigest: string | undefined;

test('with every upstream stopped, a cached image still pulls by tag and an uncached one fails', async () => {
  const env = topology();
  const { ferry, containerd, hostsDir, central } = env;
  const regional = env.regional!;
  const cached = await buildAndPush(env, 'team/cached', [{ randomBytes: 256 * 1024 }, { files: { 'etc/motd': 'cached\n' } }], { seed: 'down/cached' });
  const uncached = await buildAndPush(env, 'team/uncached', [{ randomBytes: 256 * 1024 }], { seed: 'down/uncached' });
  assert.equal((await containerd!.pull(cached.reference, { hostsDir })).digest, cached.pushedDigest, 'warm-up pull through Ferry');
  cachedDigest = cached.pushedDigest;
  await waitForDownloadsSettled(ferry);
  await containerd!.removeEverything();

  await regional.stop();
  await central.stop();
  const down = await httpRequest(regional.url, '/v2/').then(
    () => false,
    () => true,
  );
  assert.ok(down, 'precondition: regional no longer answers');

  const metricsBefore = await ferry.scrapeMetrics();
  const pulled = await containerd!.pull(cached.reference, { hostsDir, timeoutMs: 60_000 });
  assert.equal(pulled.digest, cached.pushedDigest, 'the cached image pulled by tag with every upstream down');
  const content = await containerd!.listContent();
  for (const blob of cached.blobs) assert.ok(content.includes(blob.digest), `containerd has ${blob.digest}`);
  const metricsAfter = await ferry.scrapeMetrics();
  assert.ok(
    metricsAfter.sum('ferry_stale_tags_total', { registry: env.registry }) > metricsBefore.sum('ferry_stale_tags_total', { registry: env.registry }),
    'the tag was answered from the last-known digest, and counted',
  );
  assert.equal(
    metricsAfter.sum('ferry_fetched_bytes_total') - metricsBefore.sum('ferry_fetched_bytes_total'),
    0,
    'nothing was fetched',
  );

  // An image Ferry never saw: an error answer (so containerd moves on, and then fails at the server).
  const uncachedPaths = [
    manifestPath(env, uncached.repository, 'v1'),
    manifestPath(env, uncached.repository, uncached.pushedDigest),
    blobPath(env, uncached.repository, uncached.blobs[1]!.digest),
  ];
  for (const path of uncachedPaths) {
    const response = await httpRequest(ferry.url, path);
    assert.ok(response.status === 404 || response.status >= 500, `${path} answered ${response.status}`);
    const body = JSON.parse(response.body.toString()) as { errors: Array<{ code: string }> };
    assert.ok(body.errors.length > 0 && typeof body.errors[0]!.code === 'string', `${path} answered an OCI error`);
  }
  await assert.rejects(containerd!.pull(uncached.reference, { hostsDir, timeoutMs: 60_000 }), CommandFailedError);
  assert.ok(!(await containerd!.listImages()).some((image) => image.name === uncached.reference));
});

test('after a restart with every upstream down, the cache and the last-known tags survive', async () => {
  const env = topology();
  const { containerd, scope, central } = env;
  // The first test stopped the registries; this one starts from a node that already has the
  // cached image in its store and tag records in its metadata: restart Ferry on the same data dir.
  const before = env.ferry;
  const image = 'team/cached';
  await before.stop();
  const restarted = await startFerry({
    dir: scope.dir.path,
    name: 'restarted',
    files: { 'robot.pass': `${ROBOT.password}\n` },
    config: {
      dataDir: before.dataDir,
      registries: {
        [central.host]: {
          upstreams: [
            { url: env.regional!.url },
            { url: central.url, auth: { username: ROBOT.username, passwordFile: 'robot.pass' } },
          ],
        },
      },
    },
  });
  scope.defer(() => restarted.stop());
  const hostsDir = scope.dir.join('hosts-restarted');
  await writeHostsToml(hostsDir, central.host, [restarted.url], central.url);
  await containerd!.removeEverything();
  const pulled = await containerd!.pull(`${central.host}/${image}:v1`, { hostsDir, timeoutMs: 60_000 });
  const metrics = await restarted.scrapeMetrics();
  assert.ok(metrics.sum('ferry_stale_tags_total', { registry: env.registry }) >= 1, 'the tag came from the persisted record')
  assert.equal(metrics.sum('ferry_fetched_bytes_total'), 0, 'every byte came from the persisted store')
  assert.ok(metrics.sum('ferry_requests_total', { kind: 'blob', source: 'local' }) >= 2, 'blobs served from the store')
  assert.ok(cachedDigest, 'the first test of this file cached the image')
  assert.equal(pulled.digest, cachedDigest, 'the restarted node served the image it had cached')
});
