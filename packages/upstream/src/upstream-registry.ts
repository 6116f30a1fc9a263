import type { Clock, FetchedContent, FetchRequest, Logger, ManifestDescriptor, TagList, UpstreamSource } from '@ferry/interfaces'
import {
  AbortedError,
  DigestMismatchError,
  type FerryError,
  InvalidManifestError,
  InvalidReferenceError,
  isDigest,
  isFerryError,
  isManifestMediaType,
  isTag,
  MANIFEST_ACCEPT,
  MAX_MANIFEST_BYTES,
  parseDigest,
  parseManifest,
  parseReference,
  RangeNotSatisfiableError,
  sha256Digest,
  stripParameters,
  UpstreamProtocolError,
  UpstreamUnavailableError,
  validateRepository,
} from '@ferry/oci'
import { Authenticator, describeError } from './authenticator.js'
import { contentBody, readBody } from './body.js'
import { type BreakerTicket, CircuitBreaker } from './circuit-breaker.js'
import { type ResolvedUpstream, resolveUpstreamConfig, type UpstreamConfig } from './config.js'
import { resultLabel, type UpstreamMetrics } from './metrics.js'
import { redactUrl } from './redact.js'
import { discardBody, dropBody, headerValue, HttpTransport, type ResponseHeaders, type TransportResponse } from './transport.js'
import { errorForStatus, mapTransportError } from './transport-errors.js'

export interface UpstreamComponents {
  logger: Logger
  clock?: Clock
  metrics?: UpstreamMetrics
}

export interface FetchedManifest {
  bytes: Buffer
  mediaType: string
  /** sha256 of `bytes`, computed here. */
  digest: string
}

export type UpstreamOperation = 'resolve_tag' | 'fetch_manifest' | 'fetch_blob' | 'fetch_manifest_content' | 'ping' | 'list_tags'

const systemClock: Clock = { now: () => Date.now() }
/** What is read of an error answer to find the registry's OCI error code. */
const MAX_ERROR_BODY_BYTES = 4 * 1024
const CONTENT_RANGE = /^bytes (\d+)-(\d+)\/(\d+)$/
const CONTENT_LENGTH = /^\d+$/
/** Failures the breaker counts: the upstream did not give a sensible answer. */
const BREAKER_FAILURES = new Set(['ERR_UPSTREAM_UNAVAILABLE', 'ERR_TIMEOUT', 'ERR_UPSTREAM_PROTOCOL'])
const BREAKER_STATE_VALUES = { closed: 0, open: 1, 'half-open': 2 } as const

/**
 * The HTTP client for one upstream registry (the regional registry or central Harbor), pull
 * only. It speaks the distribution API under the configured base URL:
 *
 *   GET  /v2/                            ping, with authentication
 *   HEAD /v2/<name>/manifests/<tag>      tag → digest, media type, size
 *   GET  /v2/<name>/manifests/<ref>      manifest bytes (≤ 4 MiB), digest verified when by digest
 *   GET  /v2/<name>/blobs/<digest>       blob bytes, `Range: bytes=N-` to resume
 *
 * Requests carry `User-Agent: ferry/0.1` and `Accept-Encoding: identity` (compressed bytes would
 * not hash to the digest). Authentication, redirects and timeouts: see Authenticator and
 * HttpTransport. Failures are Ferry errors with their cause: TimeoutError for any timeout,
 * UpstreamUnavailableError for refused or broken connections, 5xx, 429 and an open circuit
 * breaker, UpstreamAuthError when the upstream refuses us, UpstreamProtocolError for answers the
 * spec does not allow, AbortedError when the caller's signal ended the request. A 404 resolves
 * to undefined.
 */
export class UpstreamRegistry implements UpstreamSource {
  readonly name: string
  private readonly upstream: ResolvedUpstream
  private readonly log: Logger
  private readonly metrics: UpstreamMetrics | undefined
  private readonly transport: HttpTransport
  private readonly authenticator: Authenticator
  private readonly breaker: CircuitBreaker
  private readonly shutdown = new AbortController()
  private readonly repositoryPrefix: string | undefined
  private closed = false

  constructor(components: UpstreamComponents, config: UpstreamConfig) {
    this.upstream = resolveUpstreamConfig(config)
    if (config.repositoryPrefix !== undefined) validateRepository(config.repositoryPrefix)
    this.repositoryPrefix = config.repositoryPrefix
    const label = this.upstream.name
    this.name = `upstream:${label}`
    this.log = components.logger.child({ component: 'upstream', upstream: label })
    this.metrics = components.metrics
    const clock = components.clock ?? systemClock
    this.transport = new HttpTransport(
      { logger: this.log },
      { upstream: label, upstreamOrigin: this.upstream.origin, timeouts: config.timeouts, tls: config.tls },
    )
    this.authenticator = new Authenticator(
      { logger: this.log, clock, transport: this.transport, metrics: this.metrics },
      { upstream: this.upstream, credentials: config.credentials, shutdownSignal: this.shutdown.signal },
    )
    this.breaker = new CircuitBreaker(label, config.breaker, clock, (state, consecutiveFailures) => {
      this.metrics?.breakerState.set({ upstream: label }, BREAKER_STATE_VALUES[state])
      if (state === 'open') {
        this.log.warn({ consecutiveFailures, openMs: config.breaker.openMs }, 'circuit breaker opened: skipping upstream')
      } else {
        this.log.info({ state }, `circuit breaker ${state}`)
      }
    })
    this.metrics?.breakerState.set({ upstream: label }, 0)
    if (config.credentials !== undefined && !this.upstream.secure) {
      this.log.warn({ url: redactUrl(this.upstream.baseUrl) }, 'credentials are configured for a plain-http upstream')
    }
  }

  /**
   * HEAD manifests/<tag>; falls back to GET when the answer lacks a usable Docker-Content-Digest,
   * Content-Type or Content-Length. Undefined on 404.
   */
  async resolveTag(repository: string, tag: string, options: { signal: AbortSignal }): Promise<ManifestDescriptor | undefined> {
    validateRepository(repository)
    const remote = this.remoteRepository(repository)
    if (!isTag(tag)) {
      throw new InvalidReferenceError(`invalid tag ${JSON.stringify(tag.slice(0, 140))}`, { detail: { reference: tag.slice(0, 140) } })
    }
    return this.operation('resolve_tag', options.signal, async () => {
      const response = await this.authorizedRequest({
        method: 'HEAD',
        path: `/v2/${remote}/manifests/${tag}`,
        headers: { accept: MANIFEST_ACCEPT },
        scope: pullScope(remote),
        signal: options.signal,
      })
      if (response.statusCode === 404) {
        await discardBody(response.body)
        return undefined
      }
      if (response.statusCode !== 200) throw await this.statusError(response, 'HEAD manifest')
      await discardBody(response.body)
      const described = this.describeHead(response.headers)
      if (described !== undefined) return described
      this.log.debug({ repository, tag }, 'HEAD answer lacks digest, media type or size; fetching the manifest')
      const manifest = await this.getManifest(remote, tag, options.signal)
      return manifest === undefined ? undefined : { digest: manifest.digest, mediaType: manifest.mediaType, size: manifest.bytes.byteLength }
    })
  }

  /**
   * GET manifests/<reference>, at most MAX_MANIFEST_BYTES. The digest returned is the sha256 of
   * the bytes; by digest it must equal the reference (and so must the upstream's
   * Docker-Content-Digest), else DigestMismatchError. Undefined on 404.
   */
  async fetchManifest(repository: string, reference: string, options: { signal: AbortSignal }): Promise<FetchedManifest | undefined> {
    validateRepository(repository)
    const parsed = parseReference(reference)
    const canonical = parsed.kind === 'digest' ? parsed.digest : parsed.tag
    return this.operation('fetch_manifest', options.signal, () => this.getManifest(this.remoteRepository(repository), canonical, options.signal))
  }

  /**
   * BlobSource: GET blobs/<digest> (manifests/<digest> for manifests) from `request.offset`. The
   * body delivers exactly `size - offset` bytes or errors; it is not verified here.
   */
  async fetch(request: FetchRequest): Promise<FetchedContent | undefined> {
    const digest = parseDigest(request.digest).digest
    validateRepository(request.repository)
    if (!Number.isSafeInteger(request.offset) || request.offset < 0) {
      throw new RangeNotSatisfiableError(`invalid offset ${request.offset}`, { detail: { offset: request.offset } })
    }
    const operation = request.kind === 'manifest' ? 'fetch_manifest_content' : 'fetch_blob'
    return this.operation(operation, request.signal, async () => {
      const headers: Record<string, string> = {}
      if (request.kind === 'manifest') headers.accept = MANIFEST_ACCEPT
      if (request.offset > 0) headers.range = `bytes=${request.offset}-`
      const response = await this.authorizedRequest({
        method: 'GET',
        path: `/v2/${this.remoteRepository(request.repository)}/${request.kind === 'manifest' ? 'manifests' : 'blobs'}/${digest}`,
        headers,
        scope: pullScope(this.remoteRepository(request.repository)),
        signal: request.signal,
      })
      if (response.statusCode === 404) {
        await discardBody(response.body)
        return undefined
      }
      if (response.statusCode !== 200 && response.statusCode !== 206) {
        throw await this.statusError(response, `GET ${request.kind}`)
      }
      return this.content(request, digest, response)
    })
  }

  reportCorrupt(request: FetchRequest): void {
    this.metrics?.corruptContent.inc({ upstream: this.upstream.name })
    this.log.warn({ repository: request.repository, digest: request.digest, kind: request.kind }, 'upstream served content that failed verification')
  }

  /**
   * GET tags/list, one page (`n`, `last` passed on). The body is limited like a manifest; the
   * `Link` to the next page is kept as a path so that clients follow it to Ferry, not upstream.
   */
  async listTags(repository: string, page: { n?: number; last?: string }, options: { signal: AbortSignal }): Promise<TagList | undefined> {
    validateRepository(repository)
    const query = new URLSearchParams()
    if (page.n !== undefined) query.set('n', String(page.n))
    if (page.last !== undefined) query.set('last', page.last)
    const search = query.size > 0 ? `?${query}` : ''
    return this.operation('list_tags', options.signal, async () => {
      const response = await this.authorizedRequest({
        method: 'GET',
        path: `/v2/${this.remoteRepository(repository)}/tags/list${search}`,
        headers: { accept: 'application/json' },
        scope: pullScope(this.remoteRepository(repository)),
        signal: options.signal,
      })
      if (response.statusCode === 404) {
        await discardBody(response.body)
        return undefined
      }
      if (response.statusCode !== 200) throw await this.statusError(response, 'GET tags/list')
      const bytes = await readBody(response.body, {
        limit: MAX_MANIFEST_BYTES,
        upstream: this.upstream.name,
        mapError: (error) => mapTransportError(error, { upstream: this.upstream.name, url: response.url, signal: options.signal }),
        tooLarge: () => new UpstreamProtocolError(`tag list of ${repository} from upstream ${this.upstream.name} exceeds ${MAX_MANIFEST_BYTES} bytes`),
      })
      let document: { name?: unknown; tags?: unknown }
      try {
        document = JSON.parse(bytes.toString('utf8')) as typeof document
      } catch (cause) {
        throw new UpstreamProtocolError(`upstream ${this.upstream.name} sent a tag list that is not JSON`, { cause })
      }
      const tags = Array.isArray(document.tags) ? document.tags.filter((tag): tag is string => typeof tag === 'string') : []
      const link = headerValue(response.headers, 'link')
      const next = link ? /<([^>]+)>\s*;\s*rel="?next"?/i.exec(link)?.[1] : undefined
      let nextPath: string | undefined
      if (next !== undefined) {
        const url = new URL(next, response.url)
        const prefix = this.upstream.basePath
        const path = url.pathname.startsWith(prefix) ? url.pathname.slice(prefix.length) : url.pathname
        // Back in this mirror's names: without the upstream's repository prefix.
        const own = this.repositoryPrefix ? path.replace(`/v2/${this.repositoryPrefix}/`, '/v2/') : path
        nextPath = `${own}${url.search}`
      }
      return { name: repository, tags, next: nextPath }
    })
  }

  /** GET /v2/ with authentication; throws unless the upstream answers 200. */
  async ping(options: { signal: AbortSignal }): Promise<void> {
    await this.operation('ping', options.signal, async () => {
      const response = await this.authorizedRequest({ method: 'GET', path: '/v2/', headers: {}, scope: undefined, signal: options.signal })
      if (response.statusCode !== 200) throw await this.statusError(response, 'GET /v2/')
      await discardBody(response.body)
    })
  }

  /** The repository's name on this upstream: with the configured prefix (a Harbor proxy-cache project). */
  private remoteRepository(repository: string): string {
    return this.repositoryPrefix ? `${this.repositoryPrefix}/${repository}` : repository
  }

  /** Ends every request and body still in flight (they fail) and closes the connections. */
  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    this.shutdown.abort()
    await this.transport.close()
  }

  /** Runs one operation under the circuit breaker and counts it. */
  private async operation<T>(operation: UpstreamOperation, signal: AbortSignal, run: () => Promise<T>): Promise<T> {
    const labels = { upstream: this.upstream.name, operation }
    if (this.closed) {
      throw new UpstreamUnavailableError(`upstream client ${this.upstream.name} is closed`, { detail: { upstream: this.upstream.name } })
    }
    if (signal.aborted) {
      throw new AbortedError(`request to upstream ${this.upstream.name} was aborted`, { cause: signal.reason, detail: { upstream: this.upstream.name } })
    }
    let ticket: BreakerTicket
    try {
      ticket = this.breaker.admit()
    } catch (error) {
      this.metrics?.operations.inc({ ...labels, result: 'breaker_open' })
      throw error
    }
    const stopTimer = this.metrics?.operationDuration.startTimer(labels)
    try {
      const result = await run()
      this.breaker.success(ticket)
      this.metrics?.operations.inc({ ...labels, result: result === undefined && operation !== 'ping' ? 'not_found' : 'ok' })
      return result
    } catch (error) {
      this.recordOutcome(ticket, error)
      this.metrics?.operations.inc({ ...labels, result: resultLabel(error) })
      this.log.debug({ operation, err: describeError(error) }, 'upstream operation failed')
      throw error
    } finally {
      stopTimer?.()
    }
  }

  private recordOutcome(ticket: BreakerTicket, error: unknown): void {
    if (!isFerryError(error) || error.code === 'ERR_ABORTED' || this.closed) {
      this.breaker.neutral(ticket)
    } else if (BREAKER_FAILURES.has(error.code)) {
      this.breaker.failure(ticket)
    } else {
      // Refused credentials, a wrong digest, an oversized manifest: the upstream is up and answering.
      this.breaker.success(ticket)
    }
  }

  /**
   * Sends a request with what the authenticator knows, and once more after answering a 401
   * challenge from the upstream itself. A 401 from a redirect target is not ours to answer.
   */
  private async authorizedRequest(request: {
    method: 'GET' | 'HEAD'
    path: string
    headers: Record<string, string>
    scope: string | undefined
    signal: AbortSignal
  }): Promise<TransportResponse> {
    const url = new URL(`${this.upstream.basePath}${request.path}`, this.upstream.origin)
    const send = (authorization: string | undefined) =>
      this.transport.send({
        method: request.method,
        url,
        headers: authorization === undefined ? request.headers : { ...request.headers, authorization },
        signal: request.signal,
      })
    const first = await this.authenticator.authorizationFor(request.scope, request.signal)
    const response = await send(first)
    if (response.statusCode !== 401 || response.url.origin !== this.upstream.origin) return response
    const challenge = response.headers['www-authenticate']
    await discardBody(response.body)
    const retry = await this.authenticator.answerChallenge(challenge, request.scope, first, request.signal)
    return send(retry)
  }

  private async getManifest(repository: string, reference: string, signal: AbortSignal): Promise<FetchedManifest | undefined> {
    const expected = isDigest(reference) ? reference : undefined
    const response = await this.authorizedRequest({
      method: 'GET',
      path: `/v2/${repository}/manifests/${reference}`,
      headers: { accept: MANIFEST_ACCEPT },
      scope: pullScope(repository),
      signal,
    })
    if (response.statusCode === 404) {
      await discardBody(response.body)
      return undefined
    }
    if (response.statusCode !== 200) throw await this.statusError(response, 'GET manifest')
    const fail = (error: FerryError): FerryError => {
      dropBody(response.body)
      return error
    }
    this.checkIdentityEncoding(response, fail)
    const announced = headerValue(response.headers, 'docker-content-digest')?.trim()
    if (expected !== undefined && announced !== undefined && announced !== expected) {
      throw fail(
        new DigestMismatchError(`upstream ${this.upstream.name} announced ${announced} for manifest ${expected}`, {
          detail: { upstream: this.upstream.name, digest: expected, actual: announced },
        }),
      )
    }
    const tooLarge = (size?: number) =>
      new InvalidManifestError(
        `manifest ${repository}:${reference} from upstream ${this.upstream.name} exceeds the ${MAX_MANIFEST_BYTES} byte limit`,
        { detail: { upstream: this.upstream.name, limit: MAX_MANIFEST_BYTES, ...(size === undefined ? {} : { size }) } },
      )
    const contentLength = this.contentLength(response, fail)
    if (contentLength !== undefined && contentLength > MAX_MANIFEST_BYTES) throw fail(tooLarge(contentLength))
    const bytes = await readBody(response.body, {
      limit: MAX_MANIFEST_BYTES,
      expectedLength: contentLength,
      upstream: this.upstream.name,
      mapError: (error) => mapTransportError(error, { upstream: this.upstream.name, url: response.url, signal }),
      tooLarge: () => tooLarge(),
    })
    const digest = sha256Digest(bytes)
    if (expected !== undefined && digest !== expected) {
      throw new DigestMismatchError(`manifest from upstream ${this.upstream.name} does not match ${expected} (got ${digest})`, {
        detail: { upstream: this.upstream.name, digest: expected, actual: digest },
      })
    }
    if (expected === undefined && announced !== undefined && announced !== digest) {
      // Schema 1 manifests are announced by the digest of their unsigned payload; we use the bytes'.
      this.log.warn({ repository, tag: reference, announced, digest }, 'upstream announced another digest than its manifest bytes have')
    }
    return { bytes, mediaType: this.manifestMediaType(bytes, headerValue(response.headers, 'content-type')), digest }
  }

  private content(request: FetchRequest, digest: string, response: TransportResponse): FetchedContent {
    const upstream = this.upstream.name
    const fail = (error: FerryError): FerryError => {
      dropBody(response.body)
      return error
    }
    const protocolError = (message: string) =>
      fail(new UpstreamProtocolError(`upstream ${upstream} ${message}`, { detail: { upstream, url: redactUrl(response.url), digest } }))
    this.checkIdentityEncoding(response, fail)
    const announced = headerValue(response.headers, 'docker-content-digest')?.trim()
    if (announced !== undefined && announced !== digest) {
      throw fail(
        new DigestMismatchError(`upstream ${upstream} announced ${announced} for ${request.kind} ${digest}`, {
          detail: { upstream, digest, actual: announced },
        }),
      )
    }
    const offset = request.offset
    let size: number
    let skip: number
    if (response.statusCode === 206) {
      const match = CONTENT_RANGE.exec(headerValue(response.headers, 'content-range')?.trim() ?? '')
      const [start, end, total] = match === null ? [NaN, NaN, NaN] : [Number(match[1]), Number(match[2]), Number(match[3])]
      if (!Number.isSafeInteger(start) || !Number.isSafeInteger(total) || !(start <= end && end < total)) {
        throw protocolError('answered 206 without a valid Content-Range')
      }
      if (start !== offset) throw protocolError(`answered a request from byte ${offset} with bytes from ${start}`)
      size = total
      skip = 0
    } else {
      const contentLength = this.contentLength(response, fail)
      if (contentLength === undefined) throw protocolError(`sent ${request.kind} ${digest} without a Content-Length`)
      size = contentLength
      if (offset > size) {
        throw fail(
          new RangeNotSatisfiableError(`${request.kind} ${digest} has ${size} bytes, less than offset ${offset}`, {
            detail: { upstream, digest, size, offset },
          }),
        )
      }
      // The upstream ignored Range and sends everything: drop what the caller already has.
      skip = offset
      if (offset > 0) this.log.debug({ digest, offset }, 'upstream ignored Range; discarding the leading bytes')
    }
    if (request.kind === 'manifest' && size > MAX_MANIFEST_BYTES) {
      throw fail(
        new InvalidManifestError(`manifest ${digest} from upstream ${upstream} exceeds the ${MAX_MANIFEST_BYTES} byte limit`, {
          detail: { upstream, digest, size, limit: MAX_MANIFEST_BYTES },
        }),
      )
    }
    const contentType = headerValue(response.headers, 'content-type')
    const mediaType = request.kind === 'manifest' && isManifestMediaType(contentType) ? stripParameters(contentType!) : undefined
    const body = contentBody({
      source: response.body,
      skip,
      length: size - offset,
      upstream,
      mapError: (error) => mapTransportError(error, { upstream, url: response.url, signal: request.signal }),
      onBytes: (count) => this.metrics?.bytesReceived.inc({ upstream }, count),
      onError: (error) => {
        this.metrics?.bodyErrors.inc({ upstream, result: resultLabel(error) })
        this.log.debug({ digest, offset, err: describeError(error) }, 'upstream body failed')
        if (error.code !== 'ERR_ABORTED' && !this.closed) this.breaker.failure({ probe: false })
      },
    })
    return { size, offset, ...(mediaType === undefined ? {} : { mediaType }), body }
  }

  private describeHead(headers: ResponseHeaders): ManifestDescriptor | undefined {
    const digest = headerValue(headers, 'docker-content-digest')?.trim()
    const contentType = headerValue(headers, 'content-type')
    const length = headerValue(headers, 'content-length')?.trim()
    if (digest === undefined || !isDigest(digest) || !isManifestMediaType(contentType)) return undefined
    if (length === undefined || !CONTENT_LENGTH.test(length) || Number(length) > MAX_MANIFEST_BYTES) return undefined
    return { digest, mediaType: stripParameters(contentType!), size: Number(length) }
  }

  private manifestMediaType(bytes: Buffer, contentType: string | undefined): string {
    if (isManifestMediaType(contentType)) return stripParameters(contentType!)
    try {
      return parseManifest(bytes, contentType).mediaType
    } catch (cause) {
      throw new UpstreamProtocolError(`upstream ${this.upstream.name} sent a manifest of unknown media type`, {
        cause,
        detail: { upstream: this.upstream.name, contentType },
      })
    }
  }

  private checkIdentityEncoding(response: TransportResponse, fail: (error: FerryError) => FerryError): void {
    const encoding = headerValue(response.headers, 'content-encoding')?.trim().toLowerCase()
    if (encoding !== undefined && encoding !== '' && encoding !== 'identity') {
      throw fail(
        new UpstreamProtocolError(`upstream ${this.upstream.name} sent ${encoding}-encoded content although Ferry asked for identity`, {
          detail: { upstream: this.upstream.name, url: redactUrl(response.url), contentEncoding: encoding },
        }),
      )
    }
  }

  private contentLength(response: TransportResponse, fail: (error: FerryError) => FerryError): number | undefined {
    const value = headerValue(response.headers, 'content-length')?.trim()
    if (value === undefined) return undefined
    const length = Number(value)
    if (!CONTENT_LENGTH.test(value) || !Number.isSafeInteger(length)) {
      throw fail(
        new UpstreamProtocolError(`upstream ${this.upstream.name} sent an invalid Content-Length`, {
          detail: { upstream: this.upstream.name, url: redactUrl(response.url) },
        }),
      )
    }
    return length
  }

  private async statusError(response: TransportResponse, operation: string): Promise<FerryError> {
    return errorForStatus(
      {
        upstream: this.upstream.name,
        url: response.url,
        status: response.statusCode,
        fromUpstream: response.url.origin === this.upstream.origin,
        retryAfter: headerValue(response.headers, 'retry-after'),
        registryError: await this.readRegistryError(response),
      },
      operation,
    )
  }

  /** The first `{"errors":[{code,message}]}` entry of an error answer, for logs; never throws. */
  private async readRegistryError(response: TransportResponse): Promise<{ code?: string; message?: string } | undefined> {
    try {
      const bytes = await readBody(response.body, {
        limit: MAX_ERROR_BODY_BYTES,
        upstream: this.upstream.name,
        mapError: (error) => mapTransportError(error, { upstream: this.upstream.name, url: response.url, signal: this.shutdown.signal }),
        tooLarge: () => new UpstreamProtocolError('error body too large'),
      })
      const document = JSON.parse(bytes.toString('utf8')) as { errors?: Array<{ code?: unknown; message?: unknown }> }
      const first = Array.isArray(document.errors) ? document.errors[0] : undefined
      if (first === undefined) return undefined
      return {
        ...(typeof first.code === 'string' ? { code: first.code.slice(0, 64) } : {}),
        ...(typeof first.message === 'string' ? { message: first.message.slice(0, 200) } : {}),
      }
    } catch {
      dropBody(response.body)
      return undefined
    }
  }
}

/** The token scope a pull of `repository` needs. */
export function pullScope(repository: string): string {
  return `repository:${repository}:pull`
}
