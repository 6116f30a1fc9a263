import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';
import type { Dispatcher } from 'undici';
import { blobPath, buildAndPush, httpRequest, manifestPath, useTopology, type FetchedBody, type PushedImage, type Topology } from './topology.js';

// Bad input against the running daemon, over plain HTTP with the path sent exactly as written:
// every answer is the right status with an OCI error body, nothing is ever compressed, and the
// daemon goes on serving content afterwards.

const topology = useTopology('e2e-bad-input');

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
// Asked on every request: Ferry must answer identity anyway (compressed bytes would not match digests).
const ASK_FOR_COMPRESSION = { 'accept-encoding': 'gzip, deflate, br, zstd' };
const VALID_DIGEST = `sha256:${'a'.repeat(64)}`;

interface Fixture {
  env: Topology;
  image: PushedImage;
  /** A layer Ferry has cached, and its bytes. */
  cached: { digest: string; size: number; bytes: Buffer };
  /** A layer Ferry has not fetched yet. */
  cold: { digest: string; size: number };
}

let fixturePromise: Promise<Fixture> | undefined;
/** Pushes the test image and caches one layer in Ferry, once for the whole file. */
function fixture(): Promise<Fixture> {
  fixturePromise ??= (async () => {
    const env = topology();
    const image = await buildAndPush(env, 'team/app', [{ randomBytes: 200 * 1024 }, { randomBytes: 100 * 1024 }], { seed: 'bad-input/app' });
    const layer = image.layers[0]!;
    const response = await send(env, blobPath(env, image.repository, layer.digest));
    assert.equal(response.status, 200);
    assert.equal(sha256(response.body), layer.digest);
    return { env, image, cached: { ...layer, bytes: response.body }, cold: image.layers[1]! };
  })();
  return fixturePromise;
}

function sha256(data: Buffer): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

async function send(
  env: Topology,
  path: string,
  options: { method?: Dispatcher.HttpMethod; headers?: Record<string, string> } = {},
): Promise<FetchedBody> {
  const response = await httpRequest(env.ferry.url, path, { ...options, headers: { ...ASK_FOR_COMPRESSION, ...options.headers } });
  assert.equal(response.headers['content-encoding'], undefined, `${options.method ?? 'GET'} ${path.slice(0, 80)}: no Content-Encoding`);
  assert.equal(response.error, undefined, `${path.slice(0, 80)}: the response finished`);
  return response;
}

/** Sends the request and checks the status and the OCI error body `{errors: [{code, message}]}`. */
async function assertOciError(
  env: Topology,
  path: string,
  expected: { status: number; code: string },
  options: { method?: Dispatcher.HttpMethod; headers?: Record<string, string> } = {},
): Promise<FetchedBody> {
  const method = options.method ?? 'GET';
  const what = `${method} ${path.length > 100 ? `${path.slice(0, 100)}... (${path.length} chars)` : path}`;
  const response = await send(env, path, options);
  assert.equal(response.status, expected.status, `${what}: status (body ${response.body.toString().slice(0, 200)})`);
  assert.match(String(response.headers['content-type']), /^application\/json/, `${what}: JSON`);
  const body = JSON.parse(response.body.toString()) as { errors?: Array<{ code?: unknown; message?: unknown }> };
  assert.ok(Array.isArray(body.errors) && body.errors.length > 0, `${what}: an errors array`);
  assert.equal(body.errors[0]!.code, expected.code, `${what}: OCI error code`);
  assert.equal(typeof body.errors[0]!.message, 'string', `${what}: a message`);
  return response;
}

test('invalid repository names answer 400 NAME_INVALID', async () => {
  const { env } = await fixture();
  const names = ['Team/App', 'team/app..x', '-team/app', 'team//app', 'team/a%00b', 'team/%ZZ', 'team/app/', 'team/ap%20p', 'a'.repeat(256)];
  for (const name of names) {
    await assertOciError(env, `/v2/${name}/manifests/v1?ns=${env.registry}`, { status: 400, code: 'NAME_INVALID' });
    await assertOciError(env, `/v2/${name}/blobs/${VALID_DIGEST}?ns=${env.registry}`, { status: 400, code: 'NAME_INVALID' });
  }
});

test('invalid digests, including sha512 and uppercase hex, answer 400 DIGEST_INVALID', async () => {
  const { env, image } = await fixture();
  const digests = [
    'sha256:abc',
    `sha256:${'a'.repeat(63)}`,
    `sha256:${'a'.repeat(65)}`,
    `sha256:${'A'.repeat(64)}`,
    `sha512:${'a'.repeat(128)}`,
    'md5:d41d8cd98f00b204e9800998ecf8427e',
    'notadigest',
    `sha256:${'g'.repeat(64)}`,
    ':',
  ];
  for (const digest of digests) {
    await assertOciError(env, blobPath(env, image.repository, digest), { status: 400, code: 'DIGEST_INVALID' });
    if (digest.includes(':')) {
      await assertOciError(env, manifestPath(env, image.repository, digest), { status: 400, code: 'DIGEST_INVALID' });
    }
  }
  // The right digest in uppercase names no content Ferry could verify.
  const upper = `sha256:${image.layers[0]!.digest.slice('sha256:'.length).toUpperCase()}`;
  await assertOciError(env, blobPath(env, image.repository, upper), { status: 400, code: 'DIGEST_INVALID' });
});

test('invalid tags answer 400 TAG_INVALID', async () => {
  const { env, image } = await fixture();
  for (const tag of ['-leading-dash', '.hidden', 'a'.repeat(129), 'with%20space', 'semi;colon', '']) {
    await assertOciError(env, manifestPath(env, image.repository, tag), { status: 400, code: 'TAG_INVALID' });
  }
  const longest = await send(env, manifestPath(env, image.repository, 'a'.repeat(128)));
  assert.equal(longest.status, 404, 'a 128-character tag is valid, and unknown');
});

test('unsatisfiable ranges answer 416 with Content-Range: bytes */size', async () => {
  const { env, image, cached, cold } = await fixture();
  const { size } = cached;
  for (const range of [`bytes=${size}-`, `bytes=${size + 10}-${size + 20}`, 'bytes=5-2', 'bytes=-0', 'bytes=0-1,4-5']) {
    const response = await assertOciError(env, blobPath(env, image.repository, cached.digest), { status: 416, code: 'RANGE_INVALID' }, { headers: { range } });
    assert.equal(response.headers['content-range'], `bytes */${size}`, `${range}: Content-Range`);
  }
  const coldResponse = await assertOciError(env, blobPath(env, image.repository, cold.digest), { status: 416, code: 'RANGE_INVALID' }, {
    headers: { range: `bytes=${cold.size}-` },
  });
  assert.equal(coldResponse.headers['content-range'], `bytes */${cold.size}`, 'an uncached blob too');
});

test('satisfiable ranges answer 206 with the right Content-Range and bytes', async () => {
  const { env, image, cached } = await fixture();
  const { size, bytes } = cached;
  const cases: Array<{ range: string; start: number; end: number }> = [
    { range: `bytes=${size - 1000}-`, start: size - 1000, end: size },
    { range: 'bytes=12345-', start: 12345, end: size },
    { range: 'bytes=0-99', start: 0, end: 100 },
    { range: 'bytes=-100', start: size - 100, end: size },
    { range: `bytes=100-${size + 500}`, start: 100, end: size },
    { range: `bytes=${size - 1}-`, start: size - 1, end: size },
  ];
  for (const { range, start, end } of cases) {
    const response = await send(env, blobPath(env, image.repository, cached.digest), { headers: { range } });
    assert.equal(response.status, 206, range);
    assert.equal(response.headers['content-range'], `bytes ${start}-${end - 1}/${size}`, `${range}: Content-Range`);
    assert.equal(response.headers['content-length'], String(end - start), `${range}: Content-Length`);
    assert.equal(response.headers['docker-content-digest'], cached.digest);
    assert.ok(response.body.equals(bytes.subarray(start, end)), `${range}: the bytes of that range`);
  }
});

test('a range of a blob Ferry is still fetching answers 206 with the right bytes', async () => {
  const { env } = await fixture();
  const image = await buildAndPush(env, 'team/ranged', [{ randomBytes: 300 * 1024 }], { seed: 'bad-input/ranged' });
  const layer = image.layers[0]!;
  const start = 1000;
  const ranged = await send(env, blobPath(env, image.repository, layer.digest), { headers: { range: `bytes=${start}-` } });
  assert.equal(ranged.status, 206);
  assert.equal(ranged.headers['content-range'], `bytes ${start}-${layer.size - 1}/${layer.size}`);
  const whole = await send(env, blobPath(env, image.repository, layer.digest));
  assert.equal(sha256(whole.body), layer.digest);
  assert.ok(ranged.body.equals(whole.body.subarray(start)));
});

test('over-long paths answer 400 NAME_INVALID', async () => {
  const { env } = await fixture();
  const component = 'abcdefghij/';
  const overLimit = `/v2/${component.repeat(Math.ceil(1030 / component.length))}manifests/v1`;
  assert.ok(overLimit.length > 1024);
  const eightKilobytes = `/v2/${component.repeat(Math.ceil(8000 / component.length))}blobs/${VALID_DIGEST}`;
  assert.ok(eightKilobytes.length > 8000);
  for (const path of [overLimit, eightKilobytes, `/v2/team/app/manifests/${'a'.repeat(8000)}`]) {
    await assertOciError(env, `${path}?ns=${env.registry}`, { status: 400, code: 'NAME_INVALID' });
  }
});

test('registries Ferry does not mirror answer 404 NAME_UNKNOWN; a malformed ?ns= 400 NAME_INVALID', async () => {
  const { env, image } = await fixture();
  for (const registry of ['unknown.example.com', 'docker.io', '127.0.0.1:1']) {
    const ns = `ns=${encodeURIComponent(registry)}`;
    await assertOciError(env, `/v2/${image.repository}/manifests/v1?${ns}`, { status: 404, code: 'NAME_UNKNOWN' });
    await assertOciError(env, `/v2/${image.repository}/blobs/${image.layers[0]!.digest}?${ns}`, { status: 404, code: 'NAME_UNKNOWN' });
  }
  for (const ns of ['bad%20host', 'http://x', '']) {
    await assertOciError(env, `/v2/${image.repository}/manifests/v1?ns=${ns}`, { status: 400, code: 'NAME_INVALID' });
  }
});

test('push and delete methods answer 405 UNSUPPORTED', async () => {
  const { env, image } = await fixture();
  const repository = image.repository;
  const cases: Array<[Dispatcher.HttpMethod, string]> = [
    ['POST', `/v2/${repository}/blobs/uploads/`],
    ['POST', `/v2/${repository}/blobs/uploads/?mount=${VALID_DIGEST}&from=other`],
    ['PATCH', `/v2/${repository}/blobs/uploads/3f1c2b9a-upload`],
    ['PUT', `/v2/${repository}/blobs/uploads/3f1c2b9a-upload?digest=${VALID_DIGEST}`],
    ['PUT', `/v2/${repository}/manifests/v1`],
    ['DELETE', `/v2/${repository}/manifests/${image.pushedDigest}`],
    ['DELETE', `/v2/${repository}/blobs/${image.layers[0]!.digest}`],
  ];
  for (const [method, path] of cases) {
    await assertOciError(env, `${path}${path.includes('?') ? '&' : '?'}ns=${env.registry}`, { status: 405, code: 'UNSUPPORTED' }, { method });
  }
  // A push with a body is refused the same way, and the blob was not touched.
  const put = await httpRequest(env.ferry.url, `/v2/${repository}/manifests/v2?ns=${env.registry}`, {
    method: 'PUT',
    headers: { 'content-type': OCI_MANIFEST },
  });
  assert.equal(put.status, 405);
});

test('paths outside /v2/ answer 404 NAME_UNKNOWN', async () => {
  const { env } = await fixture();
  for (const path of ['/', '/v1/_ping', '/v3/', '/v2x/', '/favicon.ico', '/healthz/../metrics/x']) {
    await assertOciError(env, path, { status: 404, code: 'NAME_UNKNOWN' });
  }
});

test('HEAD of a blob and a manifest gives exact Content-Length, Docker-Content-Digest and Content-Type', async () => {
  const { env, image, cached, cold } = await fixture();
  for (const blob of [cached, cold, { digest: image.configDigest, size: image.configSize }]) {
    const response = await send(env, blobPath(env, image.repository, blob.digest), { method: 'HEAD' });
    assert.equal(response.status, 200);
    assert.equal(response.headers['content-length'], String(blob.size));
    assert.equal(response.headers['docker-content-digest'], blob.digest);
    assert.equal(response.headers['content-type'], 'application/octet-stream');
    assert.equal(response.body.length, 0);
  }
  for (const reference of ['v1', image.pushedDigest]) {
    const response = await send(env, manifestPath(env, image.repository, reference), { method: 'HEAD' });
    assert.equal(response.status, 200, reference);
    assert.equal(response.headers['content-length'], String(image.manifestSize), reference);
    assert.equal(response.headers['docker-content-digest'], image.pushedDigest, reference);
    assert.equal(response.headers['content-type'], OCI_MANIFEST, reference);
    assert.equal(response.body.length, 0);
  }
  const manifest = await send(env, manifestPath(env, image.repository, 'v1'));
  assert.equal(manifest.headers['content-length'], String(manifest.body.length));
  assert.equal(sha256(manifest.body), image.pushedDigest);
  const missing = await send(env, blobPath(env, image.repository, VALID_DIGEST), { method: 'HEAD' });
  assert.equal(missing.status, 404, 'HEAD of an unknown blob');
  assert.equal(missing.body.length, 0);
});

test('after all of that the daemon still serves content', async () => {
  const { env, image, cached } = await fixture();
  const blob = await send(env, blobPath(env, image.repository, cached.digest));
  assert.equal(blob.status, 200);
  assert.equal(sha256(blob.body), cached.digest);
  const config = await send(env, blobPath(env, image.repository, image.configDigest));
  assert.equal(sha256(config.body), image.configDigest);
  const base = await send(env, '/v2/');
  assert.equal(base.status, 200);
  assert.equal(base.headers['docker-distribution-api-version'], 'registry/2.0');
  assert.equal((await send(env, '/healthz')).status, 200);
  assert.equal(env.ferry.pid > 0 && (await env.ferry.scrapeMetrics()).names().includes('ferry_requests_total'), true);
});
