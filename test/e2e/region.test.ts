import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { after, before, test } from 'node:test';
import { createRegionCertificateAuthority, parseRegionSecret } from '@ferry/p2p';
import { Agent, Client, request } from 'undici';
import {
  buildImage,
  createTestScope,
  pushImage,
  skopeo,
  startContainerd,
  startFerry,
  waitFor,
  writeHostsToml,
  type Containerd,
  type Ferry,
  type LayerSpec,
  type MetricsSnapshot,
  type Registry,
  type TestScope,
} from '../harness/index.js';
import { corruptInPlace, createNetworkNamespace } from '../harness/index.js';
import { PUSHER, ROBOT, startRegistries } from './topology.js';
import {
  providesDone,
  startRegionNode,
  waitForProvides,
  waitForRegion,
  writeRegionSecret,
  type RegionFerry,
} from '../harness/region.js';

// Region peers end to end: Ferry daemon processes that share a region secret, in front of the real
// registries of the pull-path tests, pulled through by containerd.
//
//   containerd ──hosts.toml──▶ node k ──peers──▶ nodes 1..5 (libp2p DHT look-up, mTLS transfer)
//                                │
//                                ├──1──▶ regional (docker-registry, proxy mode, anonymous)
//                                │            │ robot credentials
//                                └──2──▶ central (docker-registry, token auth) ◀── token issuer
//
// The registries, containerd and the five-node region start once for the file. Each test pushes an
// image of its own (own repository, own seed), so no test depends on another's blobs; the tests
// that need extra daemons (an outsider, a region of two with a rate-limited member) start them.

const REGION = 'e2e-region-1';
const NODE_COUNT = 5;
const FERRY_USER_AGENT = 'ferry/';
const MiB = 1024 * 1024;

/**
 * Bounds, not waits: a look-up that finds a provider returns as soon as it does, so a generous
 * bound only matters on a loaded machine, where the default 300 ms could send a pull upstream.
 */
const P2P_SETTINGS = { lookupTimeout: '2s' };

interface Deployment {
  scope: TestScope;
  central: Registry;
  regional: Registry;
  containerd: Containerd;
  /** The registry clients name in references and `?ns=`: central's host:port. */
  registry: string;
  pskFile: string;
  nodes: RegionFerry[];
  /** containerd `--hosts-dir` per node name, sending `registry` to that node only. */
  hostsDirs: Map<string, string>;
  registries(): Parameters<typeof startRegionNode>[0]['registries'];
  files: Record<string, string>;
}

let deployment: Deployment | undefined;
let cleanup: (() => Promise<void>) | undefined;

before(async () => {
  const scope = await createTestScope({ name: 'e2e-region', after: (hook) => (cleanup = hook) });
  const { dir, defer } = scope;
  const { central, regional: regionalOrNone } = await startRegistries(scope);
  const regional = regionalOrNone!;
  const containerd = await startContainerd({ dir: dir.path });
  defer(() => containerd.stop());

  const pskFile = await writeRegionSecret(dir.join('region.psk'));
  const registries = () => ({
    [central.host]: {
      upstreams: [{ url: regional.url }, { url: central.url, auth: { username: ROBOT.username, passwordFile: 'robot.pass' } }],
    },
  });
  const files = { 'robot.pass': `${ROBOT.password}\n` };
  const startNode = async (name: string, bootstrap: string[]) => {
    const node = await startRegionNode({ dir: dir.path, name, region: REGION, pskFile, bootstrap, registries: registries(), files, p2p: P2P_SETTINGS });
    defer(() => node.stop());
    return node;
  };
  const first = await startNode('node-1', []);
  const rest = await Promise.all(Array.from({ length: NODE_COUNT - 1 }, (_, index) => startNode(`node-${index + 2}`, [first.p2pAddress])));
  const nodes = [first, ...rest];
  await waitForRegion(first, rest);

  const hostsDirs = new Map<string, string>();
  for (const node of nodes) {
    const hostsDir = dir.join('hosts', node.name);
    await writeHostsToml(hostsDir, central.host, [node.url], central.url);
    hostsDirs.set(node.name, hostsDir);
  }
  deployment = { scope, central, regional, containerd, registry: central.host, pskFile, nodes, hostsDirs, registries, files };
});

after(async () => {
  await cleanup?.();
});

function env(): Deployment {
  if (!deployment) throw new Error('the region did not start; see the before hook');
  return deployment;
}

interface PushedImage {
  reference: string;
  repository: string;
  tag: string;
  manifestDigest: string;
  manifestSize: number;
  /** Config and layers: every blob a pull of the image fetches. */
  blobs: Array<{ digest: string; size: number }>;
  layers: Array<{ digest: string; size: number }>;
}

/** Builds an OCI image (reproducible from `seed`) and pushes it to central as the pusher. */
async function pushTestImage(repository: string, layers: readonly LayerSpec[], seed: string): Promise<PushedImage> {
  const { scope, central } = env();
  const tag = 'v1';
  const image = await buildImage({ dir: scope.dir.join('images', repository.replaceAll('/', '_')), layers, seed, tag });
  const manifestDigest = await pushImage(image.reference, `docker://${central.host}/${repository}:${tag}`, { credentials: PUSHER });
  const pushed = await skopeo.inspectRaw(`docker://${central.host}/${repository}@${manifestDigest}`, { credentials: PUSHER });
  assert.equal(pushed.digest, manifestDigest, 'precondition: central serves the manifest that was pushed');
  const manifest = JSON.parse(pushed.text) as { config: { digest: string; size: number }; layers: Array<{ digest: string; size: number }> };
  const layerDescriptors = manifest.layers.map(({ digest, size }) => ({ digest, size }));
  return {
    reference: `${central.host}/${repository}:${tag}`,
    repository,
    tag,
    manifestDigest,
    manifestSize: Buffer.byteLength(pushed.text),
    blobs: [{ digest: manifest.config.digest, size: manifest.config.size }, ...layerDescriptors],
    layers: layerDescriptors,
  };
}

function blobUrlPath(repository: string, digest: string): string {
  return `/v2/${repository}/blobs/${digest}?ns=${encodeURIComponent(env().registry)}`;
}

function totalSize(blobs: ReadonlyArray<{ size: number }>): number {
  return blobs.reduce((sum, blob) => sum + blob.size, 0);
}

function sha256(data: Buffer): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

async function fileDigest(path: string): Promise<string> {
  return sha256(await readFile(path));
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

function delta(after: MetricsSnapshot, before: MetricsSnapshot, name: string, labels: Record<string, string> = {}): number {
  return after.sum(name, labels) - before.sum(name, labels);
}

/** Bytes a node took into its store from upstreams (every `upstream:*` source) for `kind`. */
function upstreamBytes(snapshot: MetricsSnapshot, kind: 'blob' | 'manifest'): number {
  return snapshot
    .select('ferry_fetched_bytes_total', { kind })
    .filter((sample) => sample.labels.source?.startsWith('upstream:'))
    .reduce((sum, sample) => sum + sample.value, 0);
}

/** `GET`s a registry answered per object reference (digest or tag), optionally of one kind or client. */
async function getsByReference(
  registry: Registry,
  filter: { kind: 'blob' | 'manifest'; methods?: string[]; userAgentPrefix?: string },
): Promise<Map<string, number>> {
  const counts = new Map<string, number>();
  for (const entry of await registry.readAccessLog()) {
    if (entry.kind !== filter.kind || entry.reference === undefined) continue;
    if (!(filter.methods ?? ['GET']).includes(entry.method)) continue;
    if (filter.userAgentPrefix !== undefined && !entry.userAgent.startsWith(filter.userAgentPrefix)) continue;
    counts.set(entry.reference, (counts.get(entry.reference) ?? 0) + 1);
  }
  return counts;
}

function differenceOf(after: Map<string, number>, before: Map<string, number>): Map<string, number> {
  const result = new Map<string, number>();
  for (const [reference, count] of after) {
    const added = count - (before.get(reference) ?? 0);
    if (added !== 0) result.set(reference, added);
  }
  return result;
}


interface BlobResponse {
  status: number;
  body: Buffer;
  /** Set when the body broke off instead of ending. */
  error: Error | undefined;
}

async function getBlob(ferry: Ferry, repository: string, digest: string): Promise<BlobResponse> {
  const client = new Client(ferry.url);
  try {
    const response = await client.request({ path: blobUrlPath(repository, digest), method: 'GET' });
    const chunks: Buffer[] = [];
    let error: Error | undefined;
    try {
      for await (const chunk of response.body) chunks.push(chunk as Buffer);
    } catch (caught) {
      error = caught as Error;
    }
    return { status: response.statusCode, body: Buffer.concat(chunks), error };
  } finally {
    await client.close();
  }
}

/** Waits until `ferry` has `digest` committed in its data dir and no download running. */
async function waitForCommitted(ferry: Ferry, digest: string): Promise<void> {
  await waitFor(async () => (await exists(ferry.blobPath(digest))) && (await ferry.scrapeMetrics()).value('ferry_active_downloads') === 0, {
    description: `ferry ${ferry.name} to commit ${digest}`,
    timeoutMs: 60_000,
  });
}

/** Metrics of every node at once, so region-wide sums can be compared before and after. */
async function scrapeAll(nodes: readonly Ferry[]): Promise<MetricsSnapshot[]> {
  return Promise.all(nodes.map((node) => node.scrapeMetrics()));
}

/** Bytes of `blobs` that `node` has committed in its data dir. */
async function heldBytes(node: Ferry, blobs: ReadonlyArray<{ digest: string; size: number }>): Promise<number> {
  let held = 0;
  for (const blob of blobs) if (await exists(node.blobPath(blob.digest))) held += blob.size;
  return held;
}

/** Waits until no node has a download running: every copy fetched so far is committed or dropped. */
async function waitForQuiet(nodes: readonly Ferry[]): Promise<void> {
  await waitFor(async () => (await scrapeAll(nodes)).every((metrics) => metrics.value('ferry_active_downloads') === 0), {
    description: 'every node to finish its downloads',
    timeoutMs: 60_000,
  });
}

function regionSum(after: MetricsSnapshot[], before: MetricsSnapshot[], read: (metrics: MetricsSnapshot) => number): number {
  return after.reduce((sum, metrics, index) => sum + read(metrics) - read(before[index]!), 0);
}

const peerBlobBytes = (metrics: MetricsSnapshot) => metrics.sum('ferry_fetched_bytes_total', { kind: 'blob', source: 'peer' });
const upstreamBlobBytes = (metrics: MetricsSnapshot) => upstreamBytes(metrics, 'blob');

// Which node fetches a blob from the upstream is the region's business (the first node that needs
// it, or the one the region designates); what must hold is that the region fetches it from the
// upstream once and every other copy comes from a peer. So the assertions are region-wide, plus, per
// node, that its pull took from peers exactly what it did not already hold.
test('an image pulled through node 1 is pulled by nodes 2..5 from region peers: the regional registry serves each blob once', async (t) => {
  const { nodes, containerd, hostsDirs, regional, central } = env();
  const image = await pushTestImage(
    'region/app',
    [{ randomBytes: 2 * MiB }, { randomBytes: 1 * MiB }, { files: { 'etc/region.txt': 'pulled through the region\n' } }],
    'region/app',
  );
  const imageBytes = totalSize(image.blobs);
  const manifest = [{ digest: image.manifestDigest, size: image.manifestSize }];
  const tagAsks = async () =>
    (await getsByReference(regional, { kind: 'manifest', methods: ['GET', 'HEAD'], userAgentPrefix: FERRY_USER_AGENT })).get(image.tag) ?? 0;
  const regionalBlobsBefore = await getsByReference(regional, { kind: 'blob' });
  const regionalManifestsBefore = await getsByReference(regional, { kind: 'manifest', methods: ['GET', 'HEAD'] });
  const centralFromFerryBefore = await getsByReference(central, { kind: 'blob', userAgentPrefix: FERRY_USER_AGENT });
  const regionBefore = await scrapeAll(nodes);

  for (const [index, node] of nodes.entries()) {
    await containerd.removeEverything();
    const held = await heldBytes(node, image.blobs);
    const heldManifest = await heldBytes(node, manifest);
    const everyBefore = await scrapeAll(nodes);
    const providesBefore = await providesDone(node);
    const tagAsksBefore = await tagAsks();

    const pulled = await containerd.pull(image.reference, { hostsDir: hostsDirs.get(node.name)! });
    assert.equal(pulled.digest, image.manifestDigest, `${node.name}: containerd recorded the pushed digest`);
    const content = await containerd.listContent();
    for (const blob of image.blobs) assert.ok(content.includes(blob.digest), `${node.name}: containerd has ${blob.digest}`);
    await waitForQuiet(nodes);

    const everyAfter = await scrapeAll(nodes);
    const metricsBefore = everyBefore[index]!;
    const metricsAfter = everyAfter[index]!;
    const fromPeers = peerBlobBytes(metricsAfter) - peerBlobBytes(metricsBefore);
    const fromUpstreams = upstreamBlobBytes(metricsAfter) - upstreamBlobBytes(metricsBefore);
    const regionFromUpstreams = regionSum(everyAfter, everyBefore, upstreamBlobBytes);
    t.diagnostic(
      `${node.name}: held ${held} blob bytes before, took ${fromPeers} from peers and ${fromUpstreams} from upstreams; ` +
        `the region took ${regionFromUpstreams} from upstreams meanwhile (image ${imageBytes})`,
    );
    assert.equal(held + fromPeers + fromUpstreams, imageBytes, `${node.name}: fetched exactly the blobs it did not hold, each once`);
    if (index === 0) {
      assert.equal(held, 0, 'precondition: a new image');
      assert.equal(regionFromUpstreams, imageBytes, 'the first pull made the region take each blob from an upstream, once');
      // The node announces what it committed (config, layers, manifest); the next pulls look it up.
      await waitForProvides(node, providesBefore, image.blobs.length + 1);
    } else {
      assert.equal(fromUpstreams, 0, `${node.name}: no blob byte came from an upstream`);
      assert.equal(fromPeers, imageBytes - held, `${node.name}: every blob it lacked came from region peers`);
      assert.equal(regionFromUpstreams, 0, `${node.name}: no node of the region went to an upstream for this pull`);
      assert.equal(
        metricsAfter.sum('ferry_fetched_bytes_total', { kind: 'manifest', source: 'peer' }) -
          metricsBefore.sum('ferry_fetched_bytes_total', { kind: 'manifest', source: 'peer' }),
        image.manifestSize - heldManifest,
        `${node.name}: the manifest by digest came from a peer too, unless it held it`,
      );
      assert.equal(upstreamBytes(metricsAfter, 'manifest') - upstreamBytes(metricsBefore, 'manifest'), 0);
    }
    // Tags are never answered by peers: every node asked the upstream for the tag.
    assert.ok((await tagAsks()) > tagAsksBefore, `${node.name}: resolved ${image.tag} with the regional registry`);
    assert.ok(metricsAfter.sum('ferry_tag_resolve_seconds_count', { result: 'found' }) > metricsBefore.sum('ferry_tag_resolve_seconds_count', { result: 'found' }));
  }

  const regionAfter = await scrapeAll(nodes);
  assert.equal(regionSum(regionAfter, regionBefore, upstreamBlobBytes), imageBytes, 'the region took one copy of each blob from upstreams');
  assert.equal(
    regionSum(regionAfter, regionBefore, peerBlobBytes),
    (NODE_COUNT - 1) * imageBytes,
    'and the other four copies of each from peers',
  );
  for (const node of nodes) assert.equal(await heldBytes(node, image.blobs), imageBytes, `${node.name} holds the whole image`);
  assert.deepEqual(
    differenceOf(await getsByReference(regional, { kind: 'blob' }), regionalBlobsBefore),
    new Map(image.blobs.map((blob) => [blob.digest, 1])),
    'the regional registry served each blob of the image once, for five pulls on five nodes',
  );
  const manifestAsks = differenceOf(await getsByReference(regional, { kind: 'manifest', methods: ['GET', 'HEAD'] }), regionalManifestsBefore);
  assert.equal(manifestAsks.get(image.manifestDigest), 1, 'the regional registry served the manifest by digest once');
  assert.ok((manifestAsks.get(image.tag) ?? 0) >= NODE_COUNT, 'and was asked for the tag by every node');
  assert.deepEqual(
    differenceOf(await getsByReference(central, { kind: 'blob', userAgentPrefix: FERRY_USER_AGENT }), centralFromFerryBefore),
    new Map(),
    'no node fell back to central for a blob (only the regional proxy fetched from it)',
  );
  const served = regionAfter.map((metrics, index) => metrics.sum('ferry_p2p_served_bytes_total') - regionBefore[index]!.sum('ferry_p2p_served_bytes_total'));
  t.diagnostic(`bytes served to peers per node: ${served.join(', ')}`);
});

test('a peer serving corrupt bytes is detected and penalised, and the puller commits the verified blob from the next source', async (t) => {
  const { nodes } = env();
  const image = await pushTestImage('region/corrupt-peer', [{ randomBytes: 1536 * 1024 }], 'region/corrupt-peer');
  const layer = image.layers[0]!;

  const seeder = nodes[0]!;
  const providesBefore = await providesDone(seeder);
  const seeded = await getBlob(seeder, image.repository, layer.digest);
  assert.equal(sha256(seeded.body), layer.digest, 'precondition: node 1 fetched the good layer');
  await waitForQuiet(nodes);
  await waitForProvides(seeder, providesBefore, 1);
  // Every region member that now holds the layer (node 1, and any node that fetched it for the
  // region) serves its stored file, which it does not verify when serving: corrupt them all, so a
  // peer copy is certainly bad and the good bytes can only come from an upstream.
  const liars: RegionFerry[] = [];
  for (const node of nodes) if (await exists(node.blobPath(layer.digest))) liars.push(node);
  assert.ok(liars.includes(seeder), 'precondition: node 1 committed the layer');
  for (const liar of liars) {
    await corruptInPlace(liar.blobPath(layer.digest));
    assert.equal((await stat(liar.blobPath(layer.digest))).size, layer.size, 'precondition: same length');
    assert.notEqual(await fileDigest(liar.blobPath(layer.digest)), layer.digest, `precondition: ${liar.name} now holds corrupt bytes`);
  }
  const puller = nodes.find((node) => !liars.includes(node))!;
  const liarIds = new Set(liars.map((liar) => liar.peerId));
  t.diagnostic(`corrupt copies on ${liars.map((liar) => liar.name).join(', ')}; pulling through ${puller.name}`);

  const liarsBefore = await scrapeAll(liars);
  const pullerBefore = await puller.scrapeMetrics();
  const first = await getBlob(puller, image.repository, layer.digest);
  t.diagnostic(`first client request: status ${first.status}, ${first.body.length} of ${layer.size} bytes, ${first.error?.message ?? 'ended normally'}`);
  // Bytes from peers reach clients only once verified: the corrupt copy never left the puller, so
  // the same response went on from the upstream (containerd's pull completes in one go).
  assert.equal(first.status, 200)
  assert.equal(first.error, undefined, 'the first client request completed')
  assert.equal(sha256(first.body), layer.digest, 'with the right bytes')
  await waitForCommitted(puller, layer.digest);
  assert.equal(await fileDigest(puller.blobPath(layer.digest)), layer.digest, 'the puller committed the right bytes');

  const liarsAfter = await scrapeAll(liars);
  const pullerAfter = await puller.scrapeMetrics();
  assert.ok(regionSum(liarsAfter, liarsBefore, (metrics) => metrics.sum('ferry_p2p_served_bytes_total')) >= layer.size, 'a corrupt copy was served');
  assert.equal(delta(pullerAfter, pullerBefore, 'ferry_fetched_bytes_total', { kind: 'blob', source: 'peer' }), layer.size);
  assert.equal(delta(pullerAfter, pullerBefore, 'ferry_corrupt_content_total', { source: 'peer' }), 1, 'the puller caught the peer copy');
  assert.ok(delta(pullerAfter, pullerBefore, 'ferry_p2p_peer_errors_total', { kind: 'corrupt' }) >= 1);
  assert.equal(
    upstreamBytes(pullerAfter, 'blob') - upstreamBytes(pullerBefore, 'blob'),
    layer.size,
    'then took the whole layer again, from an upstream (no honest peer had it)',
  );
  assert.equal(delta(pullerAfter, pullerBefore, 'ferry_downloads_total', { kind: 'blob', result: 'committed' }), 1);
  const penalised = (await puller.region()).penalised;
  assert.ok(penalised.some((peerId) => liarIds.has(peerId)), `the puller penalised the peer that lied; penalised: ${penalised.join(', ')}`);
  assert.deepEqual(penalised.filter((peerId) => !liarIds.has(peerId)), [], 'and no honest peer');

  const again = await getBlob(puller, image.repository, layer.digest);
  assert.equal(again.status, 200);
  assert.equal(again.error, undefined);
  assert.equal(sha256(again.body), layer.digest, 'the puller serves the verified blob');
});

test('a daemon with another region secret can neither join the region nor fetch from it', async (t) => {
  const { nodes, containerd, hostsDirs, registries, files, central, regional, pskFile } = env();
  const scope = await createTestScope(t);
  const member = nodes[0]!;
  const image = await pushTestImage('region/outsider', [{ randomBytes: 1 * MiB }, { randomBytes: 512 * 1024 }], 'region/outsider');

  // A region member holds and announces the image, so there is something to take.
  await containerd.removeEverything();
  const providesBefore = await providesDone(member);
  await containerd.pull(image.reference, { hostsDir: hostsDirs.get(member.name)! });
  await waitForProvides(member, providesBefore, image.blobs.length + 1);

  const outsiderPsk = await writeRegionSecret(scope.dir.join('outsider.psk'));
  const outsider = await startRegionNode({
    dir: scope.dir.path,
    name: 'outsider',
    region: REGION,
    pskFile: outsiderPsk,
    bootstrap: [member.p2pAddress],
    registries: registries(),
    files,
    p2p: P2P_SETTINGS,
    // Failed bootstrap dials are logged at debug.
    config: { log: { level: 'debug' } },
  });
  scope.defer(() => outsider.stop());

  // The bootstrapper retries every 0.5, 1, 2... s while connected to no one: three failed rounds
  // show that its dials were made and refused, not that it has not tried yet.
  const bootstrapLines = async () => (await outsider.readLog()).filter((line) => line.component === 'p2p' && /bootstrap peer/.test(line.msg));
  await waitFor(async () => (await bootstrapLines()).filter((line) => line.msg === 'could not dial bootstrap peer').length >= 3, {
    description: 'the outsider to fail three bootstrap rounds',
    timeoutMs: 30_000,
  });
  const failures = (await bootstrapLines()).filter((line) => line.msg === 'could not dial bootstrap peer');
  t.diagnostic(`outsider's bootstrap dial failed: ${JSON.stringify((failures[0]?.err as { message?: string } | undefined)?.message)}`);
  assert.deepEqual(
    (await bootstrapLines()).filter((line) => line.msg === 'connected to bootstrap peer'),
    [],
    'the outsider never connected to its bootstrap peer',
  );
  const outsiderRegion = await outsider.region();
  assert.deepEqual(outsiderRegion.connectedPeers, [], 'the outsider has no connection');
  assert.equal(outsiderRegion.routingTableSize, 0);
  const memberRegion = await member.region();
  const regionPeers = new Set(nodes.map((node) => node.peerId));
  assert.ok(memberRegion.connectedPeers.length > 0, 'the member is connected to its region');
  assert.deepEqual(
    memberRegion.connectedPeers.filter((peer) => !regionPeers.has(peer.peerId)),
    [],
    `the member is connected to region members only, not to the outsider (${outsider.peerId})`,
  );

  // A pull through the outsider works, from the upstreams only.
  const memberBefore = await member.scrapeMetrics();
  await containerd.removeEverything();
  const outsiderHosts = scope.dir.join('hosts', outsider.name);
  await writeHostsToml(outsiderHosts, central.host, [outsider.url], central.url);
  const pulled = await containerd.pull(image.reference, { hostsDir: outsiderHosts });
  assert.equal(pulled.digest, image.manifestDigest);
  const outsiderMetrics = await outsider.scrapeMetrics();
  assert.equal(outsiderMetrics.sum('ferry_fetched_bytes_total', { source: 'peer' }), 0, 'the outsider took no byte from a peer');
  assert.equal(
    outsiderMetrics.sum('ferry_fetched_bytes_total', { kind: 'blob', source: `upstream:${regional.host}` }),
    totalSize(image.blobs),
    'it took every blob from the regional registry',
  );
  const memberAfter = await member.scrapeMetrics();
  assert.equal(delta(memberAfter, memberBefore, 'ferry_p2p_served_requests_total'), 0, 'the member answered no transfer request');
  assert.equal(delta(memberAfter, memberBefore, 'ferry_p2p_served_bytes_total'), 0);

  // Even knowing the member's transfer endpoint is not enough: its TLS handshake wants a client
  // certificate from the region's CA, which only the region secret yields. The same request with a
  // certificate from the region's own CA shows that the refusal is about the secret.
  const layer = image.layers[0]!;
  const transferUrl = `${memberRegion.transferUrl}/ferry/v1/blobs/${layer.digest}`;
  const outsiderCertificate = await certificateFor(await readFile(outsiderPsk), 'outsider');
  const refusal = await requestWithCertificate(transferUrl, outsiderCertificate).then(
    (answer) => assert.fail(`a certificate from another secret was answered ${answer.status}`),
    (error: Error) => error,
  );
  t.diagnostic(`the member's transfer endpoint refused the outsider's certificate: ${refusal.message}`);
  const memberCertificate = await certificateFor(await readFile(pskFile), 'test-client');
  const control = await requestWithCertificate(transferUrl, memberCertificate);
  assert.equal(control.status, 200, 'a certificate from the region secret is served');
  assert.equal(sha256(control.body), layer.digest);
});

async function certificateFor(pskFileContents: Buffer, peerName: string): Promise<{ cert: string; key: string }> {
  const authority = await createRegionCertificateAuthority(parseRegionSecret(pskFileContents), REGION);
  const leaf = await authority.issue(peerName);
  return { cert: leaf.certificatePem, key: leaf.privateKeyPem };
}

/** GET over TLS with a client certificate; the server's certificate is not checked, only ours is. */
async function requestWithCertificate(url: string, certificate: { cert: string; key: string }): Promise<{ status: number; body: Buffer }> {
  const agent = new Agent({ connect: { ...certificate, rejectUnauthorized: false, timeout: 5_000 } });
  try {
    const response = await request(url, { dispatcher: agent, signal: AbortSignal.timeout(10_000) });
    return { status: response.statusCode, body: Buffer.from(await response.body.arrayBuffer()) };
  } finally {
    await agent.close();
  }
}

test('a peer killed mid-transfer: the puller resumes from an upstream at its offset and the client gets the whole blob', async (t) => {
  const { registries, files, regional } = env();
  const scope = await createTestScope(t);
  const image = await pushTestImage('region/big', [{ randomBytes: 64 * MiB }], 'region/big');
  const layer = image.layers[0]!;

  // On loopback a peer copies 64 MiB in a fraction of a second, too fast to kill it reliably in
  // the middle. So the holder runs in a network namespace behind a veth link rate-limited with tbf
  // (netns.ts): 64 MiB at 100 Mbit/s takes about 5 s. The limit only slows the transfer down; the
  // test synchronises on metrics, not on time.
  const namespace = await createNetworkNamespace({ rateMbit: 100 });
  scope.defer(() => namespace.remove());
  // The namespace cannot reach the registries on the host's loopback, so the holder fetches the
  // layer first as a plain mirror on the host, then starts again in the namespace on the same data
  // dir as a region member, announcing what it stores.
  const holderData = scope.dir.join('holder-data');
  const seeding = await startFerry({ dir: scope.dir.path, name: 'holder-seeding', config: { dataDir: holderData, registries: registries() }, files });
  scope.defer(() => seeding.stop());
  const seeded = await getBlob(seeding, image.repository, layer.digest);
  assert.equal(sha256(seeded.body), layer.digest, 'precondition: the holder fetched the layer');
  await waitForCommitted(seeding, layer.digest);
  await seeding.stop();

  const pskFile = await writeRegionSecret(scope.dir.join('kill.psk'));
  const region = 'e2e-region-kill';
  const holder = await startRegionNode({
    dir: scope.dir.path,
    name: 'holder',
    region,
    pskFile,
    registries: registries(),
    files,
    namespace,
    config: { dataDir: holderData },
  });
  scope.defer(() => holder.stop());
  const puller = await startRegionNode({
    dir: scope.dir.path,
    name: 'puller',
    region,
    pskFile,
    bootstrap: [holder.p2pAddress],
    registries: registries(),
    files,
    p2p: P2P_SETTINGS,
  });
  scope.defer(() => puller.stop());
  await waitForRegion(holder, [puller]);
  // The holder announced its stored blob at start (a local record, which answers look-ups that
  // reach it) and again once it had a peer.
  await waitForProvides(holder, 0, 1);

  const client = new Client(puller.url);
  scope.defer(() => client.destroy());
  const requested = Date.now();
  const response = await client.request({ path: blobUrlPath(image.repository, layer.digest), method: 'GET' });
  assert.equal(response.statusCode, 200);
  const hash = createHash('sha256');
  let received = 0;
  const chunks = response.body[Symbol.asyncIterator]();
  // Bytes from a peer reach the client only once verified, so the client has its headers and no
  // body yet while the holder dies mid-transfer; the download resumes at its offset upstream.
  const peerBytes = async () => (await puller.scrapeMetrics()).sum('ferry_fetched_bytes_total', { kind: 'blob', source: 'peer' });
  await waitFor(async () => (await peerBytes()) > 0, { description: 'the puller to receive bytes from the holder' });
  const fromPeerBeforeKill = await peerBytes();
  t.diagnostic(`headers after ${Date.now() - requested} ms; ${fromPeerBeforeKill} bytes from the peer when seen`);
  assert.ok(fromPeerBeforeKill < layer.size, `precondition: the transfer is in progress (${fromPeerBeforeKill} of ${layer.size} bytes)`);
  await holder.kill();

  for (let next = await chunks.next(); !next.done; next = await chunks.next()) {
    hash.update(next.value as Buffer);
    received += (next.value as Buffer).byteLength;
  }
  assert.equal(received, layer.size, 'the client received the whole blob');
  assert.equal(`sha256:${hash.digest('hex')}`, layer.digest, 'with the right bytes');

  await waitForCommitted(puller, layer.digest);
  assert.equal(await fileDigest(puller.blobPath(layer.digest)), layer.digest, 'the puller committed the verified blob');
  const metrics = await puller.scrapeMetrics();
  const fromPeer = metrics.sum('ferry_fetched_bytes_total', { kind: 'blob', source: 'peer' });
  const fromRegional = metrics.sum('ferry_fetched_bytes_total', { kind: 'blob', source: `upstream:${regional.host}` });
  t.diagnostic(`killed the holder after ${fromPeerBeforeKill} bytes; ${fromPeer} bytes came from the peer, ${fromRegional} from the regional registry`);
  assert.ok(fromPeer >= fromPeerBeforeKill && fromPeer < layer.size, 'the peer transfer broke off');
  assert.equal(fromPeer + fromRegional, layer.size, 'the regional registry sent only the rest: the download resumed at its offset');
  assert.equal(metrics.sum('ferry_fetched_bytes_total', { kind: 'blob' }), layer.size, 'and nothing else was fetched');
  assert.equal(metrics.sum('ferry_corrupt_content_total'), 0);
  assert.ok((await puller.region()).penalised.includes(holder.peerId), 'the puller penalised the dead holder');
});
