import { Counter, Gauge, Histogram, Registry } from 'prom-client'

/**
 * What the region node counts. Peer error `kind`s: `connect` (refused, reset, unreachable),
 * `tls` (handshake refused, certificate not from the region CA or not the expected peer),
 * `timeout` (connect, first byte, or idle body), `status` (5xx or another unexpected status),
 * `protocol` (an answer that breaks the wire format), `stream` (a body that broke mid-transfer),
 * `corrupt` (content that failed verification downstream).
 */
export interface RegionMetrics {
  /** Seconds from the start of a look-up to its first usable provider, or to its end when none. */
  lookupDuration: Histogram<'result'>
  /** Distinct providers a look-up found, self and penalised peers included. */
  providersFound: Histogram
  peerErrors: Counter<'kind'>
  /**
   * Fetches through the peer source: `ok` (a provider served), `fetch_through` (the owner served),
   * `not_found`, `negative_cache`, `failed`.
   */
  fetches: Counter<'result'>
  /**
   * Fetch-through requests this node made to the owner of a digest nobody holds yet: `ok`,
   * `not_found` (the owner does not mirror it, or nobody has it), `busy`, `unavailable` (the owner's
   * own sources failed), `failed` (the owner failed: penalised), or `self` when this node is the
   * owner and fetches it from its upstreams.
   */
  fetchThroughs: Counter<'result'>
  /**
   * Fetch-through requests this node answered as owner: `ok`, `committed` (already held: served from
   * the store), `interrupted`, `not_mirrored`, `not_found`, `range_not_satisfiable`, `unavailable`,
   * `bad_request`.
   */
  fetchThroughsServed: Counter<'result'>
  /** Transfer requests this node answered to peers, by result (`ok`, `not_found`, `busy`, ...). */
  servedRequests: Counter<'result'>
  servedBytes: Counter
  /** DHT provide operations, `ok` or `error`. */
  provides: Counter<'result'>
}

export interface RegionGauges {
  connectedPeers(): number
  routingTableSize(): number
  providing(): number
  penalised(): number
}

export function createRegionMetrics(registry: Registry | undefined, gauges: RegionGauges): RegionMetrics {
  const registers = [registry ?? new Registry()]
  const gauge = (name: string, help: string, read: () => number) =>
    new Gauge({
      name,
      help,
      registers,
      collect() {
        this.set(read())
      },
    })
  gauge('ferry_p2p_connected_peers', 'Region peers this node has a libp2p connection with.', gauges.connectedPeers)
  gauge('ferry_p2p_routing_table_size', 'Peers in the kad-dht routing table.', gauges.routingTableSize)
  gauge('ferry_p2p_providing_blobs', 'Digests this node announces and re-announces.', gauges.providing)
  gauge('ferry_p2p_penalised_peers', 'Peers currently skipped after failing or serving corrupt content.', gauges.penalised)
  return {
    lookupDuration: new Histogram({
      name: 'ferry_p2p_lookup_duration_seconds',
      help: 'Time from the start of a DHT look-up to its first usable provider, or to its end when none.',
      labelNames: ['result'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
      registers,
    }),
    providersFound: new Histogram({
      name: 'ferry_p2p_providers_found',
      help: 'Distinct providers a DHT look-up found.',
      buckets: [0, 1, 2, 3, 5, 8, 13, 20],
      registers,
    }),
    peerErrors: new Counter({
      name: 'ferry_p2p_peer_errors_total',
      help: 'Failures of region peers to serve content, by kind.',
      labelNames: ['kind'],
      registers,
    }),
    fetches: new Counter({
      name: 'ferry_p2p_fetches_total',
      help: 'Content fetches through region peers, by result.',
      labelNames: ['result'],
      registers,
    }),
    fetchThroughs: new Counter({
      name: 'ferry_p2p_fetch_through_total',
      help: "Fetch-through requests made to a digest's owner in the region, by result.",
      labelNames: ['result'],
      registers,
    }),
    fetchThroughsServed: new Counter({
      name: 'ferry_p2p_fetch_through_served_total',
      help: 'Fetch-through requests answered to region peers as owner, by result.',
      labelNames: ['result'],
      registers,
    }),
    servedRequests: new Counter({
      name: 'ferry_p2p_served_requests_total',
      help: 'Transfer requests answered to region peers, by result.',
      labelNames: ['result'],
      registers,
    }),
    servedBytes: new Counter({
      name: 'ferry_p2p_served_bytes_total',
      help: 'Content bytes sent to region peers.',
      registers,
    }),
    provides: new Counter({
      name: 'ferry_p2p_provides_total',
      help: 'DHT provide operations, by result.',
      labelNames: ['result'],
      registers,
    }),
  }
}
