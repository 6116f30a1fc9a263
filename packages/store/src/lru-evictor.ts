import type { BlobStore, Logger, MetadataStore } from '@ferry/interfaces'

export interface LruEvictorComponents {
  blobStore: BlobStore
  metadata: MetadataStore
  logger: Logger
  /** Told about every evicted blob, e.g. to stop announcing it to the region. */
  onEvicted?: (digest: string) => void
}

export interface LruEvictorInit {
  /** Evict when committed content exceeds this many bytes. */
  maxBytes: number
  /** Evict down to this share of maxBytes, so that eviction does not run on every commit. */
  lowWaterRatio: number
}

/**
 * Keeps the store under its quota by deleting the least recently used blobs (by the metadata's
 * `lastAccess`; blobs without a record count as never used). Deleting never breaks a response in
 * flight: readers hold an open descriptor of the file.
 */
export class LruEvictor {
  private readonly components: LruEvictorComponents
  private readonly init: LruEvictorInit
  private running: Promise<number> | undefined

  constructor(components: LruEvictorComponents, init: LruEvictorInit) {
    if (!(init.maxBytes > 0)) throw new RangeError('maxBytes must be positive')
    if (!(init.lowWaterRatio > 0 && init.lowWaterRatio <= 1)) throw new RangeError('lowWaterRatio must be in (0, 1]')
    this.components = components
    this.init = init
  }

  /** Evicts if over quota; concurrent calls share one run. Resolves with the bytes freed. */
  run(): Promise<number> {
    this.running ??= this.evict().finally(() => {
      this.running = undefined
    })
    return this.running
  }

  private async evict(): Promise<number> {
    const { blobStore, metadata, logger, onEvicted } = this.components
    const blobs: Array<{ digest: string; size: number; lastAccess: number }> = []
    let usage = 0
    for await (const info of blobStore.list()) {
      usage += info.size
      blobs.push({ digest: info.digest, size: info.size, lastAccess: 0 })
    }
    if (usage <= this.init.maxBytes) return 0
    const target = this.init.maxBytes * this.init.lowWaterRatio
    for (const blob of blobs) blob.lastAccess = (await metadata.getBlob(blob.digest))?.lastAccess ?? 0
    blobs.sort((a, b) => a.lastAccess - b.lastAccess)
    let freed = 0
    for (const blob of blobs) {
      if (usage - freed <= target) break
      if (await blobStore.delete(blob.digest)) {
        freed += blob.size
        await metadata.deleteBlob(blob.digest)
        onEvicted?.(blob.digest)
        logger.info({ digest: blob.digest, size: blob.size, lastAccess: blob.lastAccess }, 'evicted')
      }
    }
    logger.info({ freed, usage: usage - freed, maxBytes: this.init.maxBytes }, 'store over quota: evicted least recently used blobs')
    return freed
  }
}
