import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { describe, it } from 'node:test'
import type { UpstreamSource } from '@ferry/interfaces'
import { Mirror, createMirrorMetrics } from '@ferry/mirror'
import { sha256Digest } from '@ferry/oci'
import { createRegionCertificateAuthority, rendezvousOwner, RegionNode } from '@ferry/p2p'
import { MemoryBlobStore, MemoryMetadataStore } from '@ferry/store'
import { pino } from 'pino'
import { Registry } from 'prom-client'
import { Agent, request as httpRequest } from 'undici'
import { createTestScope, type TestScope } from '../harness/scope.js'
import { MemoryUpstream } from './helpers/memory-upstream.js'
import { readAll } from './helpers/streams.js'
import { loopbackRegionConfig } from './helpers/region-config.js'

/**
 * Region-wide single flight: region nodes, each with a real Mirror over a memory store, all
 * mirroring one registry through ONE shared upstream that counts what it serves.
 */

const REGION = 'test-region-sf'
const SECRET = randomBytes(32)
const REGISTRY = 'harbor.example.com'
const REPOSITORY = 'team/app'
const logger = pino({ level: 'silent' })

interface MirrorNode {
  name: string
  node: RegionNode
  mirror: Mirror
  blobStore: MemoryBlobStore
  metrics: Registry
  address: string
}

async function startMirrorNode(
  scope: TestScope,
  name: string,
  options: { upstream: UpstreamSource; bootstrap?: string[]; extraRoutes?: Array<{ registry: string; upstream: UpstreamSource }> },
): Promise<MirrorNode> {
  const blobStore = new MemoryBlobStore()
  const metrics = new Registry()
  let mirror: Mirror | undefined
  const node = await RegionNode.start(
    {
      logger,
      blobStore,
      metrics,
      fetchThrough: async (request) => {
        assert.ok(mirror, 'the mirror is built before peers ask')
        return mirror.fetchThrough(request)
      },
    },
    loopbackRegionConfig(REGION, SECRET, scope.dir.join(name, 'identity'), options.bootstrap ?? []),
  )
  scope.defer(() => node.stop())
  const routes = [
    { registry: REGISTRY, upstreams: [options.upstream], peers: true },
    ...(options.extraRoutes ?? []).map((route) => ({ registry: route.registry, upstreams: [route.upstream], peers: true })),
  ]
  mirror = new Mirror(
    {
      blobStore,
      metadata: new MemoryMetadataStore(),
      logger,
      clock: { now: () => Date.now() },
      metrics: createMirrorMetrics(metrics),
      peerSource: node.peerSource,
      announcer: node.announcer,
    },
    { routes, tagTimeoutMs: 1_000, orphanTimeoutMs: 60_000 },
  )
  const built = mirror
  scope.defer(() => built.close())
  const address = node.status().listen[0]
  assert.ok(address, 'node has a libp2p address')
  return { name, node, mirror, blobStore, metrics, address }
}

/** Starts `count` nodes bootstrapped from the first and waits until every one is connected to every other. */
async function startRegion(scope: TestScope, count: number, upstream: UpstreamSource, extra: (index: number) => Parameters<typeof startMirrorNode>[2] = () => ({ upstream })) {
  const first = await startMirrorNode(scope, 'node-0', extra(0))
  const others = await Promise.all(
    Array.from({ length: count - 1 }, (_, index) => startMirrorNode(scope, `node-${index + 1}`, { ...extra(index + 1), bootstrap: [first.address] })),
  )
  const nodes = [first, ...others]
  for (const { node } of nodes) {
    await waitFor(`${node.peerId} to know every peer`, () => {
      const status = node.status()
      return status.connectedPeers.length >= count - 1 && status.routingTableSize >= count - 1
    })
  }
  return nodes
}

/** Polls a condition until it holds; fails the test after `timeoutMs`. */
async function waitFor<T>(what: string, probe: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = await probe()
    if (value !== undefined && value !== false) return value
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
}

async function metricValue(registry: Registry, name: string, labels: Record<string, string> = {}): Promise<number> {
  const values = (await registry.getSingleMetric(name)?.get())?.values ?? []
  return values
    .filter((value) => Object.entries(labels).every(([key, wanted]) => value.labels[key] === wanted))
    .reduce((sum, value) => sum + value.value, 0)
}

/** Random content whose rendezvous owner among `nodes` is `owner`. */
function blobOwnedBy(owner: MirrorNode, nodes: MirrorNode[], size: number): { bytes: Buffer; digest: string } {
  const ids = nodes.map((entry) => entry.node.peerId)
  for (;;) {
    const bytes = randomBytes(size)
    const digest = sha256Digest(bytes)
    if (rendezvousOwner(digest, ids) === owner.node.peerId) return { bytes, digest }
  }
}

/** An HTTPS client holding a region certificate: a region peer as far as the transfer server can tell. */
async function regionPeerAgent(scope: TestScope, peerName: string): Promise<Agent> {
  const authority = await createRegionCertificateAuthority(SECRET, REGION)
  const leaf = await authority.issue(peerName)
  const agent = new Agent({
    connect: { ca: [authority.certificatePem], cert: leaf.certificatePem, key: leaf.privateKeyPem, checkServerIdentity: () => undefined },
  })
  scope.defer(() => agent.close())
  return agent
}

function fetchThroughUrl(target: MirrorNode, digest: string, registry = REGISTRY): string {
  const query = new URLSearchParams({ kind: 'blob', registry, repository: REPOSITORY })
  return `${target.node.status().transferUrl}/ferry/v1/blobs/${digest}?${query}`
}

describe('p2p region-wide single flight', () => {
  it('nodes pulling the same cold blob at once take it from the upstream once, through its owner', async (t) => {
    const scope = await createTestScope(t)
    const upstream = new MemoryUpstream('regional')
    const nodes = await startRegion(scope, 5, upstream)
    const owner = nodes[2]!
    const { bytes, digest } = blobOwnedBy(owner, nodes, 4 * 1024 * 1024 + 123)
    upstream.blobs.set(digest, bytes)
    // The owner's transfer stops short of the end until every other node follows it.
    upstream.holdLastBytes = 64 * 1024

    const pulls = nodes.map(async (entry) => readAll((await entry.mirror.blob(REGISTRY, REPOSITORY, digest, undefined)).body))
    await upstream.waitUntilHeld()
    for (const entry of nodes) {
      if (entry === owner) continue
      await waitFor(`${entry.name} to follow the owner's download`, async () => (await metricValue(entry.metrics, 'ferry_fetched_bytes_total', { source: 'peer' })) > 0)
    }
    upstream.release()
    const received = await Promise.all(pulls)

    for (const content of received) assert.ok(content.equals(bytes), 'every node served the right content')
    assert.equal(upstream.fetches.length, 1, 'one upstream request for the whole region')
    assert.equal(upstream.bytesServed, bytes.byteLength, 'each byte crossed from the upstream once')
    for (const entry of nodes) {
      const committed = await waitFor(`${entry.name} to commit`, () => entry.blobStore.stat(digest))
      assert.equal(committed.size, bytes.byteLength)
      const stored = await entry.blobStore.open(digest)
      assert.equal(sha256Digest(await readAll(stored!)), digest)
    }
    for (const result of ['ok', 'not_found', 'busy', 'unavailable', 'failed']) {
      assert.equal(await metricValue(owner.metrics, 'ferry_p2p_fetch_through_total', { result }), 0, 'the owner asked no one')
    }
    assert.equal(await metricValue(owner.metrics, 'ferry_p2p_fetch_through_served_total', { result: 'ok' }), nodes.length - 1)
    for (const entry of nodes) {
      if (entry === owner) continue
      assert.equal(await metricValue(entry.metrics, 'ferry_p2p_fetch_through_total', { result: 'ok' }), 1, `${entry.name} fetched through the owner`)
      assert.equal(await metricValue(entry.metrics, 'ferry_p2p_fetches_total', { result: 'fetch_through' }), 1)
      assert.equal(await metricValue(entry.metrics, 'ferry_fetched_bytes_total', { source: 'peer' }), bytes.byteLength)
    }
  })

  it('a forwarded request is fetched by the node it reached, never forwarded again', async (t) => {
    const scope = await createTestScope(t)
    const upstream = new MemoryUpstream('regional')
    const nodes = await startRegion(scope, 3, upstream)
    const [, reached, owner] = nodes as [MirrorNode, MirrorNode, MirrorNode]
    // In every full view the owner is `owner`; a peer whose view lacked it forwards to `reached`.
    const { bytes, digest } = blobOwnedBy(owner, nodes, 512 * 1024)
    upstream.blobs.set(digest, bytes)

    // The reached node's own peer source would hand this digest to the owner, but not a forwarded one.
    const forwarded = await reached.node.peerSource.fetch({
      kind: 'blob',
      registry: REGISTRY,
      repository: REPOSITORY,
      digest,
      offset: 0,
      signal: AbortSignal.timeout(10_000),
      forwarded: true,
    })
    assert.equal(forwarded, undefined)

    const agent = await regionPeerAgent(scope, 'peer-with-another-view')
    const response = await httpRequest(fetchThroughUrl(reached, digest), { dispatcher: agent, signal: AbortSignal.timeout(10_000) })
    assert.equal(response.statusCode, 200)
    assert.equal(response.headers['content-length'], String(bytes.byteLength))
    assert.ok(Buffer.from(await response.body.arrayBuffer()).equals(bytes))

    assert.equal(upstream.fetches.length, 1, 'the reached node fetched it from the upstream itself')
    assert.equal(upstream.fetches[0]!.forwarded, true, 'its download carried the forwarded mark to its sources')
    assert.equal(await metricValue(reached.metrics, 'ferry_p2p_fetch_through_total'), 0, 'the reached node forwarded nothing')
    assert.equal(await metricValue(reached.metrics, 'ferry_p2p_fetch_through_served_total', { result: 'ok' }), 1)
    assert.equal(await metricValue(owner.metrics, 'ferry_p2p_served_requests_total'), 0, 'the owner was never asked')
    await waitFor('the reached node to commit', () => reached.blobStore.stat(digest))

    // A resumed fetch-through of content the node now holds is served from its store.
    const tail = await httpRequest(fetchThroughUrl(reached, digest), {
      dispatcher: agent,
      headers: { range: 'bytes=1000-' },
      signal: AbortSignal.timeout(10_000),
    })
    assert.equal(tail.statusCode, 206)
    assert.equal(tail.headers['content-range'], `bytes 1000-${bytes.byteLength - 1}/${bytes.byteLength}`)
    assert.ok(Buffer.from(await tail.body.arrayBuffer()).equals(bytes.subarray(1000)))
    assert.equal(await metricValue(reached.metrics, 'ferry_p2p_fetch_through_served_total', { result: 'committed' }), 1)
    assert.equal(upstream.fetches.length, 1)
  })

  it('an owner killed mid-stream is penalised and the download completes from the upstream at its offset', async (t) => {
    const scope = await createTestScope(t)
    const upstream = new MemoryUpstream('regional')
    const nodes = await startRegion(scope, 3, upstream)
    const [requester, owner] = nodes as [MirrorNode, MirrorNode, MirrorNode]
    const { bytes, digest } = blobOwnedBy(owner, nodes, 2 * 1024 * 1024 + 7)
    upstream.blobs.set(digest, bytes)
    upstream.holdLastBytes = 128 * 1024

    const pull = requester.mirror.blob(REGISTRY, REPOSITORY, digest, undefined).then((content) => readAll(content.body))
    await upstream.waitUntilHeld()
    await waitFor('the requester to follow the owner', async () => (await metricValue(requester.metrics, 'ferry_fetched_bytes_total', { source: 'peer' })) > 0)
    // Later transfers are not held; the owner's stays stuck while it goes away.
    upstream.holdLastBytes = undefined
    await owner.node.stop()
    const received = await pull
    upstream.release()

    assert.ok(received.equals(bytes), 'the requester served the right content')
    await waitFor('the requester to commit', () => requester.blobStore.stat(digest))
    assert.deepEqual(requester.node.status().penalised, [owner.node.peerId])
    const fromPeer = await metricValue(requester.metrics, 'ferry_fetched_bytes_total', { source: 'peer' })
    const fromUpstream = await metricValue(requester.metrics, 'ferry_fetched_bytes_total', { source: 'upstream:regional' })
    assert.ok(fromPeer > 0 && fromPeer < bytes.byteLength)
    assert.equal(fromPeer + fromUpstream, bytes.byteLength, 'the upstream resumed where the owner stopped')
    const resumed = upstream.fetches.filter((fetch) => fetch.offset > 0)
    assert.equal(resumed.length, 1)
    assert.equal(resumed[0]!.offset, fromPeer)
    assert.equal(await metricValue(requester.metrics, 'ferry_p2p_peer_errors_total', { kind: 'stream' }), 1)
  })

  it('a fetch-through for a registry the owner does not mirror is refused, and the requester uses its own upstream', async (t) => {
    const scope = await createTestScope(t)
    const upstream = new MemoryUpstream('regional')
    const otherUpstream = new MemoryUpstream('other')
    const OTHER = 'other.example.com'
    // Only the first node mirrors the other registry.
    const nodes = await startRegion(scope, 2, upstream, (index) => ({
      upstream,
      ...(index === 0 ? { extraRoutes: [{ registry: OTHER, upstream: otherUpstream }] } : {}),
    }))
    const [requester, owner] = nodes as [MirrorNode, MirrorNode]
    const { bytes, digest } = blobOwnedBy(owner, nodes, 300 * 1024)
    otherUpstream.blobs.set(digest, bytes)
    upstream.blobs.set(digest, bytes)

    // On the wire: 404, never an open proxy.
    const agent = await regionPeerAgent(scope, 'some-peer')
    const refused = await httpRequest(fetchThroughUrl(owner, digest, OTHER), { dispatcher: agent, signal: AbortSignal.timeout(10_000) })
    assert.equal(refused.statusCode, 404)
    assert.equal(((await refused.body.json()) as { error: string }).error, 'not_mirrored')
    const unknown = await httpRequest(fetchThroughUrl(owner, digest, 'unknown.example.net'), { dispatcher: agent, signal: AbortSignal.timeout(10_000) })
    assert.equal(unknown.statusCode, 404)
    await unknown.body.dump()
    assert.equal(await metricValue(owner.metrics, 'ferry_p2p_fetch_through_served_total', { result: 'not_mirrored' }), 2)

    // Through the pull path: the owner refuses, the requester fetches from its own upstream.
    const content = await requester.mirror.blob(OTHER, REPOSITORY, digest, undefined)
    assert.ok((await readAll(content.body)).equals(bytes))
    assert.equal(await metricValue(requester.metrics, 'ferry_p2p_fetch_through_total', { result: 'not_found' }), 1)
    assert.equal(await metricValue(owner.metrics, 'ferry_p2p_fetch_through_served_total', { result: 'not_mirrored' }), 3)
    assert.equal(otherUpstream.bytesServed, bytes.byteLength)
    assert.equal(upstream.fetches.length, 0, "the owner never fetched for a registry it does not mirror")
    assert.equal(await owner.blobStore.stat(digest), undefined)
  })
})
