import type { Clock } from '@ferry/interfaces'

export interface IssuedToken {
  token: string
  /** Epoch milliseconds after which the token is not used any more. */
  usableUntil: number
}

/** Entries kept before expired ones are swept; one per (realm, service, scope), i.e. per repository. */
const SWEEP_ABOVE = 1024
/** Beyond this the oldest entries go even if still valid: they are refetched when needed. */
const MAX_ENTRIES = 4096

/**
 * Bearer tokens by (realm, service, scope), reused until `usableUntil` by the injected clock.
 * Concurrent requests for a missing token share one fetch: an image pull starts all its layers
 * at once, and each should not ask the realm on its own.
 */
export class TokenCache {
  private readonly tokens = new Map<string, IssuedToken>()
  private readonly pending = new Map<string, Promise<IssuedToken>>()

  constructor(private readonly clock: Clock) {}

  static key(realm: URL, service: string | undefined, scopes: readonly string[]): string {
    return JSON.stringify([realm.href, service ?? '', [...scopes].sort()])
  }

  get(key: string): string | undefined {
    const entry = this.tokens.get(key)
    if (entry === undefined) return undefined
    if (this.clock.now() >= entry.usableUntil) {
      this.tokens.delete(key)
      return undefined
    }
    return entry.token
  }

  /** The cached token, or the result of a fetch shared with every concurrent caller for `key`. */
  async getOrFetch(key: string, fetch: () => Promise<IssuedToken>): Promise<string> {
    const cached = this.get(key)
    if (cached !== undefined) return cached
    let pending = this.pending.get(key)
    if (pending === undefined) {
      pending = fetch().then(
        (issued) => {
          this.pending.delete(key)
          this.store(key, issued)
          return issued
        },
        (error: unknown) => {
          this.pending.delete(key)
          throw error
        },
      )
      this.pending.set(key, pending)
    }
    return (await pending).token
  }

  /** Forgets a token an upstream refused, under whichever key it was cached. */
  forget(token: string): void {
    for (const [key, entry] of this.tokens) {
      if (entry.token === token) this.tokens.delete(key)
    }
  }

  private store(key: string, issued: IssuedToken): void {
    if (this.tokens.size >= SWEEP_ABOVE) {
      const now = this.clock.now()
      for (const [entryKey, entry] of this.tokens) {
        if (now >= entry.usableUntil) this.tokens.delete(entryKey)
      }
    }
    for (const oldest of this.tokens.keys()) {
      if (this.tokens.size < MAX_ENTRIES) break
      this.tokens.delete(oldest)
    }
    this.tokens.delete(key)
    this.tokens.set(key, issued)
  }
}
