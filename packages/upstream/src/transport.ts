import { rootCertificates } from 'node:tls'
import { Agent, type Dispatcher, Pool } from 'undici'
import type { Logger } from '@ferry/interfaces'
import { UpstreamProtocolError } from '@ferry/oci'
import type { UpstreamTimeouts, UpstreamTlsConfig } from './config.js'
import { redactUrl } from './redact.js'
import { mapTransportError } from './transport-errors.js'

export const USER_AGENT = 'ferry/0.1'
export const MAX_REDIRECTS = 5
const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308])
/** What is read of a body nobody wants (redirects, errors) before the connection is dropped instead. */
const DISCARD_LIMIT = 64 * 1024

export type ResponseBody = Dispatcher.ResponseData['body']
export type ResponseHeaders = Dispatcher.ResponseData['headers']

export interface TransportRequest {
  method: 'GET' | 'HEAD' | 'POST'
  url: URL
  /** Lower-case names. `authorization` goes only to the origin of `url`, never to a redirect target elsewhere. */
  headers: Record<string, string>
  body?: string
  signal: AbortSignal
}

export interface TransportResponse {
  statusCode: number
  headers: ResponseHeaders
  body: ResponseBody
  /** Where the answer came from, after redirects. */
  url: URL
  redirects: number
}

export interface TransportOptions {
  upstream: string
  /** The origin `insecureSkipVerify` applies to. */
  upstreamOrigin: string
  timeouts: UpstreamTimeouts
  tls?: UpstreamTlsConfig | undefined
}

/**
 * HTTP/1.1 on one undici Agent per upstream, with the upstream's timeouts: `connectTimeout`,
 * `headersTimeout` (first byte) and `bodyTimeout` (idle between chunks). Redirects are followed
 * here rather than by undici, so that `Authorization` is dropped as soon as a redirect leaves the
 * origin it was meant for (registries send blobs to presigned object-storage URLs).
 *
 * HTTP/2 is off on purpose: layers of one image download in parallel, and separate TCP
 * connections keep one lossy long-distance stream from stalling the others.
 */
export class HttpTransport {
  private readonly agent: Agent
  private readonly log: Logger
  private readonly upstream: string

  constructor(components: { logger: Logger }, options: TransportOptions) {
    this.log = components.logger
    this.upstream = options.upstream
    // A `ca` option replaces Node's roots, and redirects lead to public object storage: keep both.
    const connect = options.tls?.ca === undefined ? {} : { ca: [...rootCertificates, options.tls.ca] }
    const insecure = options.tls?.insecureSkipVerify === true
    this.agent = new Agent({
      connectTimeout: options.timeouts.connectMs,
      headersTimeout: options.timeouts.firstByteMs,
      bodyTimeout: options.timeouts.idleMs,
      allowH2: false,
      connect,
      factory: (origin, poolOptions) => {
        const trustAnything = insecure && new URL(String(origin)).origin === options.upstreamOrigin
        const base = poolOptions as Pool.Options
        return new Pool(origin, trustAnything ? { ...base, connect: { ...connect, rejectUnauthorized: false } } : base)
      },
    })
  }

  async send(request: TransportRequest): Promise<TransportResponse> {
    const headers: Record<string, string> = { 'user-agent': USER_AGENT, 'accept-encoding': 'identity', ...request.headers }
    let url = request.url
    let method = request.method
    let body = request.body
    for (let redirects = 0; ; redirects++) {
      let response: Dispatcher.ResponseData
      try {
        response = await this.agent.request({
          origin: url.origin,
          path: `${url.pathname}${url.search}`,
          method,
          headers,
          body: body ?? null,
          signal: request.signal,
          // Larger reads from the socket: fewer, bigger chunks through the verify-and-store path.
          highWaterMark: 1024 * 1024,
        })
      } catch (error) {
        throw mapTransportError(error, { upstream: this.upstream, url, signal: request.signal })
      }
      const location = response.headers.location
      if (!REDIRECT_STATUSES.has(response.statusCode) || typeof location !== 'string') {
        this.log.debug({ method, url: redactUrl(url), status: response.statusCode, redirects }, 'upstream answered')
        return { statusCode: response.statusCode, headers: response.headers, body: response.body, url, redirects }
      }
      await discardBody(response.body)
      if (redirects >= MAX_REDIRECTS) {
        throw new UpstreamProtocolError(`upstream ${this.upstream} redirected more than ${MAX_REDIRECTS} times`, {
          detail: { upstream: this.upstream, url: redactUrl(request.url) },
        })
      }
      const next = parseLocation(location, url, this.upstream)
      if (next.origin !== request.url.origin) delete headers.authorization
      // 301, 302 and 303 turn a POST into a GET, as browsers and Go's client do; 307 and 308 keep it.
      if (method === 'POST' && response.statusCode <= 303) {
        method = 'GET'
        body = undefined
        delete headers['content-type']
      }
      this.log.debug({ status: response.statusCode, from: redactUrl(url), to: redactUrl(next) }, 'following upstream redirect')
      url = next
    }
  }

  /** Fails every request still in flight (their bodies error) and closes all connections. */
  async close(): Promise<void> {
    await this.agent.destroy()
  }
}

function parseLocation(location: string, base: URL, upstream: string): URL {
  let next: URL
  try {
    next = new URL(location, base)
  } catch (cause) {
    throw new UpstreamProtocolError(`upstream ${upstream} redirected to an invalid location`, { cause, detail: { upstream } })
  }
  if (next.protocol !== 'https:' && next.protocol !== 'http:') {
    throw new UpstreamProtocolError(`upstream ${upstream} redirected to a ${next.protocol} URL`, { detail: { upstream } })
  }
  next.username = ''
  next.password = ''
  next.hash = ''
  return next
}

/** Reads a small unwanted body so the connection can be reused; drops the connection if it is large or broken. */
export async function discardBody(body: ResponseBody): Promise<void> {
  try {
    await body.dump({ limit: DISCARD_LIMIT })
  } catch {
    // The response is finished with either way.
  }
}

/**
 * Abandons a body without reading it. undici reports a body destroyed before its end as an
 * 'error' event, which nobody listens to by then: swallow it.
 */
export function dropBody(body: ResponseBody): void {
  body.on('error', () => {})
  body.destroy()
}

/** A header's value; the first one when it was sent more than once. */
export function headerValue(headers: ResponseHeaders, name: string): string | undefined {
  const value = headers[name]
  return Array.isArray(value) ? value[0] : value
}
