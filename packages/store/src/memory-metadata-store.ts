import type { BlobRecord, MetadataStore, TagKey, TagRecord } from '@ferry/interfaces'

export class MemoryMetadataStore implements MetadataStore {
  private readonly tags = new Map<string, TagRecord>()
  private readonly blobs = new Map<string, BlobRecord>()

  async getTag(key: TagKey): Promise<TagRecord | undefined> {
    const record = this.tags.get(tagKey(key))
    return record ? { ...record } : undefined
  }

  async putTag(key: TagKey, record: TagRecord): Promise<void> {
    this.tags.set(tagKey(key), { ...record })
  }

  async getBlob(digest: string): Promise<BlobRecord | undefined> {
    const record = this.blobs.get(digest)
    return record ? { ...record } : undefined
  }

  async putBlob(digest: string, record: BlobRecord): Promise<void> {
    this.blobs.set(digest, { ...record })
  }

  async deleteBlob(digest: string): Promise<void> {
    this.blobs.delete(digest)
  }

  async *listBlobs(): AsyncIterable<[string, BlobRecord]> {
    for (const [digest, record] of [...this.blobs].sort(([a], [b]) => (a < b ? -1 : 1))) yield [digest, { ...record }]
  }

  async close(): Promise<void> {}
}

function tagKey({ registry, repository, tag }: TagKey): string {
  return `${registry}!${repository}!${tag}`
}
