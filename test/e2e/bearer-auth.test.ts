import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createTestScope, startFerry } from '../harness/index.js';
import { buildAndPush, httpRequest, manifestPath, ROBOT, upstreamSource, useTopology } from './topology.js';

// Ferry straight in front of the token-auth central registry, no regional registry: every byte
// Ferry serves it had to get with a Bearer token for the robot account.

const topology = useTopology('e2e-bearer-auth', { regional: false });

test('Ferry pulls from the token-auth registry with the robot account', async () => {
  const env = topology();
  const { ferry, central, containerd, hostsDir, tokenIssuer } = env;
  const image = await buildAndPush(env, 'secure/app', [{ randomBytes: 256 * 1024 }, { files: { 'etc/secure.txt': 'bearer\n' } }], {
    seed: 'bearer/app',
  });
  const robotRequests = () => tokenIssuer.requests.filter((record) => record.account === ROBOT.username);
  assert.equal(robotRequests().length, 0, 'precondition: nobody used the robot account yet');
  const metricsBefore = await ferry.scrapeMetrics();

  const pulled = await containerd!.pull(image.reference, { hostsDir });
  assert.equal(pulled.digest, image.pushedDigest);

  const granted = robotRequests().filter((record) => record.status === 200);
  assert.ok(granted.length >= 1, 'Ferry asked the token issuer as the robot');
  assert.ok(
    granted.some((record) => record.granted.some((access) => access.name === image.repository && access.actions.includes('pull'))),
    'and got pull access to the repository',
  );
  assert.ok(robotRequests().every((record) => record.service === tokenIssuer.service));
  const metricsAfter = await ferry.scrapeMetrics();
  const fetched = metricsAfter.sum('ferry_fetched_bytes_total', { kind: 'blob', source: upstreamSource(central) });
  assert.equal(
    fetched - metricsBefore.sum('ferry_fetched_bytes_total', { kind: 'blob', source: upstreamSource(central) }),
    image.blobs.reduce((sum, blob) => sum + blob.size, 0),
    'every blob came from central',
  );
  // Tokens are cached per scope: the pull's 5 requests (tag, manifest, 3 blobs) share one.
  assert.equal(granted.length, 1, `one token for one repository, got ${granted.length}`);
});

test('with a wrong robot password Ferry answers an error, not content', async (t) => {
  const env = topology();
  const { tokenIssuer, central } = env;
  const image = await buildAndPush(env, 'secure/locked', [{ randomBytes: 64 * 1024 }], { seed: 'bearer/locked' });
  const { dir, defer } = await createTestScope(t);
  const ferry = await startFerry({
    dir: dir.path,
    name: 'wrong-password',
    config: { registries: { [central.host]: { upstreams: [{ url: central.url, auth: { username: ROBOT.username, password: 'not-the-password' } }] } } },
  });
  defer(() => ferry.stop());
  const refusedBefore = tokenIssuer.countRequests({ status: 401 });

  for (const reference of ['v1', image.pushedDigest]) {
    const response = await httpRequest(ferry.url, manifestPath(env, image.repository, reference));
    assert.ok(response.status >= 500, `${reference}: answered ${response.status}`);
    const body = JSON.parse(response.body.toString()) as { errors: Array<{ code: string }> };
    assert.equal(body.errors[0]?.code, 'UNAVAILABLE');
  }
  assert.ok(tokenIssuer.countRequests({ status: 401 }) > refusedBefore, 'the issuer refused the wrong password');
});
