import type { Clock } from '@ferry/interfaces'

/** Digests looked up recently with nothing found, so repeated misses skip the DHT for a while. */
export class NegativeCache {
  private readonly until = new Map<string, number>()
  private readonly clock: Clock
  private readonly ttlMs: number
  private readonly maxEntries: number

  constructor(clock: Clock, ttlMs: number, maxEntries = 10_000) {
    this.clock = clock
    this.ttlMs = ttlMs
    this.maxEntries = maxEntries
  }

  add(digest: string): void {
    if (this.ttlMs <= 0) return
    this.until.delete(digest)
    this.until.set(digest, this.clock.now() + this.ttlMs)
    // Map order is insertion order: the first entries are the oldest.
    for (const [oldest] of this.until) {
      if (this.until.size <= this.maxEntries) break
      this.until.delete(oldest)
    }
  }

  has(digest: string): boolean {
    const until = this.until.get(digest)
    if (until === undefined) return false
    if (until > this.clock.now()) return true
    this.until.delete(digest)
    return false
  }

  delete(digest: string): void {
    this.until.delete(digest)
  }
}
