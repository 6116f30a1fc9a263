import assert from 'node:assert/strict';
import { verify, X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { test } from 'node:test';
import {
  buildImage,
  buildMultiPlatformIndex,
  CommandFailedError,
  createTestScope,
  parsePrometheusText,
  pushImage,
  scrapeMetrics,
  skopeo,
  startContainerd,
  startRegistry,
  startTokenIssuer,
  writeHostsToml,
  type Registry,
  type TestScope,
  type TokenIssuer,
} from './harness/index.js';

// Proves the harness against the real third-party parts: the CNCF registry (token, htpasswd
// and proxy modes), skopeo, umoci and containerd. Each test starts its own processes in its
// own temp dir and stops them after it, last started first stopped.

const PUSHER = { username: 'ci-pusher', password: 'pusher-secret' };
const READER = { username: 'node-reader', password: 'reader-secret' };
const DOCKER_MANIFEST_V2 = 'application/vnd.docker.distribution.manifest.v2+json';

/** The "central registry": token auth like Harbor, PUSHER may push, READER may pull, no anonymous access. */
async function startCentral({ dir, defer }: TestScope): Promise<{ central: Registry; tokenIssuer: TokenIssuer }> {
  const tokenIssuer = await startTokenIssuer({
    dir: dir.path,
    service: 'ferry-test-central',
    users: { [PUSHER.username]: PUSHER.password, [READER.username]: READER.password },
    pushers: [PUSHER.username],
  });
  defer(() => tokenIssuer.stop());
  const central = await startRegistry({ dir: dir.path, name: 'central', auth: 'token', tokenIssuer });
  defer(() => central.stop());
  return { central, tokenIssuer };
}

const smallImageLayers = [{ files: { 'etc/ferry/hello.txt': 'hello from the harness\n' } }, { randomBytes: 256 * 1024 }];

test('the registry accepts tokens from the issuer: pusher pushes, reader pulls, bad credentials are refused', async (t) => {
  const scope = await createTestScope(t);
  const { dir } = scope;
  const { central, tokenIssuer } = await startCentral(scope);
  const image = await buildImage({ dir: dir.join('layout'), layers: smallImageLayers });
  const destination = `docker://${central.host}/project/app:1`;

  assert.equal(await pushImage(image.reference, destination, { credentials: PUSHER }), image.manifestDigest);
  const pusherGrants = tokenIssuer.requests.filter((request) => request.account === PUSHER.username);
  assert.ok(pusherGrants.some((request) => request.granted.some((access) => access.actions.includes('push'))));
  assert.ok(tokenIssuer.countRequests({ method: 'GET', status: 200 }) >= 1, 'skopeo asks for tokens with GET');

  const pulled = await skopeo.inspectRaw(destination, { credentials: READER });
  assert.equal(pulled.digest, image.manifestDigest);

  await assert.rejects(pushImage(image.reference, `docker://${central.host}/project/other:1`, { credentials: READER }), CommandFailedError);
  const readerPushAttempt = tokenIssuer.requests.findLast((request) => request.account === READER.username);
  assert.ok(readerPushAttempt, 'the reader asked for a token');
  assert.ok(readerPushAttempt.requestedScopes.some((scope) => scope.endsWith(':pull,push')), 'skopeo asked for push');
  assert.ok(readerPushAttempt.granted.length > 0);
  assert.ok(readerPushAttempt.granted.every((access) => access.actions.join() === 'pull'), 'the reader got pull only');

  const rejectedBefore = tokenIssuer.countRequests({ status: 401 });
  await assert.rejects(skopeo.inspectRaw(destination, { credentials: { ...READER, password: 'wrong' } }), CommandFailedError);
  assert.ok(tokenIssuer.countRequests({ status: 401 }) > rejectedBefore, 'the wrong password reached the issuer and was refused');
  await assert.rejects(skopeo.inspectRaw(destination), CommandFailedError, 'anonymous pulls are not allowed');
});

test('the token issuer answers GET and POST, grants by account, and signs with the key in its certificate', async (t) => {
  const { dir, defer } = await createTestScope(t);
  const tokenIssuer = await startTokenIssuer({
    dir: dir.path,
    service: 'ferry-test-central',
    users: { [READER.username]: READER.password },
    allowAnonymous: true,
  });
  defer(() => tokenIssuer.stop());
  const certificate = new X509Certificate(await readFile(tokenIssuer.rootCertBundlePath));
  const decode = (token: string): { header: Record<string, unknown>; claims: Record<string, unknown> } => {
    const [header, claims, signature] = token.split('.') as [string, string, string];
    assert.ok(verify('sha256', Buffer.from(`${header}.${claims}`), certificate.publicKey, Buffer.from(signature, 'base64url')));
    return {
      header: JSON.parse(Buffer.from(header, 'base64url').toString()) as Record<string, unknown>,
      claims: JSON.parse(Buffer.from(claims, 'base64url').toString()) as Record<string, unknown>,
    };
  };

  const anonymous = await fetch(`${tokenIssuer.realm}?service=ferry-test-central&scope=repository:team/app:pull,push`);
  assert.equal(anonymous.status, 200);
  const anonymousToken = decode(((await anonymous.json()) as { token: string }).token);
  assert.match(tokenIssuer.keyId, /^([A-Z2-7]{4}:){11}[A-Z2-7]{4}$/);
  assert.deepEqual(anonymousToken.header, { alg: 'RS256', typ: 'JWT', kid: tokenIssuer.keyId });
  assert.equal(anonymousToken.claims.aud, 'ferry-test-central');
  assert.equal(anonymousToken.claims.iss, tokenIssuer.issuer);
  assert.deepEqual(anonymousToken.claims.access, [{ type: 'repository', name: 'team/app', actions: ['pull'] }]);

  const form = new URLSearchParams({
    grant_type: 'password',
    username: READER.username,
    password: READER.password,
    service: 'ferry-test-central',
    scope: 'repository:team/app:pull repository:team/other:push',
  });
  const posted = await fetch(tokenIssuer.realm, { method: 'POST', body: form });
  assert.equal(posted.status, 200);
  const postedBody = (await posted.json()) as { token: string; access_token: string; expires_in: number };
  assert.equal(postedBody.access_token, postedBody.token);
  const postedToken = decode(postedBody.token);
  assert.equal(postedToken.claims.sub, READER.username);
  assert.deepEqual(postedToken.claims.access, [{ type: 'repository', name: 'team/app', actions: ['pull'] }], 'no push for a reader');
  assert.equal(Number(postedToken.claims.exp) - Number(postedToken.claims.iat), postedBody.expires_in);

  form.set('password', 'wrong');
  assert.equal((await fetch(tokenIssuer.realm, { method: 'POST', body: form })).status, 401);
  const basic = `Basic ${Buffer.from(`${READER.username}:${READER.password}`).toString('base64')}`;
  const wrongService = await fetch(`${tokenIssuer.realm}?service=elsewhere&scope=repository:team/app:pull`, { headers: { authorization: basic } });
  assert.equal(wrongService.status, 400);

  assert.equal(tokenIssuer.countRequests({ method: 'GET' }), 2);
  assert.equal(tokenIssuer.countRequests({ method: 'POST' }), 2);
  assert.equal(tokenIssuer.countRequests({ status: 200 }), 2);
});

test('images are reproducible and push as OCI, Docker schema 2 and a multi-platform index', async (t) => {
  const scope = await createTestScope(t);
  const { dir } = scope;
  const { central } = await startCentral(scope);

  const image = await buildImage({ dir: dir.join('first'), layers: smallImageLayers, seed: 'reproducible' });
  const rebuilt = await buildImage({ dir: dir.join('second'), layers: smallImageLayers, seed: 'reproducible' });
  const reseeded = await buildImage({ dir: dir.join('third'), layers: smallImageLayers, seed: 'another seed' });
  assert.equal(rebuilt.manifestDigest, image.manifestDigest);
  assert.deepEqual(rebuilt.layers, image.layers);
  assert.equal(reseeded.layers[0]!.digest, image.layers[0]!.digest, 'a files layer does not depend on the seed');
  assert.notEqual(reseeded.layers[1]!.digest, image.layers[1]!.digest, 'a random layer does');
  assert.ok(image.layers[1]!.size > 256 * 1024, 'random bytes do not compress');

  const ociDigest = await pushImage(image.reference, `docker://${central.host}/project/app:oci`, { credentials: PUSHER });
  assert.equal(ociDigest, image.manifestDigest);

  const dockerDigest = await pushImage(image.reference, `docker://${central.host}/project/app:docker`, {
    credentials: PUSHER,
    format: 'v2s2',
  });
  assert.notEqual(dockerDigest, image.manifestDigest, 'converting the manifest changes its digest');
  const dockerManifest = await skopeo.inspectRaw(`docker://${central.host}/project/app:docker`, { credentials: PUSHER });
  assert.equal(dockerManifest.digest, dockerDigest);
  assert.equal(dockerManifest.mediaType, DOCKER_MANIFEST_V2);
  const dockerLayers = (JSON.parse(dockerManifest.text) as { layers: { digest: string }[] }).layers.map((layer) => layer.digest);
  assert.deepEqual(dockerLayers, image.layers.map((layer) => layer.digest), 'the layer blobs are the same');

  const index = await buildMultiPlatformIndex({ dir: dir.join('multi'), layers: [{ randomBytes: 64 * 1024 }] });
  const indexReference = `docker://${central.host}/project/multi:1`;
  assert.equal(await pushImage(index.reference, indexReference, { credentials: PUSHER, all: true }), index.indexDigest);
  const servedIndex = await skopeo.inspectRaw(indexReference, { credentials: READER });
  assert.equal(servedIndex.digest, index.indexDigest);
  const entries = (JSON.parse(servedIndex.text) as { manifests: { digest: string; platform: { architecture: string } }[] }).manifests;
  assert.deepEqual(
    entries.map((entry) => [entry.platform.architecture, entry.digest]),
    index.images.map((platformImage) => [platformImage.platform.architecture, platformImage.manifestDigest]),
  );
  assert.notEqual(index.images[0]!.layers[0]!.digest, index.images[1]!.layers[0]!.digest, 'each platform has its own layer');
  const arm64 = index.images[1]!;
  const arm64Manifest = await skopeo.inspectRaw(`docker://${central.host}/project/multi@${arm64.manifestDigest}`, { credentials: READER });
  assert.equal(arm64Manifest.digest, arm64.manifestDigest);
});

test('containerd pulls through the regional pull-through registry named in hosts.toml', async (t) => {
  const scope = await createTestScope(t);
  const { dir } = scope;
  const { central } = await startCentral(scope);
  const image = await buildImage({ dir: dir.join('layout'), layers: smallImageLayers });
  await pushImage(image.reference, `docker://${central.host}/project/app:1`, { credentials: PUSHER });

  // Started after central: the proxy learns the upstream's auth scheme once, at start-up.
  const regional = await startRegistry({
    dir: dir.path,
    name: 'regional',
    auth: 'none',
    proxy: { remoteurl: central.url, ...READER },
  });
  scope.defer(() => regional.stop());
  const containerd = await startContainerd({ dir: dir.path });
  scope.defer(() => containerd.stop());
  const hostsDir = dir.join('hosts');
  await writeHostsToml(hostsDir, central.host, [regional.url], central.url);

  // containerd has no credentials here and central refuses anonymous pulls, so the pull can
  // only succeed through the regional registry.
  const reference = `${central.host}/project/app:1`;
  const pulled = await containerd.pull(reference, { hostsDir });
  assert.equal(pulled.digest, image.manifestDigest);

  const blobDigests = [image.configDigest, ...image.layers.map((layer) => layer.digest)];
  for (const digest of blobDigests) {
    assert.equal(await regional.countBlobGets(digest, { status: 200 }), 1, `regional served ${digest} once`);
    assert.ok((await central.countBlobGets(digest, { status: 200 })) >= 1, `regional fetched ${digest} from central`);
  }
  const containerdRequests = (await regional.readAccessLog()).filter((entry) => entry.userAgent.startsWith('containerd/'));
  assert.ok(containerdRequests.length > 0);
  for (const entry of containerdRequests) {
    assert.equal(entry.query, `ns=${encodeURIComponent(central.host)}`, 'containerd names the registry in ?ns=');
  }

  await containerd.removeEverything();
  assert.deepEqual(await containerd.listContent(), []);
  assert.equal((await containerd.pull(reference, { hostsDir })).digest, image.manifestDigest);
  for (const digest of blobDigests) {
    assert.equal(await regional.countBlobGets(digest, { status: 200 }), 2, `the second pull fetched ${digest} again`);
  }
});

test('containerd fetches one platform of an index from the token registry, asking for its token by POST', async (t) => {
  const scope = await createTestScope(t);
  const { dir } = scope;
  const { central, tokenIssuer } = await startCentral(scope);
  const index = await buildMultiPlatformIndex({ dir: dir.join('multi'), layers: [{ randomBytes: 64 * 1024 }] });
  await pushImage(index.reference, `docker://${central.host}/project/multi:1`, { credentials: PUSHER, all: true });
  const [amd64, arm64] = index.images as [(typeof index.images)[0], (typeof index.images)[0]];

  const containerd = await startContainerd({ dir: dir.path });
  scope.defer(() => containerd.stop());
  const hostsDir = dir.join('hosts');
  await writeHostsToml(hostsDir, central.host, [central.url], central.url);

  const postsBefore = tokenIssuer.countRequests({ method: 'POST', status: 200 });
  await containerd.contentFetch(`${central.host}/project/multi:1`, { hostsDir, platform: 'linux/arm64', credentials: READER });
  assert.ok(tokenIssuer.countRequests({ method: 'POST', status: 200 }) > postsBefore, 'containerd posts a password grant');

  const content = await containerd.listContent();
  for (const digest of [index.indexDigest, arm64.manifestDigest, arm64.configDigest, arm64.layers[0]!.digest]) {
    assert.ok(content.includes(digest), `containerd has ${digest}`);
  }
  assert.ok(!content.includes(amd64.manifestDigest), 'the other platform was not fetched');
  assert.equal(await central.countBlobGets(arm64.layers[0]!.digest, { status: 200 }), 1);
  assert.equal(await central.countBlobGets(amd64.layers[0]!.digest), 0);
});

test('skopeo pulls through the mirror in registries.conf; access log and registry metrics agree', async (t) => {
  const { dir, defer } = await createTestScope(t);
  const central = await startRegistry({ dir: dir.path, name: 'central', auth: 'htpasswd', users: { [PUSHER.username]: PUSHER.password } });
  defer(() => central.stop());
  const mirror = await startRegistry({ dir: dir.path, name: 'mirror', auth: 'none' });
  defer(() => mirror.stop());
  const image = await buildImage({ dir: dir.join('layout'), layers: smallImageLayers });
  await pushImage(image.reference, `docker://${central.host}/project/app:1`, { credentials: PUSHER });
  await pushImage(image.reference, `docker://${mirror.host}/project/app:1`);
  await assert.rejects(skopeo.inspectRaw(`docker://${central.host}/project/app:1`), CommandFailedError, 'htpasswd refuses anonymous');

  const registriesConf = await skopeo.writeMirrorRegistriesConf(dir.join('registries.conf'), {
    registry: central.host,
    mirrors: [mirror.host],
  });
  const centralBlobGetsBefore = await central.countBlobGets();
  const { manifestDigest } = await skopeo.copy(`docker://${central.host}/project/app:1`, `oci:${dir.join('pulled')}:app`, {
    registriesConf,
  });
  assert.equal(manifestDigest, image.manifestDigest);
  assert.equal(await central.countBlobGets(), centralBlobGetsBefore, 'central was not asked for blobs');

  const skopeoBlobGets = (await mirror.readAccessLog()).filter(
    (entry) => entry.kind === 'blob' && entry.method === 'GET' && entry.userAgent.startsWith('skopeo/'),
  );
  assert.equal(skopeoBlobGets.length, 1 + image.layers.length, 'config and every layer came from the mirror');
  assert.ok(skopeoBlobGets.every((entry) => entry.query === ''), 'skopeo sends no ?ns= to a mirror');
  const randomLayer = image.layers[1]!;
  assert.equal(skopeoBlobGets.find((entry) => entry.reference === randomLayer.digest)?.bytes, randomLayer.size);

  const metrics = await scrapeMetrics(mirror.metricsUrl);
  assert.equal(
    metrics.sum('registry_http_requests_total', { handler: 'blob', method: 'get', code: '200' }),
    await mirror.countBlobGets(undefined, { status: 200 }),
  );
});

test('the metrics parser handles labels with escapes, special values and timestamps', () => {
  const metrics = parsePrometheusText(
    [
      '# HELP ferry_bytes_total Bytes served.',
      '# TYPE ferry_bytes_total counter',
      'ferry_bytes_total{source="peer",path="a\\"b\\\\c"} 10',
      'ferry_bytes_total{source="upstream",path="x"} 32 1700000000000',
      'ferry_bytes_total{source="upstream",path="y",} 1e3',
      'ferry_up 1',
      'ferry_latency_bucket{le="+Inf"} +Inf',
      'ferry_ratio NaN',
      'ferry_prom_client_ratio Nan',
    ].join('\n'),
  );
  assert.equal(metrics.value('ferry_bytes_total', { source: 'peer', path: 'a"b\\c' }), 10);
  assert.equal(metrics.value('ferry_bytes_total', { source: 'peer' }), undefined, 'value() needs the exact label set');
  assert.equal(metrics.sum('ferry_bytes_total', { source: 'upstream' }), 1032);
  assert.equal(metrics.sum('ferry_bytes_total'), 1042);
  assert.equal(metrics.value('ferry_up'), 1);
  assert.equal(metrics.value('ferry_latency_bucket', { le: '+Inf' }), Infinity);
  assert.ok(Number.isNaN(metrics.value('ferry_ratio')));
  assert.ok(Number.isNaN(metrics.value('ferry_prom_client_ratio')), 'prom-client writes NaN as Nan');
  assert.equal(metrics.sum('ferry_missing'), 0);
  assert.throws(() => parsePrometheusText('ferry_bad{label=unquoted} 1'), /bad label/);
});
