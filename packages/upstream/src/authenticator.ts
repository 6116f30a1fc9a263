import type { Clock, Logger } from '@ferry/interfaces'
import { AbortedError, type FerryError, UpstreamAuthError, UpstreamProtocolError } from '@ferry/oci'
import { readBody } from './body.js'
import type { ResolvedUpstream, UpstreamCredentials } from './config.js'
import { resultLabel, type UpstreamMetrics } from './metrics.js'
import { redactUrl } from './redact.js'
import { type IssuedToken, TokenCache } from './token-cache.js'
import { discardBody, type HttpTransport, type TransportResponse } from './transport.js'
import { errorForStatus, mapTransportError } from './transport-errors.js'
import { parseWwwAuthenticate } from './www-authenticate.js'

/** The Docker token spec's lifetime of a token that does not state `expires_in`. */
export const DEFAULT_TOKEN_LIFETIME_MS = 60_000
/** A token is not used in its last 10 s (or last half, when it lives less than 20 s): it must not expire in flight. */
export const TOKEN_SAFETY_MARGIN_MS = 10_000
/** Statuses of a GET token request after which the OAuth2 password grant (POST) is tried. */
const TRY_POST_AFTER = new Set([400, 404, 405])
const MAX_TOKEN_RESPONSE_BYTES = 64 * 1024
/** Visible ASCII only: the token goes into a header verbatim. */
const TOKEN_GRAMMAR = /^[\x21-\x7e]+$/
const OAUTH_CLIENT_ID = 'ferry'

export interface AuthenticatorComponents {
  logger: Logger
  clock: Clock
  transport: HttpTransport
  metrics?: UpstreamMetrics | undefined
}

export interface AuthenticatorOptions {
  upstream: ResolvedUpstream
  credentials?: UpstreamCredentials | undefined
  /** Aborted when the client closes. Token fetches are shared by concurrent callers, so no one caller's signal ends them. */
  shutdownSignal: AbortSignal
}

type KnownChallenge = { scheme: 'basic' } | { scheme: 'bearer'; realm: URL; service: string | undefined }

/**
 * Registry authentication, as the distribution spec's token flow and Docker clients do it.
 *
 * A request goes out anonymously until the upstream has answered 401 once; from then on the
 * scheme it asked for is used up front (Basic credentials, or a Bearer token for the request's
 * scope from the cache or fetched from the known realm), saving a round trip per repository.
 * On a 401 the `WWW-Authenticate` challenge is answered and the request retried once.
 *
 * Bearer tokens: `GET <realm>?service=<service>&scope=<scope>`, with Basic credentials when
 * configured (the Docker token spec; Harbor's `/service/token` and Docker Hub support it). When
 * that is refused with 400, 404 or 405 and credentials are configured, the OAuth2 password grant
 * `POST <realm>` (`grant_type=password&username&password&service&scope&client_id=ferry`) is tried,
 * for registries that only implement the POST form (containerd tries them the other way round:
 * POST first, since it may hold refresh tokens; GET first costs Harbor, the upstream we mostly
 * talk to, no extra round trip). `token` or `access_token` is accepted, valid for `expires_in`
 * seconds (default 60) minus a safety margin.
 *
 * Credentials never go over plain http to a realm when the upstream itself is https: the realm
 * URL is the upstream's to choose, and a downgrade would expose the password to anyone on the
 * path. Such a realm fails the request with UpstreamAuthError. With an http upstream the
 * operator has already chosen plain http for the credentials, and they may go to an http realm.
 * Anonymous token requests may use any http(s) realm.
 */
export class Authenticator {
  private readonly log: Logger
  private readonly clock: Clock
  private readonly transport: HttpTransport
  private readonly metrics: UpstreamMetrics | undefined
  private readonly upstream: ResolvedUpstream
  private readonly credentials: UpstreamCredentials | undefined
  private readonly shutdownSignal: AbortSignal
  private readonly tokens: TokenCache
  private readonly warnedRealms = new Set<string>()
  private known: KnownChallenge | undefined

  constructor(components: AuthenticatorComponents, options: AuthenticatorOptions) {
    this.log = components.logger
    this.clock = components.clock
    this.transport = components.transport
    this.metrics = components.metrics
    this.upstream = options.upstream
    this.credentials = options.credentials
    this.shutdownSignal = options.shutdownSignal
    this.tokens = new TokenCache(components.clock)
  }

  /** The `Authorization` to send before any challenge, from what the upstream asked for last time. */
  async authorizationFor(scope: string | undefined, signal: AbortSignal): Promise<string | undefined> {
    const known = this.known
    if (known === undefined) return undefined
    if (known.scheme === 'basic') return this.basicAuthorization()
    return this.bearerAuthorization(known.realm, known.service, scope === undefined ? [] : [scope], signal)
  }

  /**
   * The `Authorization` to retry a request with after a 401 carrying `header`, given what the
   * refused request sent (`rejected`). Throws UpstreamAuthError when nothing can satisfy it.
   */
  async answerChallenge(
    header: string | string[] | undefined,
    scope: string | undefined,
    rejected: string | undefined,
    signal: AbortSignal,
  ): Promise<string> {
    const challenges = parseWwwAuthenticate(header)
    const bearer = challenges.find((challenge) => challenge.scheme === 'bearer')
    if (bearer !== undefined) {
      const realm = this.parseRealm(bearer.params.realm)
      const service = bearer.params.service === '' ? undefined : bearer.params.service
      this.known = { scheme: 'bearer', realm, service }
      if (rejected?.startsWith('Bearer ')) this.tokens.forget(rejected.slice('Bearer '.length))
      return this.bearerAuthorization(realm, service, mergeScopes(scope, bearer.params.scope), signal)
    }
    if (challenges.some((challenge) => challenge.scheme === 'basic')) {
      const authorization = this.basicAuthorization()
      if (authorization === undefined) {
        throw new UpstreamAuthError(`upstream ${this.upstream.name} requires credentials and none are configured`, {
          detail: { upstream: this.upstream.name, scheme: 'basic' },
        })
      }
      if (rejected === authorization) {
        throw new UpstreamAuthError(`upstream ${this.upstream.name} refused the configured credentials`, {
          detail: { upstream: this.upstream.name, scheme: 'basic' },
        })
      }
      this.known = { scheme: 'basic' }
      return authorization
    }
    throw new UpstreamAuthError(`upstream ${this.upstream.name} answered 401 without a Basic or Bearer challenge`, {
      detail: { upstream: this.upstream.name, schemes: challenges.map((challenge) => challenge.scheme) },
    })
  }

  private basicAuthorization(): string | undefined {
    if (this.credentials === undefined) return undefined
    const { username, password } = this.credentials
    return `Basic ${Buffer.from(`${username}:${password}`, 'utf8').toString('base64')}`
  }

  private async bearerAuthorization(realm: URL, service: string | undefined, scopes: string[], signal: AbortSignal): Promise<string> {
    const key = TokenCache.key(realm, service, scopes)
    const token = await untilAborted(
      this.tokens.getOrFetch(key, () => this.requestToken(realm, service, scopes)),
      signal,
      this.upstream.name,
    )
    return `Bearer ${token}`
  }

  private parseRealm(realm: string | undefined): URL {
    let url: URL | undefined
    try {
      url = realm === undefined ? undefined : new URL(realm)
    } catch {
      url = undefined
    }
    if (url === undefined || (url.protocol !== 'https:' && url.protocol !== 'http:') || url.username !== '' || url.password !== '') {
      throw new UpstreamProtocolError(`upstream ${this.upstream.name} sent a Bearer challenge without a usable realm`, {
        detail: { upstream: this.upstream.name, realm: realm === undefined ? undefined : redactUrl(realm) },
      })
    }
    url.hash = ''
    return url
  }

  private async requestToken(realm: URL, service: string | undefined, scopes: string[]): Promise<IssuedToken> {
    const context = { upstream: this.upstream.name, realm: redactUrl(realm), service, scopes }
    try {
      this.checkRealmTransport(realm)
      const requestedAt = this.clock.now()
      let response = await this.getToken(realm, service, scopes)
      if (this.credentials !== undefined && TRY_POST_AFTER.has(response.statusCode)) {
        await discardBody(response.body)
        this.log.debug({ ...context, status: response.statusCode }, 'token realm refused GET, trying the OAuth2 password grant')
        response = await this.postToken(realm, service, scopes, this.credentials)
      }
      const issued = await this.readToken(response, requestedAt)
      this.metrics?.tokenRequests.inc({ upstream: this.upstream.name, result: 'ok' })
      this.log.debug({ ...context, usableForMs: issued.usableUntil - requestedAt }, 'obtained upstream token')
      return issued
    } catch (error) {
      this.metrics?.tokenRequests.inc({ upstream: this.upstream.name, result: resultLabel(error) })
      this.log.warn({ ...context, err: describeError(error) }, 'upstream token request failed')
      throw error
    }
  }

  private checkRealmTransport(realm: URL): void {
    if (this.credentials === undefined || realm.protocol !== 'http:') return
    if (this.upstream.secure) {
      this.log.warn(
        { upstream: this.upstream.name, realm: redactUrl(realm) },
        'refusing to send credentials to a plain-http token realm of an https upstream',
      )
      throw new UpstreamAuthError(`upstream ${this.upstream.name} sent a plain-http token realm; credentials are only sent over https`, {
        detail: { upstream: this.upstream.name, realm: redactUrl(realm) },
      })
    }
    if (!this.warnedRealms.has(realm.origin)) {
      this.warnedRealms.add(realm.origin)
      this.log.warn({ upstream: this.upstream.name, realm: redactUrl(realm) }, 'sending credentials over plain http, as configured for this upstream')
    }
  }

  private getToken(realm: URL, service: string | undefined, scopes: string[]): Promise<TransportResponse> {
    const url = new URL(realm)
    if (service !== undefined) url.searchParams.append('service', service)
    for (const scope of scopes) url.searchParams.append('scope', scope)
    const authorization = this.basicAuthorization()
    return this.transport.send({
      method: 'GET',
      url,
      headers: { accept: 'application/json', ...(authorization === undefined ? {} : { authorization }) },
      signal: this.shutdownSignal,
    })
  }

  private postToken(realm: URL, service: string | undefined, scopes: string[], credentials: UpstreamCredentials): Promise<TransportResponse> {
    const form = new URLSearchParams({ grant_type: 'password', username: credentials.username, password: credentials.password })
    if (service !== undefined) form.set('service', service)
    if (scopes.length > 0) form.set('scope', scopes.join(' '))
    form.set('client_id', OAUTH_CLIENT_ID)
    return this.transport.send({
      method: 'POST',
      url: realm,
      headers: { accept: 'application/json', 'content-type': 'application/x-www-form-urlencoded' },
      body: form.toString(),
      signal: this.shutdownSignal,
    })
  }

  private async readToken(response: TransportResponse, requestedAt: number): Promise<IssuedToken> {
    const mapError = (error: unknown): FerryError => mapTransportError(error, { upstream: this.upstream.name, url: response.url, signal: this.shutdownSignal })
    if (response.statusCode !== 200) {
      await discardBody(response.body)
      throw errorForStatus({ upstream: this.upstream.name, url: response.url, status: response.statusCode, fromUpstream: true }, 'a token request')
    }
    const invalid = (message: string, cause?: unknown) =>
      new UpstreamProtocolError(`token realm of upstream ${this.upstream.name} ${message}`, {
        cause,
        detail: { upstream: this.upstream.name, realm: redactUrl(response.url) },
      })
    const bytes = await readBody(response.body, {
      limit: MAX_TOKEN_RESPONSE_BYTES,
      upstream: this.upstream.name,
      mapError,
      tooLarge: () => invalid(`answered with more than ${MAX_TOKEN_RESPONSE_BYTES} bytes`),
    })
    let document: unknown
    try {
      document = JSON.parse(bytes.toString('utf8'))
    } catch (cause) {
      throw invalid('answered with something other than JSON', cause)
    }
    const record = typeof document === 'object' && document !== null ? (document as Record<string, unknown>) : {}
    const token = [record.token, record.access_token].find((value) => typeof value === 'string' && value !== '')
    if (typeof token !== 'string' || !TOKEN_GRAMMAR.test(token)) throw invalid('answered without a usable token or access_token')
    const expiresIn = record.expires_in
    const lifetimeMs = typeof expiresIn === 'number' && Number.isFinite(expiresIn) && expiresIn > 0 ? expiresIn * 1000 : DEFAULT_TOKEN_LIFETIME_MS
    return { token, usableUntil: requestedAt + lifetimeMs - Math.min(TOKEN_SAFETY_MARGIN_MS, lifetimeMs / 2) }
  }
}

/** `repository:<name>:pull` plus whatever else the challenge asked for, without duplicates. */
function mergeScopes(scope: string | undefined, challengeScope: string | undefined): string[] {
  const scopes = new Set<string>()
  if (scope !== undefined) scopes.add(scope)
  for (const item of (challengeScope ?? '').split(' ')) if (item !== '') scopes.add(item)
  return [...scopes]
}

/** Waits for a shared promise, giving up (without cancelling it) when this caller's signal aborts. */
function untilAborted<T>(promise: Promise<T>, signal: AbortSignal, upstream: string): Promise<T> {
  const aborted = () => new AbortedError(`request to upstream ${upstream} was aborted`, { cause: signal.reason, detail: { upstream } })
  if (signal.aborted) {
    promise.catch(() => {})
    return Promise.reject(aborted())
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(aborted())
    signal.addEventListener('abort', onAbort, { once: true })
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort)
        resolve(value)
      },
      (error: unknown) => {
        signal.removeEventListener('abort', onAbort)
        reject(error)
      },
    )
  })
}

/** An error as logged: its name, code and message, never a request or its headers. */
export function describeError(error: unknown): Record<string, unknown> {
  if (!(error instanceof Error)) return { message: String(error) }
  const code = (error as { code?: unknown }).code
  return { name: error.name, ...(typeof code === 'string' ? { code } : {}), message: error.message }
}
