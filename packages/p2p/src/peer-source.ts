import { performance } from 'node:perf_hooks'
import type { BlobSource, Clock, ContentRouter, FetchedContent, FetchRequest, Logger, ProviderRecord } from '@ferry/interfaces'
import { AbortedError, type FerryError, parseDigest, UpstreamUnavailableError } from '@ferry/oci'
import type { RegionMetrics } from './metrics.js'
import { NegativeCache } from './negative-cache.js'
import type { PenaltyBox } from './penalties.js'
import { rendezvousOwner } from './rendezvous.js'
import { peerErrorKind, type PeerErrorKind, type TransferClient } from './transfer-client.js'
import type { FetchThroughTarget } from './transfer-server.js'

/** A region peer this node is connected to, with the transfer endpoints it announced. */
export interface RegionMember {
  peerId: string
  /** `https://` base URLs of its transfer server; a peer without any is not a candidate owner. */
  addresses: string[]
}

export interface PeerBlobSourceComponents {
  logger: Logger
  clock: Clock
  metrics: RegionMetrics
  router: ContentRouter
  transfers: TransferClient
  penalties: PenaltyBox
  /** The region peers this node is connected to: the candidates, with this node, to own a digest. */
  members: () => Promise<RegionMember[]>
}

export interface PeerBlobSourceInit {
  /** This node's peer id: never a provider to itself. */
  self: string
  lookupTimeoutMs: number
  maxProviders: number
  negativeCacheMs: number
}

/** What asking one peer came to; an Error when the peer failed (and was penalised). */
type Outcome = FetchedContent | 'not_found' | 'busy' | 'unavailable' | Error

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
 * Region-wide single flight: when no provider served it, the digest's owner among this node and
 * its connected, unpenalised peers (`rendezvous.ts`) fetches it for the region. Another owner is
 * asked with a fetch-through request, which streams the owner's one download as it arrives; when
 * this node is the owner, undefined tells the caller to fetch it from its upstreams. An owner that
 * is also a provider is asked once, with a fetch-through request (its copy may be gone). A request
 * a peer forwarded here (`request.forwarded`) is never forwarded again: it may be served by
 * providers only, and then falls to this node's upstreams.
 *
 * - undefined: nobody provides the digest (cached for `negativeCacheMs`), every provider was
 *   skipped, or every one asked no longer had it (a stale record is not the peer's fault), and no
 *   other owner could be asked or it had no source for it.
 * - throws: providers or the owner were asked and failed (or were busy), so the caller moves to
 *   its next source.
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
    // Who fetches the digest for the region if nobody holds it; a forwarded request stays here.
    const owner = request.forwarded ? undefined : await this.owner(digest)
    if (request.signal.aborted) throw this.aborted(digest)
    const failures: Error[] = []
    const busy = new Set<string>()
    const asked = new Set<string>()
    const record = (peerId: string, outcome: Outcome): FetchedContent | undefined => {
      asked.add(peerId)
      if (outcome instanceof Error) failures.push(outcome)
      else if (outcome === 'busy') busy.add(peerId)
      else if (outcome === 'unavailable') {
        const detail = { digest, peer: peerId }
        failures.push(new UpstreamUnavailableError(`the owner of ${digest}, peer ${peerId}, could not fetch it`, { detail }))
      } else if (outcome !== 'not_found') return outcome
      return undefined
    }

    const cached = this.negative.has(digest)
    if (!cached) {
      const lookup = this.lookUp(digest, request.signal)
      try {
        for (let provider = await lookup.next(); provider; provider = await lookup.next()) {
          // A provider that is also the owner is asked to fetch through: if its record is stale
          // (evicted), it fetches the digest again for the region rather than answering 404.
          const content = record(provider.peerId, await this.ask(provider, digest, request, provider.peerId === owner?.peerId))
          if (content) {
            metrics.fetches.inc({ result: 'ok' })
            return content
          }
          if (asked.size >= this.init.maxProviders) break
        }
      } finally {
        await lookup.close()
      }
      if (request.signal.aborted) throw this.aborted(digest)
      if (lookup.error) failures.push(lookup.error)
      if (lookup.found === 0 && failures.length === 0) this.negative.add(digest)
    }
    if (owner === undefined) {
      if (!request.forwarded) metrics.fetchThroughs.inc({ result: 'self' })
    } else if (!asked.has(owner.peerId)) {
      const content = record(owner.peerId, await this.ask(owner, digest, request, true))
      if (content) {
        metrics.fetches.inc({ result: 'fetch_through' })
        return content
      }
    }
    if (failures.length === 0 && busy.size === 0) {
      metrics.fetches.inc({ result: cached ? 'negative_cache' : 'not_found' })
      return undefined
    }
    metrics.fetches.inc({ result: 'failed' })
    throw new UpstreamUnavailableError(`no region peer could serve ${digest}`, {
      cause: new AggregateError(failures),
      detail: { digest, asked: [...asked], busy: [...busy] },
    })
  }

  /**
   * The peer that fetches `digest` for the region when nobody holds it: the rendezvous winner among
   * this node and its connected, unpenalised peers that announced a transfer endpoint; undefined
   * when that is this node.
   */
  private async owner(digest: string): Promise<RegionMember | undefined> {
    const { logger, members, penalties } = this.components
    let candidates: RegionMember[]
    try {
      candidates = (await members()).filter(
        (member) => member.peerId !== this.init.self && member.addresses.length > 0 && !penalties.isPenalised(member.peerId),
      )
    } catch (error) {
      logger.warn({ err: error, digest }, 'could not list region members; fetching without an owner')
      return undefined
    }
    const owner = rendezvousOwner(digest, [this.init.self, ...candidates.map((member) => member.peerId)])
    return candidates.find((member) => member.peerId === owner)
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
   * Asks one provider, or with `fetchThrough` the digest's owner, trying its next endpoint only
   * when an address is unreachable. A peer that fails is penalised and its error returned.
   */
  private async ask(peer: ProviderRecord, digest: string, request: FetchRequest, fetchThrough: boolean): Promise<Outcome> {
    const outcome = await this.askEndpoints(peer, digest, request, fetchThrough)
    if (fetchThrough) {
      const result = outcome instanceof Error ? 'failed' : typeof outcome === 'string' ? outcome : 'ok'
      this.components.metrics.fetchThroughs.inc({ result })
    }
    return outcome
  }

  private async askEndpoints(peer: ProviderRecord, digest: string, request: FetchRequest, fetchThrough: boolean): Promise<Outcome> {
    const { logger, metrics, transfers } = this.components
    const { peerId, addresses } = peer
    const through: FetchThroughTarget | undefined = fetchThrough
      ? { kind: request.kind, registry: request.registry, repository: request.repository }
      : undefined
    let failure: Error | undefined
    for (const baseUrl of addresses.slice(0, MAX_ENDPOINTS_PER_PROVIDER)) {
      try {
        const result = await transfers.fetch(peerId, baseUrl, digest, request.offset, request.signal, through ? { through } : {})
        if (result.outcome !== 'ok') return result.outcome
        logger.debug(
          { digest, peer: peerId, offset: request.offset, size: result.content.size, fetchThrough: through !== undefined },
          through ? 'fetching through the owner in the region' : 'fetching from region peer',
        )
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
