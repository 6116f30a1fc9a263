import { Level } from 'level'
import type { BlobRecord, MetadataStore, TagKey, TagRecord } from '@ferry/interfaces'

/**
 * Metadata in LevelDB, JSON values under prefixed keys:
 *
 *   blob!<digest>                          BlobRecord (size, media type for manifests, times)
 *   tag!<registry>!<repository>!<tag>      TagRecord (digest an upstream last confirmed, and when)
 *
 * `!` cannot occur in registry hosts, repository names, tags or digests, so keys never collide.
 */
export class LevelMetadataStore implements MetadataStore {
  private readonly db: Level<string, unknown>

  private constructor(db: Level<string, unknown>) {
    this.db = db
  }

  static async open(location: string): Promise<LevelMetadataStore> {
    const db = new Level<string, unknown>(location, { valueEncoding: 'json' })
    await db.open()
    return new LevelMetadataStore(db)
  }

  async getTag(key: TagKey): Promise<TagRecord | undefined> {
    return (await this.db.get(tagKey(key))) as TagRecord | undefined
  }

  async putTag(key: TagKey, record: TagRecord): Promise<void> {
    await this.db.put(tagKey(key), record)
  }

  async getBlob(digest: string): Promise<BlobRecord | undefined> {
    return (await this.db.get(`blob!${digest}`)) as BlobRecord | undefined
  }

  async putBlob(digest: string, record: BlobRecord): Promise<void> {
    await this.db.put(`blob!${digest}`, record)
  }

  async deleteBlob(digest: string): Promise<void> {
    await this.db.del(`blob!${digest}`)
  }

  async *listBlobs(): AsyncIterable<[string, BlobRecord]> {
    for await (const [key, value] of this.db.iterator({ gt: 'blob!', lt: 'blob"' })) {
      yield [key.slice('blob!'.length), value as BlobRecord]
    }
  }

  async close(): Promise<void> {
    await this.db.close()
  }
}

function tagKey({ registry, repository, tag }: TagKey): string {
  return `tag!${registry}!${repository}!${tag}`
}
