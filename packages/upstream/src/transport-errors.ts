import {
  AbortedError,
  type FerryError,
  isFerryError,
  RangeNotSatisfiableError,
  TimeoutError,
  UpstreamAuthError,
  UpstreamProtocolError,
  UpstreamUnavailableError,
} from '@ferry/oci'
import { redactUrl } from './redact.js'

export interface ErrorContext {
  upstream: string
  url: URL
  signal: AbortSignal
}

/**
 * Maps what undici and the socket layer throw to Ferry's taxonomy, keeping the original as
 * `cause`. Every timeout is a TimeoutError whose `detail.phase` says which one (`connect`,
 * `firstByte`, `idle`); whatever else keeps the upstream from answering is an
 * UpstreamUnavailableError; an answer HTTP itself cannot parse is an UpstreamProtocolError. A
 * failure while the caller's signal is aborted is an AbortedError, whatever undici called it.
 */
export function mapTransportError(error: unknown, context: ErrorContext): FerryError {
  if (isFerryError(error)) return error
  const detail = { upstream: context.upstream, url: redactUrl(context.url) }
  if (context.signal.aborted) {
    return new AbortedError(`request to upstream ${context.upstream} was aborted`, { cause: error, detail })
  }
  const code = typeof error === 'object' && error !== null ? (error as { code?: unknown }).code : undefined
  const reason = error instanceof Error ? error.message : String(error)
  switch (code) {
    case 'UND_ERR_CONNECT_TIMEOUT':
    case 'ETIMEDOUT':
      return new TimeoutError(`connecting to upstream ${context.upstream} timed out`, { cause: error, detail: { ...detail, phase: 'connect' } })
    case 'UND_ERR_HEADERS_TIMEOUT':
      return new TimeoutError(`upstream ${context.upstream} sent no response headers in time`, {
        cause: error,
        detail: { ...detail, phase: 'firstByte' },
      })
    case 'UND_ERR_BODY_TIMEOUT':
      return new TimeoutError(`upstream ${context.upstream} stalled while sending a body`, { cause: error, detail: { ...detail, phase: 'idle' } })
    case 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH':
      return new UpstreamUnavailableError(`upstream ${context.upstream} ended a body early: ${reason}`, { cause: error, detail })
    case 'UND_ERR_HEADERS_OVERFLOW':
    case 'UND_ERR_INFO':
      return new UpstreamProtocolError(`upstream ${context.upstream} sent an invalid response: ${reason}`, { cause: error, detail })
    default:
      if (typeof code === 'string' && code.startsWith('HPE_')) {
        return new UpstreamProtocolError(`upstream ${context.upstream} sent invalid HTTP: ${reason}`, { cause: error, detail })
      }
      return new UpstreamUnavailableError(`upstream ${context.upstream} is unreachable: ${reason}`, { cause: error, detail })
  }
}

export interface StatusContext {
  upstream: string
  url: URL
  status: number
  /** Whether the answer came from the upstream's own origin rather than a redirect target. */
  fromUpstream: boolean
  retryAfter?: string | undefined
  /** The first OCI error of the body, if it had one. */
  registryError?: { code?: string; message?: string } | undefined
}

/** The error for an HTTP status an operation cannot use. */
export function errorForStatus(context: StatusContext, operation: string): FerryError {
  const detail: Record<string, unknown> = { upstream: context.upstream, url: redactUrl(context.url), status: context.status }
  if (context.registryError !== undefined) detail.registryError = context.registryError
  if (context.retryAfter !== undefined) detail.retryAfter = context.retryAfter
  const prefix = `upstream ${context.upstream} answered ${operation} with ${context.status}`
  const status = context.status
  if ((status === 401 || status === 403) && context.fromUpstream) {
    return new UpstreamAuthError(`${prefix}: access denied`, { detail })
  }
  if (status === 416) return new RangeNotSatisfiableError(`${prefix}: range not satisfiable`, { detail })
  if (status >= 500 || status === 429 || status === 408 || status === 401 || status === 403) {
    // 401/403 from object storage behind a redirect: an expired presigned URL, not our credentials.
    return new UpstreamUnavailableError(prefix, { detail })
  }
  return new UpstreamProtocolError(`${prefix}, which the distribution spec does not allow here`, { detail })
}
