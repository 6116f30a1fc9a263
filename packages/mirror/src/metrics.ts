import { Counter, Histogram, type Registry } from 'prom-client'

/** The mirror's Prometheus series. `source` is `local`, `peer` or `upstream:<name>`. */
export interface MirrorMetrics {
  /** Requests answered, by content kind, where the content came from and the result. */
  requests: Counter<'kind' | 'source' | 'result'>
  /** Bytes taken from each source (peers, upstreams) into this node's store. */
  fetchedBytes: Counter<'kind' | 'source'>
  /** Bytes sent to clients, by where the content came from. */
  servedBytes: Counter<'kind' | 'source'>
  /** Downloads started, and how they ended. */
  downloads: Counter<'kind' | 'result'>
  /** Content a source sent that failed verification. */
  corruptContent: Counter<'source'>
  /** Tags answered from the last-known digest because no upstream could answer. */
  staleTags: Counter<'registry'>
  /** Time to a tag answer from upstreams. */
  tagResolveSeconds: Histogram<'result'>
}

export function createMirrorMetrics(registry: Registry): MirrorMetrics {
  return {
    requests: new Counter({
      name: 'ferry_requests_total',
      help: 'Manifest and blob requests answered, by content kind, source and result',
      labelNames: ['kind', 'source', 'result'],
      registers: [registry],
    }),
    fetchedBytes: new Counter({
      name: 'ferry_fetched_bytes_total',
      help: 'Bytes fetched from peers and upstreams into the local store',
      labelNames: ['kind', 'source'],
      registers: [registry],
    }),
    servedBytes: new Counter({
      name: 'ferry_served_bytes_total',
      help: 'Bytes sent to clients, by where the content came from',
      labelNames: ['kind', 'source'],
      registers: [registry],
    }),
    downloads: new Counter({
      name: 'ferry_downloads_total',
      help: 'Downloads into the local store, by result',
      labelNames: ['kind', 'result'],
      registers: [registry],
    }),
    corruptContent: new Counter({
      name: 'ferry_corrupt_content_total',
      help: 'Content that failed digest verification, by source',
      labelNames: ['source'],
      registers: [registry],
    }),
    staleTags: new Counter({
      name: 'ferry_stale_tags_total',
      help: 'Tags answered with the last-known digest because every upstream failed',
      labelNames: ['registry'],
      registers: [registry],
    }),
    tagResolveSeconds: new Histogram({
      name: 'ferry_tag_resolve_seconds',
      help: 'Time to resolve a tag with the upstreams',
      labelNames: ['result'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers: [registry],
    }),
  }
}
