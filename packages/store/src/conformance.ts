/**
 * Conformance suites every BlobStore and MetadataStore implementation runs (memory and real alike),
 * so that the memory implementations used in unit tests behave like the ones in production.
 */
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { describe, it } from 'node:test'
import type { Readable } from 'node:stream'
import type { BlobStore, MetadataStore } from '@ferry/interfaces'

function digestOf(bytes: Buffer): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = []
  for await (const chunk of stream) chunks.push(Buffer.from(chunk as Uint8Array))
  return Buffer.concat(chunks)
}

export interface StoreFactory<T> {
  create(): Promise<T>
  destroy?(store: T): Promise<void>
}

export function blobStoreConformance(name: string, factory: StoreFactory<BlobStore>): void {
  describe(`BlobStore conformance: ${name}`, () => {
    const content = Buffer.from('ferry conformance content '.repeat(1000))
    const digest = digestOf(content)

    async function withStore(body: (store: BlobStore) => Promise<void>) {
      const store = await factory.create()
      try {
        await body(store)
      } finally {
        await factory.destroy?.(store)
      }
    }

    async function put(store: BlobStore, bytes: Buffer) {
      const writer = await store.ingest(digestOf(bytes), bytes.byteLength)
      await writer.write(bytes.subarray(0, 1000))
      await writer.write(bytes.subarray(1000))
      return writer.commit()
    }

    it('commits verified content and reads it back whole and by range', () =>
      withStore(async (store) => {
        assert.equal(await store.stat(digest), undefined)
        assert.equal(await store.open(digest), undefined)
        const info = await put(store, content)
        assert.deepEqual(info, { digest, size: content.byteLength })
        assert.deepEqual(await store.stat(digest), { digest, size: content.byteLength })
        assert.deepEqual(await readAll((await store.open(digest))!), content)
        assert.deepEqual(await readAll((await store.open(digest, { start: 10, end: 5000 }))!), content.subarray(10, 5000))
        assert.deepEqual(await readAll((await store.open(digest, { start: 7, end: 7 }))!), Buffer.alloc(0))
      }))

    it('keeps nothing visible before commit and exposes written bytes to followers', () =>
      withStore(async (store) => {
        const writer = await store.ingest(digest, content.byteLength)
        await writer.write(content.subarray(0, 2000))
        assert.equal(writer.written, 2000)
        assert.equal(await store.stat(digest), undefined)
        const reader = await writer.openReader()
        assert.deepEqual(await reader.read(500, 1500), content.subarray(500, 2000))
        await assert.rejects(reader.read(0, 2001), RangeError)
        await writer.write(content.subarray(2000))
        writer.verify()
        await assert.rejects(writer.write(content), 'nothing can be written after verification')
        assert.equal(await store.stat(digest), undefined, 'verified is not yet visible')
        await writer.commit()
        assert.deepEqual(await reader.read(content.length - 10, 10), content.subarray(content.length - 10), 'a reader outlives the commit')
        await reader.close()
        const late = await writer.openReader()
        assert.deepEqual(await late.read(0, 10), content.subarray(0, 10))
        await late.close()
      }))

    it('opens readers at any moment of a commit', () =>
      withStore(async (store) => {
        const writer = await store.ingest(digest, content.length)
        await writer.write(content)
        writer.verify()
        // A follower may arrive while the commit moves the content into place.
        let committed = false
        const commit = writer.commit().then(() => {
          committed = true
        })
        do {
          const reader = await writer.openReader()
          assert.deepEqual(await reader.read(0, content.length), content)
          await reader.close()
        } while (!committed)
        await commit
      }))

    it('refuses content that does not match its digest and keeps nothing', () =>
      withStore(async (store) => {
        const writer = await store.ingest(digest)
        const corrupt = Buffer.from(content)
        corrupt[100] = corrupt[100]! ^ 0xff
        await writer.write(corrupt)
        assert.throws(() => writer.verify(), { name: 'DigestMismatchError', code: 'ERR_DIGEST_MISMATCH' })
        await writer.abort()
        const again = await store.ingest(digest)
        await again.write(corrupt)
        await assert.rejects(again.commit(), { name: 'DigestMismatchError', code: 'ERR_DIGEST_MISMATCH' })
        assert.equal(await store.stat(digest), undefined)
        await writer.abort()
      }))

    it('refuses content longer or shorter than the expected size', () =>
      withStore(async (store) => {
        const long = await store.ingest(digest, 10)
        await assert.rejects(long.write(content), { name: 'SizeMismatchError' })
        await long.abort()
        const short = await store.ingest(digest, content.byteLength + 1)
        await short.write(content)
        await assert.rejects(short.commit(), { name: 'SizeMismatchError' })
        assert.equal(await store.stat(digest), undefined)
      }))

    it('discards aborted writes', () =>
      withStore(async (store) => {
        const writer = await store.ingest(digest)
        await writer.write(content)
        await writer.abort()
        await writer.abort()
        assert.equal(await store.stat(digest), undefined)
        await assert.rejects(writer.write(content))
      }))

    it('lets concurrent ingests of one digest both commit the same content', () =>
      withStore(async (store) => {
        const [first, second] = await Promise.all([store.ingest(digest), store.ingest(digest)])
        await first.write(content)
        await second.write(content)
        await Promise.all([first.commit(), second.commit()])
        assert.deepEqual(await readAll((await store.open(digest))!), content)
      }))

    it('lists, measures and deletes content', () =>
      withStore(async (store) => {
        const other = Buffer.from('another blob')
        await put(store, content)
        const writer = await store.ingest(digestOf(other))
        await writer.write(other)
        await writer.commit()
        const listed = []
        for await (const info of store.list()) listed.push(info)
        assert.deepEqual(
          listed.sort((a, b) => (a.digest < b.digest ? -1 : 1)),
          [
            { digest, size: content.byteLength },
            { digest: digestOf(other), size: other.byteLength },
          ].sort((a, b) => (a.digest < b.digest ? -1 : 1)),
        )
        assert.equal(await store.usage(), content.byteLength + other.byteLength)
        assert.equal(await store.delete(digest), true)
        assert.equal(await store.delete(digest), false)
        assert.equal(await store.stat(digest), undefined)
        assert.equal(await store.usage(), other.byteLength)
      }))

    it('keeps serving a stream opened before the blob was deleted', () =>
      withStore(async (store) => {
        await put(store, content)
        const stream = (await store.open(digest))!
        await store.delete(digest)
        assert.deepEqual(await readAll(stream), content)
      }))

    it('rejects malformed digests', () =>
      withStore(async (store) => {
        await assert.rejects(store.stat('sha256:xyz'), { code: 'ERR_DIGEST_INVALID' })
        await assert.rejects(store.ingest('md5:abcd'), { code: 'ERR_DIGEST_UNSUPPORTED' })
      }))
  })
}

export function metadataStoreConformance(name: string, factory: StoreFactory<MetadataStore>): void {
  describe(`MetadataStore conformance: ${name}`, () => {
    async function withStore(body: (store: MetadataStore) => Promise<void>) {
      const store = await factory.create()
      try {
        await body(store)
      } finally {
        await factory.destroy?.(store)
      }
    }
    const digest = `sha256:${'a'.repeat(64)}`
    const key = { registry: 'harbor.example.com', repository: 'team/app', tag: 'v1' }

    it('stores and returns tag records per registry, repository and tag', () =>
      withStore(async (store) => {
        assert.equal(await store.getTag(key), undefined)
        const record = { digest, mediaType: 'application/vnd.oci.image.manifest.v1+json', size: 123, confirmedAt: 1000 }
        await store.putTag(key, record)
        assert.deepEqual(await store.getTag(key), record)
        assert.equal(await store.getTag({ ...key, registry: 'docker.io' }), undefined)
        assert.equal(await store.getTag({ ...key, repository: 'team/app2' }), undefined)
        assert.equal(await store.getTag({ ...key, tag: 'v2' }), undefined)
        await store.putTag(key, { ...record, confirmedAt: 2000 })
        assert.equal((await store.getTag(key))?.confirmedAt, 2000)
      }))

    it('stores, lists and deletes blob records', () =>
      withStore(async (store) => {
        const other = `sha256:${'b'.repeat(64)}`
        await store.putBlob(other, { size: 2, storedAt: 1, lastAccess: 1 })
        await store.putBlob(digest, { size: 1, mediaType: 'application/vnd.oci.image.index.v1+json', storedAt: 1, lastAccess: 5 })
        assert.deepEqual(await store.getBlob(digest), {
          size: 1,
          mediaType: 'application/vnd.oci.image.index.v1+json',
          storedAt: 1,
          lastAccess: 5,
        })
        const listed = []
        for await (const entry of store.listBlobs()) listed.push(entry[0])
        assert.deepEqual(listed, [digest, other])
        await store.deleteBlob(digest)
        assert.equal(await store.getBlob(digest), undefined)
      }))

    it('never lists tag records as blobs', () =>
      withStore(async (store) => {
        await store.putTag(key, { digest, mediaType: 'x', size: 1, confirmedAt: 1 })
        const listed = []
        for await (const entry of store.listBlobs()) listed.push(entry)
        assert.deepEqual(listed, [])
      }))
  })
}
