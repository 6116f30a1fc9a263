import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { stat } from 'node:fs/promises'
import { Readable } from 'node:stream'
import { describe, it } from 'node:test'
import type { BlobInfo, BlobStore, BlobWriter, ByteRange, FetchRequest, TagKey, TagRecord } from '@ferry/interfaces'
import { sha256Digest } from '@ferry/oci'
import { createRegionCertificateAuthority, IDENTITY_FILE, RegionNode, type RegionConfig } from '@ferry/p2p'
import { MemoryBlobStore } from '@ferry/store'
import { pino } from 'pino'
import { Registry } from 'prom-client'
import { Agent, request as httpRequest } from 'undici'
import { createTestScope, type TestScope } from '../harness/scope.js'
import { loopbackRegionConfig } from './helpers/region-config.js'

const REGION = 'test-region-1'
const SECRET = randomBytes(32)
const logger = pino({ level: 'silent' })

interface TestNode {
  node: RegionNode
  blobStore: BlobStore
  metrics: Registry
  /** The node's libp2p TCP address with its peer id. */
  address: string
}

async function startNode(
  scope: TestScope,
  name: string,
  options: {
    bootstrap?: string[]
    secret?: Uint8Array
    blobStore?: BlobStore
    config?: Partial<RegionConfig>
    mediaTypeOf?: (digest: string) => Promise<string | undefined>
    tagOf?: (key: TagKey) => Promise<TagRecord | undefined>
  } = {},
): Promise<TestNode> {
  const blobStore = options.blobStore ?? new MemoryBlobStore()
  const metrics = new Registry()
  const node = await RegionNode.start(
    { logger, blobStore, metrics, ...(options.mediaTypeOf ? { mediaTypeOf: options.mediaTypeOf } : {}), ...(options.tagOf ? { tagOf: options.tagOf } : {}) },
    {
      ...loopbackRegionConfig(REGION, options.secret ?? SECRET, scope.dir.join(name, 'identity'), options.bootstrap ?? []),
      ...options.config,
    },
  )
  scope.defer(() => node.stop())
  const address = node.status().listen[0]
  assert.ok(address, 'node has a libp2p address')
  return { node, blobStore, metrics, address }
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

async function waitForRegion(nodes: TestNode[]): Promise<void> {
  for (const { node } of nodes) {
    await waitFor(`${node.peerId} to have every peer in its routing table`, () => node.status().routingTableSize >= nodes.length - 1)
  }
}

async function commit(blobStore: BlobStore, bytes: Buffer): Promise<string> {
  const digest = sha256Digest(bytes)
  const writer = await blobStore.ingest(digest, bytes.byteLength)
  await writer.write(bytes)
  await writer.commit()
  return digest
}

function fetchRequest(digest: string, offset = 0, signal = AbortSignal.timeout(10_000)): FetchRequest {
  return { kind: 'blob', registry: 'docker.io', repository: 'library/busybox', digest, offset, signal }
}

async function readAll(body: Readable): Promise<Buffer> {
  const chunks: Buffer[] = []
  for await (const chunk of body) chunks.push(chunk as Buffer)
  return Buffer.concat(chunks)
}

/** Fetches through `node`'s peer source until the DHT has the record (a provide returns before peers store it). */
async function fetchWhenFound(node: RegionNode, digest: string, offset = 0) {
  return waitFor(`a provider of ${digest}`, () => node.peerSource.fetch(fetchRequest(digest, offset)))
}

async function metricValue(registry: Registry, name: string, labels: Record<string, string> = {}): Promise<number> {
  const values = (await registry.getSingleMetric(name)?.get())?.values ?? []
  return values
    .filter((value) => Object.entries(labels).every(([key, wanted]) => value.labels[key] === wanted))
    .reduce((sum, value) => sum + value.value, 0)
}

/** A BlobStore that serves its committed blobs with one byte flipped: a peer that lies. */
class CorruptingBlobStore implements BlobStore {
  private readonly inner = new MemoryBlobStore()
  stat(digest: string): Promise<BlobInfo | undefined> {
    return this.inner.stat(digest)
  }
  async open(digest: string, range?: ByteRange): Promise<Readable | undefined> {
    const body = await this.inner.open(digest, range)
    if (!body) return undefined
    const bytes = Buffer.from(await readAll(body))
    if (bytes.byteLength > 0) bytes[bytes.byteLength >> 1] ^= 0xff
    return Readable.from([bytes])
  }
  ingest(digest: string, expectedSize?: number): Promise<BlobWriter> {
    return this.inner.ingest(digest, expectedSize)
  }
  delete(digest: string): Promise<boolean> {
    return this.inner.delete(digest)
  }
  list(): AsyncIterable<BlobInfo> {
    return this.inner.list()
  }
  usage(): Promise<number> {
    return this.inner.usage()
  }
}

/** A BlobStore on a disk that stopped answering: `stat` waits until `release()`. */
class StalledBlobStore extends MemoryBlobStore {
  private resolveReleased: () => void = () => undefined
  private readonly released = new Promise<void>((resolve) => (this.resolveReleased = resolve))
  override async stat(digest: string): Promise<BlobInfo | undefined> {
    await this.released
    return super.stat(digest)
  }
  release(): void {
    this.resolveReleased()
  }
}

describe('p2p region', () => {
  it('nodes find each other through bootstrap, and a blob one node announced is fetched whole and from an offset', async (t) => {
    const scope = await createTestScope(t)
    const first = await startNode(scope, 'a')
    const others = await Promise.all(['b', 'c', 'd'].map((name) => startNode(scope, name, { bootstrap: [first.address] })))
    const nodes = [first, ...others]
    await waitForRegion(nodes)

    const bytes = randomBytes(3 * 1024 * 1024 + 17)
    const digest = await commit(first.blobStore, bytes)
    first.node.announcer.announce(digest)
    await first.node.provideAll()
    assert.equal(first.node.status().providing, 1)

    const fetcher = others[1]!.node
    const content = await fetchWhenFound(fetcher, digest)
    assert.equal(content.size, bytes.byteLength)
    assert.equal(content.offset, 0)
    const received = await readAll(content.body)
    assert.equal(sha256Digest(received), digest)

    const offset = 1_234_567
    const tail = await fetcher.peerSource.fetch(fetchRequest(digest, offset))
    assert.ok(tail, 'resumed fetch finds the provider')
    assert.equal(tail.size, bytes.byteLength)
    assert.equal(tail.offset, offset)
    assert.ok((await readAll(tail.body)).equals(bytes.subarray(offset)))

    const status = fetcher.status()
    assert.equal(status.region, REGION)
    assert.ok(status.connectedPeers.some((peer) => peer.peerId === first.node.peerId))
    assert.ok(status.routingTableSize >= 3)
    assert.match(status.transferUrl, /^https:\/\/127\.0\.0\.1:\d+$/)
    assert.equal(await metricValue(first.metrics, 'ferry_p2p_served_requests_total', { result: 'ok' }), 2)
    assert.equal(await metricValue(first.metrics, 'ferry_p2p_served_bytes_total'), bytes.byteLength * 2 - offset)
  })

  it('answers last-known tags to peers (offline mode): the newest record among the peers asked', async (t) => {
    const scope = await createTestScope(t)
    const key = { registry: 'harbor.example.com', repository: 'team/app', tag: 'v1' }
    const record = (digest: string, confirmedAt: number): TagRecord => ({ digest, mediaType: 'application/vnd.oci.image.manifest.v1+json', size: 321, confirmedAt })
    const older = record(`sha256:${'1'.repeat(64)}`, 1_000)
    const newer = record(`sha256:${'2'.repeat(64)}`, 2_000)
    const a = await startNode(scope, 'a', { tagOf: async (asked) => (asked.tag === key.tag ? older : undefined) })
    const b = await startNode(scope, 'b', { bootstrap: [a.address], tagOf: async (asked) => (asked.tag === key.tag ? newer : undefined) })
    const asker = await startNode(scope, 'c', { bootstrap: [a.address] })
    await waitFor('the asker to be connected to both peers', () => asker.node.status().connectedPeers.length >= 2)
    assert.deepEqual(await asker.node.lastKnownTag(key, { signal: AbortSignal.timeout(5_000) }), newer)
    assert.equal(await asker.node.lastKnownTag({ ...key, tag: 'never' }, { signal: AbortSignal.timeout(5_000) }), undefined)
    void b
  })

  it('a blob announced while its node was alone is found by a node that joins later', async (t) => {
    const scope = await createTestScope(t)
    const early = await startNode(scope, 'a')
    const bytes = randomBytes(16 * 1024)
    const digest = await commit(early.blobStore, bytes)
    await early.node.provideAll()
    assert.equal(early.node.status().routingTableSize, 0)
    assert.equal(early.node.status().providing, 1)

    const late = await startNode(scope, 'b', { bootstrap: [early.address], config: { negativeCacheMs: 0 } })
    await waitForRegion([early, late])
    const content = await fetchWhenFound(late.node, digest)
    assert.ok((await readAll(content.body)).equals(bytes))
  })

  it('a fetch of a digest nobody provides returns undefined, and the miss is cached', async (t) => {
    const scope = await createTestScope(t)
    const first = await startNode(scope, 'a')
    const second = await startNode(scope, 'b', { bootstrap: [first.address] })
    await waitForRegion([first, second])
    const unknown = sha256Digest(randomBytes(64))
    assert.equal(await second.node.peerSource.fetch(fetchRequest(unknown)), undefined)
    assert.equal(await second.node.peerSource.fetch(fetchRequest(unknown)), undefined)
    assert.equal(await metricValue(second.metrics, 'ferry_p2p_fetches_total', { result: 'not_found' }), 1)
    assert.equal(await metricValue(second.metrics, 'ferry_p2p_fetches_total', { result: 'negative_cache' }), 1)
  })

  it('a node with another region secret can neither connect nor fetch', async (t) => {
    const scope = await createTestScope(t)
    const member = await startNode(scope, 'member')
    const bytes = randomBytes(64 * 1024)
    const digest = await commit(member.blobStore, bytes)
    member.node.announcer.announce(digest)
    await member.node.provideAll()

    const otherSecret = randomBytes(32)
    const outsider = await startNode(scope, 'outsider', { secret: otherSecret, bootstrap: [member.address] })
    await assert.rejects(outsider.node.dial(member.address))
    await assert.rejects(member.node.dial(outsider.address))
    assert.equal(await outsider.node.peerSource.fetch(fetchRequest(digest)), undefined)
    assert.deepEqual(outsider.node.status().connectedPeers, [])
    assert.deepEqual(member.node.status().connectedPeers, [])

    // Straight to the transfer endpoint: a certificate from another region's CA is refused...
    const url = `${member.node.status().transferUrl}/ferry/v1/blobs/${digest}`
    const foreignCa = await createRegionCertificateAuthority(otherSecret, REGION)
    const foreignLeaf = await foreignCa.issue(outsider.node.peerId)
    const trustingOwnCa = new Agent({ connect: { ca: [foreignCa.certificatePem], cert: foreignLeaf.certificatePem, key: foreignLeaf.privateKeyPem } })
    const trustingAnything = new Agent({
      connect: { rejectUnauthorized: false, cert: foreignLeaf.certificatePem, key: foreignLeaf.privateKeyPem },
    })
    // ...and so is a client with no certificate at all.
    const anonymous = new Agent({ connect: { rejectUnauthorized: false } })
    scope.defer(() => Promise.all([trustingOwnCa.close(), trustingAnything.close(), anonymous.close()]))
    for (const dispatcher of [trustingOwnCa, trustingAnything, anonymous]) {
      await assert.rejects(async () => {
        const response = await httpRequest(url, { dispatcher, signal: AbortSignal.timeout(5_000) })
        await response.body.dump()
      })
    }
    assert.equal(await metricValue(member.metrics, 'ferry_p2p_served_requests_total'), 0)

    // A member's certificate is accepted (the same endpoint, so the refusals above were about trust).
    const memberCa = await createRegionCertificateAuthority(SECRET, REGION)
    const memberLeaf = await memberCa.issue('a-member')
    const memberAgent = new Agent({
      connect: { ca: [memberCa.certificatePem], cert: memberLeaf.certificatePem, key: memberLeaf.privateKeyPem, checkServerIdentity: () => undefined },
    })
    scope.defer(() => memberAgent.close())
    const response = await httpRequest(url, { dispatcher: memberAgent, headers: { range: 'bytes=10-' }, signal: AbortSignal.timeout(5_000) })
    assert.equal(response.statusCode, 206)
    assert.equal(response.headers['content-range'], `bytes 10-${bytes.byteLength - 1}/${bytes.byteLength}`)
    assert.ok(Buffer.from(await response.body.arrayBuffer()).equals(bytes.subarray(10)))
  })

  it('a peer that served corrupt content is penalised on reportCorrupt and skipped afterwards', async (t) => {
    const scope = await createTestScope(t)
    const liar = await startNode(scope, 'liar', { blobStore: new CorruptingBlobStore() })
    const honest = await startNode(scope, 'honest', { bootstrap: [liar.address] })
    const fetcher = await startNode(scope, 'fetcher', { bootstrap: [liar.address] })
    await waitForRegion([liar, honest, fetcher])

    const bytes = randomBytes(256 * 1024)
    const digest = await commit(liar.blobStore, bytes)
    liar.node.announcer.announce(digest)
    await liar.node.provideAll()

    const corrupt = await fetchWhenFound(fetcher.node, digest)
    assert.notEqual(sha256Digest(await readAll(corrupt.body)), digest)
    fetcher.node.peerSource.reportCorrupt?.(fetchRequest(digest))
    assert.deepEqual(fetcher.node.status().penalised, [liar.node.peerId])
    assert.equal(await metricValue(fetcher.metrics, 'ferry_p2p_peer_errors_total', { kind: 'corrupt' }), 1)
    // The liar is the only provider, and it is skipped.
    assert.equal(await fetcher.node.peerSource.fetch(fetchRequest(digest)), undefined)

    await commit(honest.blobStore, bytes)
    honest.node.announcer.announce(digest)
    await honest.node.provideAll()
    const good = await fetchWhenFound(fetcher.node, digest)
    assert.equal(sha256Digest(await readAll(good.body)), digest)
    assert.equal(await metricValue(liar.metrics, 'ferry_p2p_served_requests_total', { result: 'ok' }), 1)
    assert.equal(await metricValue(honest.metrics, 'ferry_p2p_served_requests_total', { result: 'ok' }), 1)
  })

  it('a provider that went away is penalised and the next provider serves', async (t) => {
    const scope = await createTestScope(t)
    const gone = await startNode(scope, 'a')
    const remaining = await startNode(scope, 'b', { bootstrap: [gone.address] })
    const fetcher = await startNode(scope, 'c', { bootstrap: [gone.address], config: { negativeCacheMs: 0 } })
    await waitForRegion([gone, remaining, fetcher])
    const bytes = randomBytes(128 * 1024)
    const digest = await commit(gone.blobStore, bytes)
    await gone.node.provideAll()
    // The fetcher now holds the record of the provider that will go away, so its look-ups list it first.
    const content = await fetchWhenFound(fetcher.node, digest)
    assert.equal(sha256Digest(await readAll(content.body)), digest)

    await commit(remaining.blobStore, bytes)
    await remaining.node.provideAll()
    await gone.node.stop()
    const again = await fetchWhenFound(fetcher.node, digest)
    assert.equal(sha256Digest(await readAll(again.body)), digest)
    assert.equal(await metricValue(remaining.metrics, 'ferry_p2p_served_requests_total', { result: 'ok' }), 1)
    assert.deepEqual(fetcher.node.status().penalised, [gone.node.peerId])
    assert.equal(await metricValue(fetcher.metrics, 'ferry_p2p_peer_errors_total', { kind: 'connect' }), 1)
  })

  it('a manifest comes with the media type its provider knows', async (t) => {
    const scope = await createTestScope(t)
    const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json' }))
    const digest = sha256Digest(manifest)
    const provider = await startNode(scope, 'a', {
      mediaTypeOf: async (wanted) => (wanted === digest ? 'application/vnd.oci.image.manifest.v1+json' : undefined),
    })
    const fetcher = await startNode(scope, 'b', { bootstrap: [provider.address] })
    await waitForRegion([provider, fetcher])
    await commit(provider.blobStore, manifest)
    await provider.node.provideAll()
    const content = await waitFor('a provider of the manifest', () => fetcher.node.peerSource.fetch({ ...fetchRequest(digest), kind: 'manifest' }))
    assert.equal(content.mediaType, 'application/vnd.oci.image.manifest.v1+json')
    assert.ok((await readAll(content.body)).equals(manifest))
  })

  it('a transfer that breaks midway penalises its peer and resumes from the offset at another', async (t) => {
    const scope = await createTestScope(t)
    const first = await startNode(scope, 'a')
    const second = await startNode(scope, 'b', { bootstrap: [first.address] })
    const fetcher = await startNode(scope, 'c', { bootstrap: [first.address], config: { negativeCacheMs: 0 } })
    await waitForRegion([first, second, fetcher])
    const bytes = randomBytes(64 * 1024 * 1024)
    const digest = await commit(first.blobStore, bytes)
    await first.node.provideAll()

    const content = await fetchWhenFound(fetcher.node, digest)
    const received: Buffer[] = []
    let offset = 0
    const reader = content.body[Symbol.asyncIterator]()
    while (offset < 1024 * 1024) {
      const { value } = await reader.next()
      received.push(value as Buffer)
      offset += (value as Buffer).byteLength
    }
    await commit(second.blobStore, bytes)
    await second.node.provideAll()
    await first.node.stop()
    await assert.rejects(async () => {
      for (;;) {
        const { value, done } = await reader.next()
        if (done) break
        received.push(value as Buffer)
        offset += (value as Buffer).byteLength
      }
    })
    assert.ok(offset < bytes.byteLength, 'the body ended early')
    assert.deepEqual(fetcher.node.status().penalised, [first.node.peerId])
    assert.equal(await metricValue(fetcher.metrics, 'ferry_p2p_peer_errors_total', { kind: 'stream' }), 1)

    const tail = await fetchWhenFound(fetcher.node, digest, offset)
    assert.equal(tail.offset, offset)
    received.push(await readAll(tail.body))
    assert.equal(sha256Digest(Buffer.concat(received)), digest)
  })

  it('a withdrawn blob is no longer announced, and a peer with a stale record is skipped without penalty', async (t) => {
    const scope = await createTestScope(t)
    const provider = await startNode(scope, 'a')
    const fetcher = await startNode(scope, 'b', { bootstrap: [provider.address], config: { negativeCacheMs: 0 } })
    await waitForRegion([provider, fetcher])
    const bytes = randomBytes(32 * 1024)
    const digest = await commit(provider.blobStore, bytes)
    await provider.node.provideAll()
    assert.equal(provider.node.status().providing, 1)
    const content = await fetchWhenFound(fetcher.node, digest)
    content.body.destroy()

    await provider.blobStore.delete(digest)
    provider.node.announcer.withdraw(digest)
    assert.equal(provider.node.status().providing, 0)
    await provider.node.provideAll()
    assert.equal(provider.node.status().providing, 0)
    // The fetcher still holds the record until it expires: the provider answers 404, which is no fault.
    assert.equal(await fetcher.node.peerSource.fetch(fetchRequest(digest)), undefined)
    assert.equal(await metricValue(provider.metrics, 'ferry_p2p_served_requests_total', { result: 'not_found' }), 1)
    assert.deepEqual(fetcher.node.status().penalised, [])
  })

  it('a peer too slow to answer is given up on and penalised', async (t) => {
    const scope = await createTestScope(t)
    const stalled = new StalledBlobStore()
    scope.defer(() => stalled.release())
    const slow = await startNode(scope, 'a', { blobStore: stalled })
    // Before its record is found, the slow node may be asked as the digest's owner (fetch-through): bounded alike.
    const fetcher = await startNode(scope, 'b', {
      bootstrap: [slow.address],
      config: { transferTimeouts: { firstByteMs: 200, fetchThroughFirstByteMs: 200 } },
    })
    await waitForRegion([slow, fetcher])
    const bytes = randomBytes(1024)
    const digest = await commit(stalled, bytes)
    await slow.node.provideAll()
    const failure = await waitFor('the slow provider to be asked', async () => {
      try {
        await fetcher.node.peerSource.fetch(fetchRequest(digest))
        return false
      } catch (error) {
        return error
      }
    })
    assert.equal((failure as Error).name, 'UpstreamUnavailableError')
    assert.deepEqual(fetcher.node.status().penalised, [slow.node.peerId])
    assert.equal(await metricValue(fetcher.metrics, 'ferry_p2p_peer_errors_total', { kind: 'timeout' }), 1)
    // Penalised, the only provider is skipped: nothing to fetch from peers.
    assert.equal(await fetcher.node.peerSource.fetch(fetchRequest(digest)), undefined)
  })

  it('transfers beyond maxTransfersPerPeer are refused as busy until one ends', async (t) => {
    const scope = await createTestScope(t)
    const provider = await startNode(scope, 'a', { config: { maxTransfersPerPeer: 1 } })
    const fetcher = await startNode(scope, 'b', { bootstrap: [provider.address] })
    await waitForRegion([provider, fetcher])
    // Large enough that an unread body keeps its transfer running.
    const bytes = randomBytes(64 * 1024 * 1024)
    const digest = await commit(provider.blobStore, bytes)
    await provider.node.provideAll()

    const held = await fetchWhenFound(fetcher.node, digest)
    await assert.rejects(fetcher.node.peerSource.fetch(fetchRequest(digest)), { name: 'UpstreamUnavailableError' })
    assert.equal(await metricValue(provider.metrics, 'ferry_p2p_served_requests_total', { result: 'busy' }), 1)
    // Busy is not a fault: the provider is not penalised.
    assert.deepEqual(fetcher.node.status().penalised, [])
    held.body.destroy()
    const next = await waitFor('the transfer slot to be free', async () => {
      try {
        return await fetcher.node.peerSource.fetch(fetchRequest(digest))
      } catch {
        return undefined
      }
    })
    assert.equal(sha256Digest(await readAll(next.body)), digest)
  })

  it('joins through a DNS bootstrap name', async (t) => {
    const scope = await createTestScope(t)
    const first = await startNode(scope, 'a')
    const port = /\/tcp\/(\d+)/.exec(first.address)?.[1]
    const second = await startNode(scope, 'b', { bootstrap: [`/dns4/localhost/tcp/${port}`] })
    await waitFor('a connection through the DNS name', () => second.node.status().connectedPeers.some((peer) => peer.peerId === first.node.peerId))
    await waitForRegion([first, second])
  })

  it('keeps its identity across restarts', async (t) => {
    const scope = await createTestScope(t)
    const first = await startNode(scope, 'a')
    const peerId = first.node.peerId
    await first.node.stop()
    const again = await startNode(scope, 'a')
    assert.equal(again.node.peerId, peerId)
    const file = await stat(scope.dir.join('a', 'identity', IDENTITY_FILE))
    assert.equal(file.mode & 0o777, 0o600)
    const other = await startNode(scope, 'b')
    assert.notEqual(other.node.peerId, peerId)
  })
})
