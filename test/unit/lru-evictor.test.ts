import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { pino } from 'pino'
import { sha256Digest } from '@ferry/oci'
import { LruEvictor, MemoryBlobStore, MemoryMetadataStore } from '@ferry/store'

describe('LruEvictor', () => {
  it('evicts least recently used blobs down to the low-water mark and reports each', async () => {
    const blobStore = new MemoryBlobStore()
    const metadata = new MemoryMetadataStore()
    const digests: string[] = []
    for (const [index, lastAccess] of [50, 10, 40, 20, 30].entries()) {
      const bytes = Buffer.alloc(100, index)
      const digest = sha256Digest(bytes)
      const writer = await blobStore.ingest(digest)
      await writer.write(bytes)
      await writer.commit()
      await metadata.putBlob(digest, { size: 100, storedAt: 0, lastAccess })
      digests.push(digest)
    }
    const evicted: string[] = []
    const evictor = new LruEvictor(
      { blobStore, metadata, logger: pino({ level: 'silent' }), onEvicted: (digest) => evicted.push(digest) },
      { maxBytes: 400, lowWaterRatio: 0.75 },
    )
    assert.equal(await evictor.run(), 200)
    assert.deepEqual(evicted, [digests[1], digests[3]], 'the two least recently used, oldest first')
    assert.equal(await blobStore.usage(), 300)
    assert.equal(await metadata.getBlob(digests[1]!), undefined)
    assert.equal(await evictor.run(), 0, 'under quota: nothing more to do')
  })

  it('refuses a nonsensical quota', () => {
    const components = { blobStore: new MemoryBlobStore(), metadata: new MemoryMetadataStore(), logger: pino({ level: 'silent' }) }
    assert.throws(() => new LruEvictor(components, { maxBytes: 0, lowWaterRatio: 0.9 }), RangeError)
    assert.throws(() => new LruEvictor(components, { maxBytes: 10, lowWaterRatio: 1.5 }), RangeError)
  })
})
