import { Counter, Gauge, Histogram, type Registry } from 'prom-client'
import { isFerryError } from '@ferry/oci'

/**
 * What an upstream client counts. `result` is `ok`, `not_found`, `breaker_open` or the thrown
 * error's code without its `ERR_` prefix, lower-cased (`upstream_unavailable`, `timeout`, ...).
 */
export interface UpstreamMetrics {
  /** Operations: `resolve_tag`, `fetch_manifest`, `fetch_blob`, `fetch_manifest_content`, `ping`. */
  operations: Counter<'upstream' | 'operation' | 'result'>
  /** Seconds until an operation had its answer (for content: until the body starts). */
  operationDuration: Histogram<'upstream' | 'operation'>
  /** Requests to token realms. */
  tokenRequests: Counter<'upstream' | 'result'>
  /** Content bytes received from the upstream, after any bytes discarded to honour an offset. */
  bytesReceived: Counter<'upstream'>
  /** Content bodies that failed after their headers (truncated, idle, reset). */
  bodyErrors: Counter<'upstream' | 'result'>
  /** Content an upstream served that failed verification downstream. */
  corruptContent: Counter<'upstream'>
  /** 0 closed, 1 open, 2 half-open. */
  breakerState: Gauge<'upstream'>
}

export function createUpstreamMetrics(registry: Registry): UpstreamMetrics {
  const registers = [registry]
  return {
    operations: new Counter({
      name: 'ferry_upstream_operations_total',
      help: 'Operations against upstream registries, by result.',
      labelNames: ['upstream', 'operation', 'result'],
      registers,
    }),
    operationDuration: new Histogram({
      name: 'ferry_upstream_operation_duration_seconds',
      help: 'Time until an upstream operation had its answer (for content, until the body starts).',
      labelNames: ['upstream', 'operation'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    }),
    tokenRequests: new Counter({
      name: 'ferry_upstream_token_requests_total',
      help: 'Requests to upstream token realms, by result.',
      labelNames: ['upstream', 'result'],
      registers,
    }),
    bytesReceived: new Counter({
      name: 'ferry_upstream_received_bytes_total',
      help: 'Content bytes received from upstream registries.',
      labelNames: ['upstream'],
      registers,
    }),
    bodyErrors: new Counter({
      name: 'ferry_upstream_body_errors_total',
      help: 'Upstream content bodies that failed after their headers, by result.',
      labelNames: ['upstream', 'result'],
      registers,
    }),
    corruptContent: new Counter({
      name: 'ferry_upstream_corrupt_content_total',
      help: 'Content from upstream registries that failed digest verification.',
      labelNames: ['upstream'],
      registers,
    }),
    breakerState: new Gauge({
      name: 'ferry_upstream_breaker_state',
      help: 'Circuit breaker of each upstream: 0 closed, 1 open, 2 half-open.',
      labelNames: ['upstream'],
      registers,
    }),
  }
}

/** The `result` label of a failed operation. */
export function resultLabel(error: unknown): string {
  return isFerryError(error) ? error.code.replace(/^ERR_/, '').toLowerCase() : 'error'
}
