import assert from 'node:assert/strict'
import { mkdtemp, readdir, rm, writeFile, mkdir } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import type { BlobStore, MetadataStore } from '@ferry/interfaces'
import { sha256Digest } from '@ferry/oci'
import { DiskBlobStore, LevelMetadataStore, MemoryBlobStore, MemoryMetadataStore } from '@ferry/store'
import { blobStoreConformance, metadataStoreConformance } from '@ferry/store/conformance'

const dirs = new WeakMap<object, string>()

blobStoreConformance('memory', { create: async () => new MemoryBlobStore() })
blobStoreConformance('disk', {
  async create() {
    const dir = await mkdtemp(join(tmpdir(), 'ferry-store-'))
    const store: BlobStore = await DiskBlobStore.open(dir)
    dirs.set(store, dir)
    return store
  },
  async destroy(store) {
    await rm(dirs.get(store)!, { recursive: true, force: true })
  },
})
metadataStoreConformance('memory', { create: async () => new MemoryMetadataStore() })
metadataStoreConformance('level', {
  async create() {
    const dir = await mkdtemp(join(tmpdir(), 'ferry-meta-'))
    const store: MetadataStore = await LevelMetadataStore.open(dir)
    dirs.set(store, dir)
    return store
  },
  async destroy(store) {
    await store.close()
    await rm(dirs.get(store)!, { recursive: true, force: true })
  },
})

describe('DiskBlobStore on disk', () => {
  it('lays blobs out by digest and removes leftovers of a crash at start', async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'ferry-store-'))
    t.after(() => rm(dir, { recursive: true, force: true }))
    const store = await DiskBlobStore.open(dir)
    const content = Buffer.from('layout')
    const digest = sha256Digest(content)
    const writer = await store.ingest(digest)
    await writer.write(content)
    await writer.commit()
    const hex = digest.slice('sha256:'.length)
    assert.deepEqual(await readdir(join(dir, 'blobs', 'sha256', hex.slice(0, 2))), [hex])
    // An interrupted ingest leaves a partial file; the next start removes it but keeps committed blobs.
    const interrupted = await store.ingest(sha256Digest('other'))
    await interrupted.write(Buffer.from('oth'))
    await mkdir(join(dir, 'ingest'), { recursive: true })
    await writeFile(join(dir, 'ingest', 'stray.partial'), 'junk')
    const reopened = await DiskBlobStore.open(dir)
    assert.deepEqual(await readdir(join(dir, 'ingest')), [])
    assert.deepEqual(await reopened.stat(digest), { digest, size: content.length })
  })

  it('persists metadata across reopen', async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'ferry-meta-'))
    t.after(() => rm(dir, { recursive: true, force: true }))
    const key = { registry: 'r.example', repository: 'a/b', tag: 'v1' }
    const first = await LevelMetadataStore.open(dir)
    await first.putTag(key, { digest: sha256Digest('x'), mediaType: 'm', size: 1, confirmedAt: 7 })
    await first.close()
    const second = await LevelMetadataStore.open(dir)
    assert.equal((await second.getTag(key))?.confirmedAt, 7)
    await second.close()
  })
})
