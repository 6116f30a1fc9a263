import type { BlobStore, ContentAnnouncer, Logger } from '@ferry/interfaces'
import type { DhtContentRouter } from './dht-router.js'
import type { RegionMetrics } from './metrics.js'

export interface DhtAnnouncerComponents {
  logger: Logger
  metrics: RegionMetrics
  router: DhtContentRouter
  blobStore: BlobStore
}

export interface DhtAnnouncerInit {
  /** Provides running at once: kad-dht silently drops bursts beyond its per-connection stream limits. */
  concurrency: number
  /** Bound of one provide (closest-peer query plus ADD_PROVIDER messages). */
  provideTimeoutMs: number
}

/**
 * Announces this node's blobs in the region's DHT: on commit (`announce`), for every stored blob at
 * start and on a schedule shorter than the records' lifetime (`provideAll`), and no more once a
 * blob is evicted (`withdraw`: its records elsewhere then expire). Failures are logged and counted,
 * never thrown: a blob that was not announced is fetched from upstream by the others.
 */
export class DhtAnnouncer implements ContentAnnouncer {
  private readonly components: DhtAnnouncerComponents
  private readonly init: DhtAnnouncerInit
  /** Digests this node provides, in the order they were announced. */
  private readonly providing = new Set<string>()
  private readonly pending: string[] = []
  private readonly queued = new Set<string>()
  private readonly idleWaiters: Array<() => void> = []
  private readonly stopping = new AbortController()
  private running = 0
  private sweep: Promise<void> | undefined
  private sweepAgain = false

  constructor(components: DhtAnnouncerComponents, init: DhtAnnouncerInit) {
    this.components = components
    this.init = init
  }

  get size(): number {
    return this.providing.size
  }

  has(digest: string): boolean {
    return this.providing.has(digest)
  }

  announce(digest: string): void {
    if (this.stopping.signal.aborted) return
    this.providing.add(digest)
    this.enqueue(digest)
  }

  withdraw(digest: string): void {
    this.providing.delete(digest)
    this.components.router.withdraw(digest).catch((error: unknown) => {
      this.components.logger.warn({ err: error, digest }, 'could not withdraw blob from the DHT')
    })
  }

  /**
   * Re-announces every blob the store holds and forgets digests it no longer holds. Resolves when
   * every provide has finished (or failed); concurrent calls share one sweep.
   */
  provideAll(): Promise<void> {
    this.sweep ??= this.sweepStore().finally(() => {
      this.sweep = undefined
      if (this.sweepAgain) {
        this.sweepAgain = false
        void this.provideAll()
      }
    })
    return this.sweep
  }

  /**
   * A sweep as soon as possible: now, or after the one running (whose provides may have gone to
   * too few peers, e.g. before the routing table had any).
   */
  requestSweep(): void {
    if (this.sweep) this.sweepAgain = true
    else void this.provideAll()
  }

  /** Resolves when nothing is queued or running. */
  idle(): Promise<void> {
    if (this.running === 0 && this.pending.length === 0) return Promise.resolve()
    return new Promise((resolve) => this.idleWaiters.push(resolve))
  }

  stop(): void {
    this.stopping.abort()
    this.sweepAgain = false
    this.pending.length = 0
    this.queued.clear()
    if (this.running === 0) this.notifyIdle()
  }

  private async sweepStore(): Promise<void> {
    const { blobStore, logger } = this.components
    const listed = new Set<string>()
    const before = new Set(this.providing)
    try {
      for await (const blob of blobStore.list()) {
        if (this.stopping.signal.aborted) return
        listed.add(blob.digest)
        this.providing.add(blob.digest)
        this.enqueue(blob.digest)
      }
    } catch (error) {
      logger.warn({ err: error }, 'could not list the blob store to re-announce it')
      return
    }
    // Announced before the sweep yet no longer stored: evicted without a withdraw.
    for (const digest of before) {
      if (!listed.has(digest) && !(await blobStore.stat(digest))) this.withdraw(digest)
    }
    await this.idle()
    logger.debug({ blobs: listed.size }, 're-announced stored blobs')
  }

  private enqueue(digest: string): void {
    if (this.queued.has(digest)) return
    this.queued.add(digest)
    this.pending.push(digest)
    this.drain()
  }

  private drain(): void {
    while (this.running < this.init.concurrency && this.pending.length > 0) {
      const digest = this.pending.shift() as string
      this.queued.delete(digest)
      if (!this.providing.has(digest)) continue
      this.running += 1
      this.provide(digest).finally(() => {
        this.running -= 1
        // Withdrawn while its provide ran: undo the local record that provide wrote.
        if (!this.providing.has(digest)) this.withdraw(digest)
        this.drain()
      })
    }
    if (this.running === 0 && this.pending.length === 0) this.notifyIdle()
  }

  private async provide(digest: string): Promise<void> {
    const { logger, metrics, router } = this.components
    try {
      const signal = AbortSignal.any([this.stopping.signal, AbortSignal.timeout(this.init.provideTimeoutMs)])
      await router.provide(digest, { signal })
      metrics.provides.inc({ result: 'ok' })
    } catch (error) {
      if (this.stopping.signal.aborted) return
      metrics.provides.inc({ result: 'error' })
      logger.warn({ err: error, digest }, 'could not announce blob in the DHT')
    }
  }

  private notifyIdle(): void {
    for (const resolve of this.idleWaiters.splice(0)) resolve()
  }
}
