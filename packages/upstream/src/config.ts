/** One upstream registry as the daemon's validated configuration describes it. */
export interface UpstreamConfig {
  /** Label for logs and metrics, e.g. `regional`; the source is named `upstream:<name>`. */
  name: string
  /** Base URL, http or https, e.g. `https://harbor.example.com`; a path prefix is allowed (`https://host/mirror`). */
  url: string
  /** Already read from files by the daemon; never from the environment. */
  credentials?: UpstreamCredentials
  timeouts: UpstreamTimeouts
  breaker: CircuitBreakerConfig
  tls?: UpstreamTlsConfig
  /**
   * Prepended to every repository on this upstream, e.g. `dockerhub-proxy` for a Harbor
   * proxy-cache project: `library/alpine` is asked for as `dockerhub-proxy/library/alpine`.
   */
  repositoryPrefix?: string
}

export interface UpstreamCredentials {
  username: string
  password: string
}

export interface UpstreamTimeouts {
  /** TCP (and TLS) connection establishment. */
  connectMs: number
  /** From sending a request to receiving the complete response headers. */
  firstByteMs: number
  /** Longest silence between two chunks of a response body. */
  idleMs: number
}

export interface CircuitBreakerConfig {
  /** Consecutive failed operations after which the upstream is skipped. */
  failureThreshold: number
  /** How long it is skipped before one probe request is let through. */
  openMs: number
}

export interface UpstreamTlsConfig {
  /**
   * PEM certificates (the CA file's contents, read by the daemon) trusted in addition to Node's
   * default roots, for every origin this upstream leads to: the registry, its token realm and the
   * object storage it redirects to.
   */
  ca?: string
  /**
   * Skips certificate verification, for the upstream's own origin only: a realm or object storage
   * on another origin is still verified.
   */
  insecureSkipVerify?: boolean
}

/** The parts of the configuration the components use, checked once. */
export interface ResolvedUpstream {
  name: string
  /** The base URL without a trailing slash. */
  baseUrl: URL
  origin: string
  /** The path prefix in front of `/v2/`, `''` when there is none. */
  basePath: string
  secure: boolean
}

const NAME_GRAMMAR = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,254}$/

/**
 * Checks what the daemon's schema cannot know about URLs. Throws TypeError: a bad configuration
 * is an operator's mistake found at start-up, not a runtime condition with an OCI error code.
 */
export function resolveUpstreamConfig(config: UpstreamConfig): ResolvedUpstream {
  if (!NAME_GRAMMAR.test(config.name)) {
    throw new TypeError(`upstream name ${JSON.stringify(config.name)} must be 1 to 255 letters, digits, '.', '_', ':' or '-'`)
  }
  let url: URL
  try {
    url = new URL(config.url)
  } catch (cause) {
    throw new TypeError(`upstream ${config.name}: url is not an absolute URL`, { cause })
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') {
    throw new TypeError(`upstream ${config.name}: url must be http or https, got ${url.protocol}`)
  }
  if (url.username !== '' || url.password !== '') {
    // Credentials in a URL end up in logs and error messages; they belong in `credentials`.
    throw new TypeError(`upstream ${config.name}: url must not carry credentials; configure them separately`)
  }
  if (url.search !== '' || url.hash !== '') {
    throw new TypeError(`upstream ${config.name}: url must not have a query or fragment`)
  }
  const { connectMs, firstByteMs, idleMs } = config.timeouts
  for (const [key, value] of Object.entries({ connectMs, firstByteMs, idleMs })) {
    if (!Number.isFinite(value) || value <= 0) {
      throw new TypeError(`upstream ${config.name}: timeouts.${key} must be a positive number of milliseconds`)
    }
  }
  const { failureThreshold, openMs } = config.breaker
  if (!Number.isSafeInteger(failureThreshold) || failureThreshold < 1) {
    throw new TypeError(`upstream ${config.name}: breaker.failureThreshold must be a positive integer`)
  }
  if (!Number.isFinite(openMs) || openMs < 0) {
    throw new TypeError(`upstream ${config.name}: breaker.openMs must be a non-negative number`)
  }
  const basePath = url.pathname.replace(/\/+$/, '')
  url.pathname = basePath === '' ? '/' : basePath
  return { name: config.name, baseUrl: url, origin: url.origin, basePath, secure: url.protocol === 'https:' }
}
