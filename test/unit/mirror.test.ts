import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { describe, it } from 'node:test'
import { pino } from 'pino'
import { Registry } from 'prom-client'
import { Mirror, createMirrorMetrics } from '@ferry/mirror'
import { MediaTypes } from '@ferry/oci'
import { MemoryBlobStore, MemoryMetadataStore } from '@ferry/store'
import { MemoryUpstream } from './helpers/memory-upstream.js'
import { readAll, readUntilEnd } from './helpers/streams.js'

const REGISTRY = 'harbor.example.com'

function setup(options: { upstreams?: number; orphanTimeoutMs?: number } = {}) {
  const upstreams = Array.from({ length: options.upstreams ?? 1 }, (_, index) => new MemoryUpstream(index === 0 ? 'regional' : `central${index}`))
  const blobStore = new MemoryBlobStore()
  const metadata = new MemoryMetadataStore()
  const registry = new Registry()
  const metrics = createMirrorMetrics(registry)
  let now = 1_000_000
  const announced: string[] = []
  const mirror = new Mirror(
    {
      blobStore,
      metadata,
      logger: pino({ level: 'silent' }),
      clock: { now: () => now },
      metrics,
      announcer: { announce: (digest) => announced.push(digest), withdraw: () => undefined },
    },
    { routes: [{ registry: REGISTRY, upstreams, peers: true }], tagTimeoutMs: 1000, orphanTimeoutMs: options.orphanTimeoutMs ?? 60_000 },
  )
  return { mirror, upstreams, blobStore, metadata, registry, announced, advance: (ms: number) => (now += ms) }
}

async function metric(registry: Registry, name: string, labels: Record<string, string>): Promise<number> {
  const found = (await registry.getSingleMetric(name)?.get())?.values ?? []
  return found
    .filter((value) => Object.entries(labels).every(([key, wanted]) => value.labels[key] === wanted))
    .reduce((sum, value) => sum + value.value, 0)
}

describe('Mirror: blobs', () => {
  it('fetches a cold blob once, commits and announces it, then serves it locally', async () => {
    const { mirror, upstreams, blobStore, announced } = setup()
    const content = randomBytes(300_000)
    const digest = upstreams[0]!.addBlob(content)
    const first = await mirror.blob(REGISTRY, 'team/app', digest, undefined)
    assert.equal(first.size, content.length)
    assert.equal(first.source, 'upstream:regional')
    assert.deepEqual(await readAll(first.body), content)
    await waitFor(async () => (await blobStore.stat(digest)) !== undefined)
    assert.deepEqual(announced, [digest])
    const served = upstreams[0]!.bytesServed
    const second = await mirror.blob(REGISTRY, 'other/repo', digest, undefined)
    assert.equal(second.source, 'local')
    assert.deepEqual(await readAll(second.body), content)
    assert.equal(upstreams[0]!.bytesServed, served, 'a cached blob takes no upstream bytes, in any repository')
  })

  it('shares one download among concurrent requests', async () => {
    const { mirror, upstreams } = setup()
    const content = randomBytes(1_000_000)
    const digest = upstreams[0]!.addBlob(content)
    const replies = await Promise.all(Array.from({ length: 8 }, () => mirror.blob(REGISTRY, 'team/app', digest, undefined)))
    const bodies = await Promise.all(replies.map((reply) => readAll(reply.body)))
    for (const body of bodies) assert.deepEqual(body, content)
    assert.equal(upstreams[0]!.fetches.length, 1)
    assert.equal(upstreams[0]!.bytesServed, content.length)
  })

  it('answers ranges of local and in-progress blobs', async () => {
    const { mirror, upstreams } = setup()
    const content = randomBytes(500_000)
    const digest = upstreams[0]!.addBlob(content)
    const partial = await mirror.blob(REGISTRY, 'team/app', digest, 'bytes=1000-')
    assert.deepEqual(partial.range, { start: 1000, end: content.length })
    assert.deepEqual(await readAll(partial.body), content.subarray(1000))
    const local = await mirror.blob(REGISTRY, 'team/app', digest, 'bytes=10-19')
    assert.deepEqual(await readAll(local.body), content.subarray(10, 20))
    await assert.rejects(mirror.blob(REGISTRY, 'team/app', digest, `bytes=${content.length}-`), { name: 'RangeNotSatisfiableError' })
  })

  it('resumes a broken transfer from the next upstream at the same offset', async () => {
    const { mirror, upstreams, registry } = setup({ upstreams: 2 })
    const content = randomBytes(700_000)
    const digest = upstreams[0]!.addBlob(content)
    upstreams[1]!.addBlob(content)
    upstreams[0]!.breakAfterBytes = 200_000
    const reply = await mirror.blob(REGISTRY, 'team/app', digest, undefined)
    assert.deepEqual(await readAll(reply.body), content)
    assert.deepEqual(
      upstreams[1]!.fetches.map((request) => request.offset),
      [200_000],
    )
    assert.equal(await metric(registry, 'ferry_fetched_bytes_total', { source: 'upstream:central1' }), content.length - 200_000)
  })

  it('never commits or serves whole a corrupt blob, and recovers from a healthy upstream', async () => {
    const { mirror, upstreams, blobStore, registry } = setup({ upstreams: 2 })
    const content = randomBytes(400_000)
    const digest = upstreams[0]!.addBlob(content)
    upstreams[1]!.addBlob(content)
    upstreams[0]!.corrupt = true
    const reply = await mirror.blob(REGISTRY, 'team/app', digest, undefined)
    const { bytes, error } = await readUntilEnd(reply.body)
    assert.ok(error, 'the client stream errors')
    assert.ok(bytes.length < content.length, 'the client never receives the whole corrupt blob')
    assert.equal(upstreams[0]!.corruptReports, 1)
    assert.equal(await metric(registry, 'ferry_corrupt_content_total', { source: 'upstream:regional' }), 1)
    // The download started over from the healthy upstream; a retry gets verified content.
    const retry = await mirror.blob(REGISTRY, 'team/app', digest, undefined)
    assert.deepEqual(await readAll(retry.body), content)
    assert.deepEqual(await readAll((await blobStore.open(digest))!), content)
  })

  it('completes in one response when a source that asked to be held until verified lies', async () => {
    const { mirror, upstreams, blobStore } = setup({ upstreams: 2 })
    const content = randomBytes(400_000)
    const digest = upstreams[0]!.addBlob(content)
    upstreams[1]!.addBlob(content)
    upstreams[0]!.corrupt = true
    upstreams[0]!.holdUntilVerified = true
    const reply = await mirror.blob(REGISTRY, 'team/app', digest, undefined)
    const { bytes, error } = await readUntilEnd(reply.body)
    assert.equal(error, undefined, 'nothing unverified reached the client, so the retry from the next source continues the same response')
    assert.deepEqual(bytes, content)
    assert.equal(upstreams[0]!.corruptReports, 1)
    assert.deepEqual(await readAll((await blobStore.open(digest))!), content)
  })

  it('passes nothing of a held source on before verification', async () => {
    const { mirror, upstreams } = setup()
    const content = randomBytes(600_000)
    const digest = upstreams[0]!.addBlob(content)
    upstreams[0]!.holdUntilVerified = true
    upstreams[0]!.holdLastBytes = 1
    const reply = await mirror.blob(REGISTRY, 'team/app', digest, undefined)
    let received = 0
    reply.body.on('data', (chunk: Buffer) => (received += chunk.length))
    await upstreams[0]!.waitUntilHeld()
    await waitFor(async () => (await mirror.statBlob(REGISTRY, 'team/app', digest)).size === content.length)
    assert.equal(received, 0, 'all but one byte arrived at Ferry, none went on to the client')
    upstreams[0]!.release()
    await new Promise((resolve) => reply.body.once('end', resolve))
    assert.equal(received, content.length)
  })

  it('does not let a source that lied about the size block the honest one', async () => {
    const { mirror, upstreams, blobStore } = setup({ upstreams: 2 })
    const content = randomBytes(300_000)
    const digest = upstreams[0]!.addBlob(content)
    upstreams[1]!.addBlob(content)
    upstreams[0]!.truncateTo = 1000
    const first = await mirror.blob(REGISTRY, 'team/app', digest, undefined)
    assert.equal(first.size, 1000, 'the liar answered first')
    const { error } = await readUntilEnd(first.body)
    assert.ok(error, 'a response that announced the wrong length is cut off')
    await waitFor(async () => (await blobStore.stat(digest)) !== undefined)
    assert.deepEqual(await readAll((await blobStore.open(digest))!), content, 'the honest source served the blob')
  })

  it('never ends an empty response before verification (a source claiming 0 bytes)', async () => {
    const { mirror, upstreams, blobStore } = setup()
    const digest = upstreams[0]!.addBlob(randomBytes(5000))
    upstreams[0]!.truncateTo = 0
    const reply = await mirror.blob(REGISTRY, 'team/app', digest, undefined)
    assert.equal(reply.size, 0)
    const { error } = await readUntilEnd(reply.body)
    assert.equal(error?.name, 'DigestMismatchError', 'the empty body errors instead of looking complete')
    assert.equal(await blobStore.stat(digest), undefined)
  })

  it('fails, committing nothing, when the only upstream sends corrupt bytes', async () => {
    const { mirror, upstreams, blobStore } = setup()
    const content = randomBytes(100_000)
    const digest = upstreams[0]!.addBlob(content)
    upstreams[0]!.corrupt = true
    const reply = await mirror.blob(REGISTRY, 'team/app', digest, undefined)
    const { bytes, error } = await readUntilEnd(reply.body)
    assert.equal(error?.name, 'DigestMismatchError', 'a source failure, not "not found"')
    assert.ok(bytes.length < content.length)
    assert.equal(await blobStore.stat(digest), undefined)
  })

  it('holds back the last byte until the blob is verified', async () => {
    const { mirror, upstreams } = setup()
    const content = randomBytes(600_000)
    const digest = upstreams[0]!.addBlob(content)
    upstreams[0]!.holdLastBytes = 1
    const reply = await mirror.blob(REGISTRY, 'team/app', digest, undefined)
    const received: Buffer[] = []
    let total = 0
    const allButLast = new Promise<void>((resolve) => {
      reply.body.on('data', (chunk: Buffer) => {
        received.push(chunk)
        total += chunk.length
        if (total === content.length - 1) resolve()
      })
    })
    await allButLast
    assert.equal(total, content.length - 1)
    upstreams[0]!.release()
    await new Promise((resolve) => reply.body.once('end', resolve))
    assert.deepEqual(Buffer.concat(received), content)
  })

  it('keeps downloading after the only client disconnects', async () => {
    const { mirror, upstreams, blobStore } = setup()
    const content = randomBytes(800_000)
    const digest = upstreams[0]!.addBlob(content)
    upstreams[0]!.holdLastBytes = 100_000
    const reply = await mirror.blob(REGISTRY, 'team/app', digest, undefined)
    await upstreams[0]!.waitUntilHeld()
    reply.body.destroy()
    upstreams[0]!.release()
    await waitFor(async () => (await blobStore.stat(digest)) !== undefined)
    assert.deepEqual(await readAll((await blobStore.open(digest))!), content)
  })

  it('abandons a download nobody reads after the orphan timeout', async () => {
    const { mirror, upstreams, blobStore } = setup({ orphanTimeoutMs: 20 })
    const content = randomBytes(300_000)
    const digest = upstreams[0]!.addBlob(content)
    upstreams[0]!.holdLastBytes = 1000
    const reply = await mirror.blob(REGISTRY, 'team/app', digest, undefined)
    await upstreams[0]!.waitUntilHeld()
    reply.body.destroy()
    await waitFor(async () => mirror.activeDownloads === 0)
    upstreams[0]!.release()
    assert.equal(await blobStore.stat(digest), undefined)
  })

  it('answers not found when no upstream has the blob, and refuses unmirrored registries', async () => {
    const { mirror } = setup({ upstreams: 2 })
    await assert.rejects(mirror.blob(REGISTRY, 'team/app', `sha256:${'c'.repeat(64)}`, undefined), { name: 'BlobNotFoundError' })
    await assert.rejects(mirror.blob('evil.example.com', 'team/app', `sha256:${'c'.repeat(64)}`, undefined), { name: 'NotMirroredError' })
  })

  it('answers unavailable when upstreams fail', async () => {
    const { mirror, upstreams } = setup()
    upstreams[0]!.down = true
    await assert.rejects(mirror.blob(REGISTRY, 'team/app', `sha256:${'c'.repeat(64)}`, undefined), { name: 'UpstreamUnavailableError' })
  })
})

describe('Mirror: tags and manifests', () => {
  const manifestDocument = { schemaVersion: 2, mediaType: MediaTypes.ociManifest, config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: `sha256:${'d'.repeat(64)}`, size: 2 }, layers: [] }

  it('resolves tags with the first upstream that knows them and keeps the manifest', async () => {
    const { mirror, upstreams, metadata } = setup({ upstreams: 2 })
    const digest = upstreams[1]!.addManifest('team/app', 'v1', manifestDocument, MediaTypes.ociManifest)
    const resolved = await mirror.resolveTag(REGISTRY, 'team/app', 'v1')
    assert.equal(resolved.digest, digest)
    assert.equal(resolved.source, 'upstream:central1')
    assert.equal((await metadata.getTag({ registry: REGISTRY, repository: 'team/app', tag: 'v1' }))?.digest, digest)
    const manifest = await mirror.manifest(REGISTRY, 'team/app', digest)
    assert.equal(manifest.mediaType, MediaTypes.ociManifest)
    assert.equal(manifest.bytes.toString(), JSON.stringify(manifestDocument))
    upstreams[1]!.down = true
    assert.equal((await mirror.manifest(REGISTRY, 'team/app', digest)).source, 'local')
  })

  it('serves the last-known digest when every upstream fails, and counts it', async () => {
    const { mirror, upstreams, registry } = setup()
    const digest = upstreams[0]!.addManifest('team/app', 'v1', manifestDocument, MediaTypes.ociManifest)
    await mirror.resolveTag(REGISTRY, 'team/app', 'v1')
    upstreams[0]!.down = true
    const stale = await mirror.resolveTag(REGISTRY, 'team/app', 'v1')
    assert.equal(stale.digest, digest)
    assert.equal(stale.source, 'stale')
    assert.equal(await metric(registry, 'ferry_stale_tags_total', { registry: REGISTRY }), 1)
    await assert.rejects(mirror.resolveTag(REGISTRY, 'team/app', 'never-seen'), { name: 'UpstreamUnavailableError' })
  })

  it('takes a region peer\'s last-known tag only in offline mode, when no upstream answers and there is no record here', async () => {
    const { mirror, upstreams, metadata, registry } = setup()
    upstreams[0]!.down = true
    await assert.rejects(mirror.resolveTag(REGISTRY, 'team/app', 'v9'), { name: 'UpstreamUnavailableError' })
    const digest = `sha256:${'9'.repeat(64)}`
    const peerRecord = { digest, mediaType: MediaTypes.ociManifest, size: 99, confirmedAt: 5 }
    const asked: string[] = []
    const offline = new Mirror(
      {
        blobStore: new MemoryBlobStore(),
        metadata,
        logger: pino({ level: 'silent' }),
        clock: { now: () => 10 },
        metrics: createMirrorMetrics(new Registry()),
        peerTags: { lastKnownTag: async (key) => (asked.push(key.tag), key.tag === 'v9' ? peerRecord : undefined) },
      },
      { routes: [{ registry: REGISTRY, upstreams, peers: true }], tagTimeoutMs: 1000, orphanTimeoutMs: 60_000 },
    )
    const resolved = await offline.resolveTag(REGISTRY, 'team/app', 'v9')
    assert.equal(resolved.digest, digest)
    assert.equal(resolved.source, 'peer-stale')
    assert.deepEqual(await metadata.getTag({ registry: REGISTRY, repository: 'team/app', tag: 'v9' }), peerRecord, 'kept as this node\'s record')
    await assert.rejects(offline.resolveTag(REGISTRY, 'team/app', 'unknown'), { name: 'UpstreamUnavailableError' })
    upstreams[0]!.down = false
    upstreams[0]!.addManifest('team/app', 'v10', manifestDocument, MediaTypes.ociManifest)
    await offline.resolveTag(REGISTRY, 'team/app', 'v10')
    assert.deepEqual(asked, ['v9', 'unknown'], 'peers are never asked while an upstream answers')
    void registry
  })

  it('answers not found for a tag no upstream has', async () => {
    const { mirror } = setup({ upstreams: 2 })
    await assert.rejects(mirror.resolveTag(REGISTRY, 'team/app', 'missing'), { name: 'ManifestNotFoundError' })
  })

  it('refuses a manifest that does not match its digest', async () => {
    const { mirror, upstreams, blobStore } = setup()
    const digest = upstreams[0]!.addManifest('team/app', 'v1', manifestDocument, MediaTypes.ociManifest)
    upstreams[0]!.corrupt = true
    await assert.rejects(mirror.manifest(REGISTRY, 'team/app', digest))
    assert.equal(await blobStore.stat(digest), undefined)
  })
})

async function waitFor(condition: () => Promise<boolean> | boolean): Promise<void> {
  for (let i = 0; i < 500; i += 1) {
    if (await condition()) return
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
  throw new Error('condition not reached')
}
