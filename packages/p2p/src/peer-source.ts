import { performance } from 'node:perf_hooks'
import type { BlobSource, Clock, ContentRouter, FetchedContent, FetchRequest, Logger, ProviderRecord } from '@ferry/interfaces'
import { AbortedError, type FerryError, parseDigest, UpstreamUnavailableError } from '@ferry/oci'
import type { RegionMetrics } from './metrics.js'
import { NegativeCache } from './negative-cache.js'
import type { PenaltyBox } from './penalties.js'
import { peerErrorKind, type PeerErrorKind, type TransferClient } from './transfer-client.js'

export interface PeerBlobSourceComponents {
  logger: Logger
  clock: Clock
  metrics: RegionMetrics
  router: ContentRouter
  transfers: TransferClient
  penalties: PenaltyBox
}

export interface PeerBlobSourceInit {
  /** This node's peer id: never a provider to itself. */
  self: string
  lookupTimeoutMs: number
  maxProviders: number
  negativeCacheMs: number
}

/** How long to remember which peers served a digest, so that a later `reportCorrupt` can name them. */
const CONTRIBUTOR_MEMORY_MS = 60 * 60 * 1000
const MAX_REMEMBERED_DIGESTS = 4096
/** Transfer endpoints of one provider tried before moving on to the next provider. */
const MAX_ENDPOINTS_PER_PROVIDER = 3

/**
 * Content from region peers: look the digest up in the DHT (bounded by `lookupTimeoutMs` and the
 * request's signal), skip this node and penalised peers, and ask at most `maxProviders` providers
 * in the order the look-up finds them, from `request.offset`.
 *
 * - undefined: nobody provides the digest (cached for `negativeCacheMs`), every provider was
 *   skipped, or every one asked no longer had it (a stale record is not the peer's fault).
 * - throws: providers were asked and failed (or were busy), so the caller moves to its next source.
 * - A provider that fails to connect, times out, answers an error, breaks its body mid-transfer or
 *   is reported corrupt is penalised for `penaltyMs` and skipped meanwhile.
 *
 * The body is returned as received: the caller verifies the digest of the whole blob.
 */
export class PeerBlobSource implements BlobSource {
  readonly name = 'peer'
  private readonly components: PeerBlobSourceComponents
  private readonly init: PeerBlobSourceInit
  private readonly negative: NegativeCache
  /** digest → peers whose bytes went into the caller's copy of it, with when. */
  private readonly contributors = new Map<string, Map<string, number>>()

  constructor(components: PeerBlobSourceComponents, init: PeerBlobSourceInit) {
    this.components = components
    this.init = init
    this.negative = new NegativeCache(components.clock, init.negativeCacheMs)
  }

  async fetch(request: FetchRequest): Promise<FetchedContent | undefined> {
    const { metrics } = this.components
    const digest = parseDigest(request.digest).digest
    if (request.signal.aborted) throw this.aborted(digest)
    if (this.negative.has(digest)) {
      metrics.fetches.inc({ result: 'negative_cache' })
      return undefined
    }
    const lookup = this.lookUp(digest, request.signal)
    const failures: Error[] = []
    let asked = 0
    let busy = 0
    try {
      for (let provider = await lookup.next(); provider; provider = await lookup.next()) {
        asked += 1
        const outcome = await this.ask(provider.peerId, provider.addresses, digest, request)
        if (outcome instanceof Error) failures.push(outcome)
        else if (outcome === 'busy') busy += 1
        else if (outcome !== 'not_found') {
          metrics.fetches.inc({ result: 'ok' })
          return outcome
        }
        if (asked >= this.init.maxProviders) break
      }
    } finally {
      await lookup.close()
    }
    if (request.signal.aborted) throw this.aborted(digest)
    if (lookup.error) failures.push(lookup.error)
    if (lookup.found === 0 && failures.length === 0) {
      this.negative.add(digest)
      metrics.fetches.inc({ result: 'not_found' })
      return undefined
    }
    if (failures.length === 0 && busy === 0) {
      metrics.fetches.inc({ result: 'not_found' })
      return undefined
    }
    metrics.fetches.inc({ result: 'failed' })
    throw new UpstreamUnavailableError(`no region peer could serve ${digest}`, {
      cause: new AggregateError(failures),
      detail: { digest, providers: lookup.found, asked, busy },
    })
  }

  /**
   * Runs the DHT look-up in the background for at most `lookupTimeoutMs`, queueing the usable
   * providers it finds (not this node, not penalised, with a transfer endpoint), so that providers
   * found early are still tried after the look-up's deadline while earlier ones are being asked.
   */
  private lookUp(digest: string, signal: AbortSignal) {
    const { logger, metrics, penalties, router } = this.components
    const { self, lookupTimeoutMs, maxProviders } = this.init
    const stop = new AbortController()
    const lookupSignal = AbortSignal.any([signal, stop.signal, AbortSignal.timeout(lookupTimeoutMs)])
    const started = performance.now()
    const seen = new Set<string>()
    const queue: ProviderRecord[] = []
    let usable = 0
    let done = false
    let error: Error | undefined
    let wake: (() => void) | undefined
    const observe = (result: string) => metrics.lookupDuration.observe({ result }, (performance.now() - started) / 1000)
    const running = (async () => {
      try {
        for await (const provider of router.findProviders(digest, { signal: lookupSignal })) {
          if (seen.has(provider.peerId)) continue
          seen.add(provider.peerId)
          if (provider.peerId === self || provider.addresses.length === 0 || penalties.isPenalised(provider.peerId)) continue
          if (usable === 0) observe('found')
          usable += 1
          queue.push(provider)
          wake?.()
          if (usable >= maxProviders) break
        }
      } catch (failure) {
        if (!signal.aborted) {
          logger.warn({ err: failure, digest }, 'DHT look-up failed')
          error = failure as Error
        }
      } finally {
        done = true
        if (usable === 0) observe(seen.size > 0 ? 'unusable' : 'not_found')
        metrics.providersFound.observe(seen.size)
        wake?.()
      }
    })()
    return {
      get found() {
        return seen.size
      },
      get error() {
        return error
      },
      /** The next provider to ask, or undefined once the look-up is over and every one was handed out. */
      async next(): Promise<ProviderRecord | undefined> {
        while (queue.length === 0 && !done) await new Promise<void>((resolve) => (wake = resolve))
        return queue.shift()
      },
      async close(): Promise<void> {
        stop.abort()
        await running
      },
    }
  }

  /**
   * Asks one provider, trying its next endpoint only when an address is unreachable. A provider
   * that fails is penalised and its error returned.
   */
  private async ask(
    peerId: string,
    addresses: string[],
    digest: string,
    request: FetchRequest,
  ): Promise<FetchedContent | 'not_found' | 'busy' | Error> {
    const { logger, metrics, transfers } = this.components
    let failure: Error | undefined
    for (const baseUrl of addresses.slice(0, MAX_ENDPOINTS_PER_PROVIDER)) {
      try {
        const result = await transfers.fetch(peerId, baseUrl, digest, request.offset, request.signal)
        if (result.outcome !== 'ok') return result.outcome
        logger.debug({ digest, peer: peerId, offset: request.offset, size: result.content.size }, 'fetching from region peer')
        return this.watch(peerId, digest, result.content, request.signal)
      } catch (error) {
        if (request.signal.aborted) throw this.aborted(digest, error)
        const kind = peerErrorKind(error)
        failure = error as Error
        logger.warn({ err: error, digest, peer: peerId, url: baseUrl, kind }, 'region peer could not serve content')
        metrics.peerErrors.inc({ kind })
        // An unreachable address may be one of several; any other failure is the peer's own.
        if (kind !== 'connect') break
      }
    }
    this.components.penalties.penalise(peerId)
    return failure ?? new UpstreamUnavailableError(`peer ${peerId} has no transfer endpoint`)
  }

  /** The content failed verification: every peer that contributed bytes to it is penalised. */
  reportCorrupt(request: FetchRequest): void {
    const peers = this.contributors.get(request.digest)
    if (!peers) return
    this.contributors.delete(request.digest)
    for (const peerId of peers.keys()) {
      this.components.logger.warn({ digest: request.digest, peer: peerId }, 'region peer served content that failed verification')
      this.penalise(peerId, 'corrupt')
    }
  }

  /** Remembers who served the bytes, and penalises the peer if its body breaks before the end. */
  private watch(peerId: string, digest: string, content: FetchedContent, signal: AbortSignal): FetchedContent {
    this.remember(peerId, digest)
    content.body.once('error', (error) => {
      // The caller gave up (its signal, or it destroyed the body): not the peer's doing.
      if (signal.aborted || !isTransportFailure(error)) return
      const kind = peerErrorKind(error) === 'timeout' ? 'timeout' : 'stream'
      this.components.logger.warn({ err: error, digest, peer: peerId, kind }, 'transfer from region peer broke')
      this.penalise(peerId, kind)
    })
    return content
  }

  private penalise(peerId: string, kind: PeerErrorKind | undefined): void {
    if (kind) this.components.metrics.peerErrors.inc({ kind })
    this.components.penalties.penalise(peerId)
  }

  private remember(peerId: string, digest: string): void {
    const now = this.components.clock.now()
    const peers = this.contributors.get(digest) ?? new Map<string, number>()
    peers.set(peerId, now)
    // Re-inserted last, so that the Map's first entries are the least recently served.
    this.contributors.delete(digest)
    this.contributors.set(digest, peers)
    for (const [known, served] of this.contributors) {
      const latest = Math.max(...served.values())
      if (this.contributors.size <= MAX_REMEMBERED_DIGESTS && latest > now - CONTRIBUTOR_MEMORY_MS) break
      this.contributors.delete(known)
    }
  }

  private aborted(digest: string, cause?: unknown): FerryError {
    return new AbortedError(`fetch of ${digest} from region peers was aborted`, cause === undefined ? { detail: { digest } } : { cause, detail: { digest } })
  }
}

/**
 * Whether a body error came from the connection (reset, truncated, stalled) rather than from the
 * reader: undici reports a reader's `destroy()` as UND_ERR_ABORTED, and a reader's own error
 * passed to `destroy(error)` carries no transport code.
 */
function isTransportFailure(error: unknown): boolean {
  const code = typeof error === 'object' && error !== null ? String((error as { code?: unknown }).code ?? '') : ''
  if (code === 'UND_ERR_ABORTED') return false
  return code.startsWith('UND_ERR_') || code.startsWith('ERR_SSL') || code.startsWith('ERR_TLS') || /^E[A-Z]+$/.test(code)
}
