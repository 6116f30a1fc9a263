import assert from 'node:assert/strict'
import type { ServerResponse } from 'node:http'
import { test, type TestContext } from 'node:test'
import { Registry } from 'prom-client'
import {
  AbortedError,
  DigestMismatchError,
  InvalidManifestError,
  MANIFEST_ACCEPT,
  MAX_MANIFEST_BYTES,
  MediaTypes,
  sha256Digest,
  TimeoutError,
  UpstreamAuthError,
  UpstreamProtocolError,
  UpstreamUnavailableError,
} from '@ferry/oci'
import { createUpstreamMetrics, type UpstreamConfig, type UpstreamMetrics, UpstreamRegistry } from '@ferry/upstream'
import {
  closedPort,
  decodeBasic,
  type Handler,
  ManualClock,
  readAll,
  type RecordedRequest,
  RecordingLogger,
  selfSignedCertificate,
  sendRegistryError,
  startServer,
} from './helpers/upstream-servers.js'

const blob = Buffer.from(Array.from({ length: 200_000 }, (_, index) => (index * 7) % 251))
const blobDigest = sha256Digest(blob)
const manifestBytes = Buffer.from(
  JSON.stringify({
    schemaVersion: 2,
    mediaType: MediaTypes.ociManifest,
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: blobDigest, size: blob.length },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: blobDigest, size: blob.length }],
  }),
)
const manifestDigest = sha256Digest(manifestBytes)
const credentials = { username: 'robot$pull', password: 'pa55-w0rd-secret' }
const neverAborted = new AbortController().signal
const ROUTE = /^(?:\/[^/]+)*?\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/

interface RegistryOptions {
  /** Returns the challenge to answer 401 with, or undefined when the request is authorised. */
  challenge?: (request: RecordedRequest) => string | undefined
  honourRange?: boolean
  /** Set Docker-Content-Digest on manifest answers (default true). */
  announceDigest?: boolean
  /** Answers blob GETs instead of the default handler. */
  blob?: Handler
}

/** A distribution-API server with one manifest (tag `latest`) and one blob in every repository. */
function registryHandler(options: RegistryOptions = {}): Handler {
  return (request, response) => {
    const challenge = options.challenge?.(request)
    if (challenge !== undefined) {
      sendRegistryError(response, 401, 'UNAUTHORIZED', { 'www-authenticate': challenge })
      return
    }
    if (request.url.pathname.endsWith('/v2/')) {
      response.writeHead(200, { 'content-type': 'application/json', 'content-length': 2 })
      response.end('{}')
      return
    }
    const route = ROUTE.exec(request.url.pathname)
    if (route === null) return sendRegistryError(response, 404, 'NAME_UNKNOWN')
    const [, , kind, reference] = route
    if (kind === 'manifests' && (reference === 'latest' || reference === manifestDigest)) {
      response.writeHead(200, {
        'content-type': MediaTypes.ociManifest,
        'content-length': manifestBytes.length,
        ...(options.announceDigest === false ? {} : { 'docker-content-digest': manifestDigest }),
      })
      response.end(request.method === 'HEAD' ? undefined : manifestBytes)
      return
    }
    if (kind === 'blobs' && reference === blobDigest) {
      if (options.blob !== undefined) return options.blob(request, response)
      return sendBytes(request, response, blob, options.honourRange ?? true)
    }
    sendRegistryError(response, 404, kind === 'blobs' ? 'BLOB_UNKNOWN' : 'MANIFEST_UNKNOWN')
  }
}

function sendBytes(request: RecordedRequest, response: ServerResponse, bytes: Buffer, honourRange: boolean): void {
  const range = /^bytes=(\d+)-$/.exec(request.headers.range ?? '')
  if (honourRange && range !== null) {
    const start = Number(range[1])
    response.writeHead(206, {
      'content-type': 'application/octet-stream',
      'content-length': bytes.length - start,
      'content-range': `bytes ${start}-${bytes.length - 1}/${bytes.length}`,
    })
    response.end(bytes.subarray(start))
    return
  }
  response.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': bytes.length })
  response.end(bytes)
}

function upstreamConfig(url: string, overrides: Partial<UpstreamConfig> = {}): UpstreamConfig {
  return {
    name: 'test',
    url,
    timeouts: { connectMs: 2_000, firstByteMs: 5_000, idleMs: 5_000 },
    breaker: { failureThreshold: 3, openMs: 30_000 },
    ...overrides,
  }
}

function createClient(t: TestContext, url: string, overrides: Partial<UpstreamConfig> = {}, metrics?: UpstreamMetrics) {
  const logger = new RecordingLogger()
  const clock = new ManualClock()
  const upstream = new UpstreamRegistry({ logger, clock, ...(metrics === undefined ? {} : { metrics }) }, upstreamConfig(url, overrides))
  t.after(() => upstream.close())
  return { upstream, logger, clock }
}

function blobRequest(repository = 'library/alpine', offset = 0, signal = neverAborted) {
  return { kind: 'blob' as const, registry: 'harbor.example.com', repository, digest: blobDigest, offset, signal }
}

async function fetchBlob(upstream: UpstreamRegistry, repository = 'library/alpine', offset = 0): Promise<Buffer> {
  const content = await upstream.fetch(blobRequest(repository, offset))
  assert.ok(content !== undefined, 'the blob should be found')
  return readAll(content.body)
}

/** A token realm that issues `<prefix>-<n>` tokens and remembers the scope of each. */
function tokenRealm(options: { prefix: string; expiresIn?: number; methods?: Array<'GET' | 'POST'>; field?: 'token' | 'access_token' }) {
  const issued = new Map<string, string>()
  const handler: Handler = (request, response) => {
    if (!(options.methods ?? ['GET']).includes(request.method as 'GET' | 'POST')) {
      response.writeHead(405, { allow: (options.methods ?? ['GET']).join(', ') })
      response.end()
      return
    }
    const fields = request.method === 'POST' ? new URLSearchParams(request.body) : request.url.searchParams
    const user =
      request.method === 'POST' ? { username: fields.get('username'), password: fields.get('password') } : decodeBasic(request.headers.authorization)
    if (user?.username !== credentials.username || user.password !== credentials.password) {
      response.writeHead(401, { 'content-type': 'application/json' })
      response.end('{"details":"incorrect username or password"}')
      return
    }
    const token = `${options.prefix}-${issued.size + 1}`
    issued.set(token, request.method === 'POST' ? (fields.get('scope') ?? '') : fields.getAll('scope').join(' '))
    const body = JSON.stringify({ [options.field ?? 'token']: token, ...(options.expiresIn === undefined ? {} : { expires_in: options.expiresIn }) })
    response.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
    response.end(body)
  }
  return { handler, issued }
}

/** The challenge of a Bearer-protected registry, accepting tokens the realm issued for the repository's scope. */
function bearerChallenge(realm: string, issued: Map<string, string>) {
  return (request: RecordedRequest): string | undefined => {
    const route = ROUTE.exec(request.url.pathname)
    const scope = route === null ? undefined : `repository:${route[1]}:pull`
    const token = request.headers.authorization?.startsWith('Bearer ') ? request.headers.authorization.slice('Bearer '.length) : undefined
    const granted = token === undefined ? undefined : issued.get(token)
    if (granted !== undefined && (scope === undefined || granted.split(' ').includes(scope))) return undefined
    return `Bearer realm="${realm}",service="ferry-test"${scope === undefined ? '' : `,scope="${scope}"`}`
  }
}

test('Basic: answers the challenge with the configured credentials, then sends them up front', async (t) => {
  const registry = await startServer(
    t,
    registryHandler({
      challenge: (request) => {
        const user = decodeBasic(request.headers.authorization)
        return user?.username === credentials.username && user.password === credentials.password ? undefined : 'Basic realm="registry"'
      },
    }),
  )
  const { upstream, logger } = createClient(t, registry.origin, { credentials })

  const manifest = await upstream.fetchManifest('library/alpine', 'latest', { signal: neverAborted })
  assert.deepEqual(manifest, { bytes: manifestBytes, mediaType: MediaTypes.ociManifest, digest: manifestDigest })
  assert.equal(registry.requests.length, 2)
  assert.equal(registry.requests[0]!.headers.authorization, undefined)
  assert.deepEqual(decodeBasic(registry.requests[1]!.headers.authorization), credentials)

  assert.deepEqual(await fetchBlob(upstream), blob)
  assert.equal(registry.requests.length, 3, 'after the first challenge the credentials go up front')
  assert.deepEqual(decodeBasic(registry.requests[2]!.headers.authorization), credentials)

  const logged = logger.text()
  assert.ok(!logged.includes(credentials.password))
  assert.ok(!logged.includes(Buffer.from(`${credentials.username}:${credentials.password}`).toString('base64')))
})

test('Basic: refused credentials and missing credentials are UpstreamAuthError', async (t) => {
  const registry = await startServer(t, registryHandler({ challenge: () => 'Basic realm="registry"' }))
  const withCredentials = createClient(t, registry.origin, { credentials }).upstream
  await assert.rejects(withCredentials.fetchManifest('library/alpine', 'latest', { signal: neverAborted }), UpstreamAuthError)
  assert.equal(registry.requests.length, 2)
  await assert.rejects(withCredentials.fetch(blobRequest()), UpstreamAuthError)
  assert.equal(registry.requests.length, 3, 'credentials the upstream refused are not retried')

  const anonymous = createClient(t, registry.origin).upstream
  await assert.rejects(anonymous.resolveTag('library/alpine', 'latest', { signal: neverAborted }), UpstreamAuthError)
})

test('Bearer: gets a token from the realm by GET with Basic credentials and sends it to the registry', async (t) => {
  const realm = tokenRealm({ prefix: 'get-token', expiresIn: 300 })
  const tokenServer = await startServer(t, realm.handler)
  const registry = await startServer(t, registryHandler({ challenge: bearerChallenge(`${tokenServer.origin}/token`, realm.issued) }))
  const { upstream, logger } = createClient(t, registry.origin, { credentials })

  assert.deepEqual(await fetchBlob(upstream), blob)

  assert.equal(tokenServer.requests.length, 1)
  const tokenRequest = tokenServer.requests[0]!
  assert.equal(tokenRequest.method, 'GET')
  assert.equal(tokenRequest.url.searchParams.get('service'), 'ferry-test')
  assert.deepEqual(tokenRequest.url.searchParams.getAll('scope'), ['repository:library/alpine:pull'])
  assert.deepEqual(decodeBasic(tokenRequest.headers.authorization), credentials)
  assert.deepEqual(
    registry.requests.map((request) => request.headers.authorization),
    [undefined, 'Bearer get-token-1'],
  )
  const logged = logger.text()
  assert.ok(!logged.includes('get-token-1'), 'tokens are never logged')
  assert.ok(!logged.includes(credentials.password))
})

test('Bearer: falls back to the OAuth2 password grant when the realm only accepts POST', async (t) => {
  const realm = tokenRealm({ prefix: 'post-token', methods: ['POST'], field: 'access_token', expiresIn: 300 })
  const tokenServer = await startServer(t, realm.handler)
  const registry = await startServer(t, registryHandler({ challenge: bearerChallenge(`${tokenServer.origin}/oauth2/token`, realm.issued) }))
  const { upstream } = createClient(t, registry.origin, { credentials })

  const manifest = await upstream.fetchManifest('team/app', manifestDigest, { signal: neverAborted })
  assert.equal(manifest?.digest, manifestDigest)

  assert.deepEqual(
    tokenServer.requests.map((request) => request.method),
    ['GET', 'POST'],
  )
  const post = tokenServer.requests[1]!
  assert.equal(post.headers['content-type'], 'application/x-www-form-urlencoded')
  assert.equal(post.headers.authorization, undefined)
  const form = new URLSearchParams(post.body)
  assert.equal(form.get('grant_type'), 'password')
  assert.equal(form.get('username'), credentials.username)
  assert.equal(form.get('password'), credentials.password)
  assert.equal(form.get('service'), 'ferry-test')
  assert.equal(form.get('scope'), 'repository:team/app:pull')
  assert.equal(form.get('client_id'), 'ferry')
  assert.equal(registry.requests.at(-1)!.headers.authorization, 'Bearer post-token-1')
})

test('Bearer: a token realm that refuses the credentials is UpstreamAuthError', async (t) => {
  const realm = tokenRealm({ prefix: 'never' })
  const tokenServer = await startServer(t, realm.handler)
  const registry = await startServer(t, registryHandler({ challenge: bearerChallenge(`${tokenServer.origin}/token`, realm.issued) }))
  const { upstream } = createClient(t, registry.origin, { credentials: { username: credentials.username, password: 'wrong' } })
  await assert.rejects(upstream.fetch(blobRequest()), UpstreamAuthError)
  assert.equal(tokenServer.requests.length, 1, 'a 401 from the realm is final, no POST fallback')
})

test('Bearer: tokens are cached per scope and refreshed after expires_in by the injected clock', async (t) => {
  const realm = tokenRealm({ prefix: 'cached', expiresIn: 120 })
  const tokenServer = await startServer(t, realm.handler)
  const registry = await startServer(t, registryHandler({ challenge: bearerChallenge(`${tokenServer.origin}/token`, realm.issued) }))
  const { upstream, clock } = createClient(t, registry.origin, { credentials })
  const scopesRequested = () => tokenServer.requests.map((request) => request.url.searchParams.get('scope'))

  await fetchBlob(upstream, 'library/alpine')
  await upstream.fetchManifest('library/alpine', 'latest', { signal: neverAborted })
  assert.deepEqual(scopesRequested(), ['repository:library/alpine:pull'], 'two fetches in one repository: one token')

  const before = registry.requests.length
  await fetchBlob(upstream, 'library/busybox')
  assert.deepEqual(scopesRequested(), ['repository:library/alpine:pull', 'repository:library/busybox:pull'])
  assert.equal(registry.requests.length, before + 1, 'the known realm is asked up front, without another 401')

  clock.advance(100_000)
  await fetchBlob(upstream, 'library/alpine')
  assert.equal(tokenServer.requests.length, 2, 'still valid after 100 s of 120')

  clock.advance(15_000)
  await fetchBlob(upstream, 'library/alpine')
  assert.equal(tokenServer.requests.length, 3, 'refreshed within the safety margin before expiry')
  assert.equal(registry.requests.at(-1)!.headers.authorization, 'Bearer cached-3')
})

test('Bearer: concurrent fetches in a new repository share one token request', async (t) => {
  const realm = tokenRealm({ prefix: 'shared', expiresIn: 300 })
  const tokenServer = await startServer(t, realm.handler)
  const registry = await startServer(t, registryHandler({ challenge: bearerChallenge(`${tokenServer.origin}/token`, realm.issued) }))
  const { upstream } = createClient(t, registry.origin, { credentials })
  await upstream.ping({ signal: neverAborted })
  const pingTokenRequest = tokenServer.requests[0]!
  assert.deepEqual(pingTokenRequest.url.searchParams.getAll('scope'), [], 'GET /v2/ needs a token without scope')

  const bodies = await Promise.all(Array.from({ length: 5 }, () => fetchBlob(upstream, 'library/redis')))
  for (const body of bodies) assert.deepEqual(body, blob)
  assert.equal(tokenServer.requests.length, 2)
})

test('Bearer: credentials never go to a plain-http realm of an https upstream', async (t) => {
  const certificate = await selfSignedCertificate()
  const realm = tokenRealm({ prefix: 'leaked' })
  const tokenServer = await startServer(t, realm.handler)
  const registry = await startServer(t, registryHandler({ challenge: bearerChallenge(`${tokenServer.origin}/token`, realm.issued) }), {
    tls: certificate,
  })
  const { upstream, logger } = createClient(t, registry.origin, { credentials, tls: { ca: certificate.cert } })

  await assert.rejects(upstream.fetch(blobRequest()), UpstreamAuthError)
  assert.equal(registry.requests.length, 1, 'the https upstream was reached, trusting the configured CA')
  assert.equal(tokenServer.requests.length, 0)
  assert.ok(logger.entries.some((entry) => entry.level === 'warn' && entry.message?.includes('plain-http token realm')))
})

test('TLS: an unknown CA is refused; insecureSkipVerify trusts the upstream origin only, not its redirect targets', async (t) => {
  const certificate = await selfSignedCertificate()
  const storage = await startServer(t, (request, response) => sendBytes(request, response, blob, true), { tls: certificate })
  const registry = await startServer(
    t,
    registryHandler({
      blob: (_request, response) => {
        response.writeHead(307, { location: `${storage.origin}/bucket/blob` })
        response.end()
      },
    }),
    { tls: certificate },
  )
  const verifying = createClient(t, registry.origin).upstream
  await assert.rejects(verifying.ping({ signal: neverAborted }), UpstreamUnavailableError)
  assert.equal(registry.requests.length, 0)

  const insecure = createClient(t, registry.origin, { tls: { insecureSkipVerify: true } }).upstream
  await insecure.ping({ signal: neverAborted })
  assert.equal(registry.requests.length, 1)
  await assert.rejects(insecure.fetch(blobRequest()), UpstreamUnavailableError)
  assert.equal(registry.requests.length, 2)
  assert.equal(storage.requests.length, 0, 'the redirect target on another origin was still verified')
})

test('Redirects: a 307 to another origin is followed without Authorization, and presigned queries are not logged', async (t) => {
  const storage = await startServer(t, (request, response) => sendBytes(request, response, blob, true))
  const location = `${storage.origin}/bucket/${blobDigest.slice(7)}?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=s3cr3t-signature`
  const registry = await startServer(
    t,
    registryHandler({
      challenge: (request) => (decodeBasic(request.headers.authorization) === undefined ? 'Basic realm="registry"' : undefined),
      blob: (_request, response) => {
        response.writeHead(307, { location })
        response.end()
      },
    }),
  )
  const { upstream, logger } = createClient(t, registry.origin, { credentials })

  assert.deepEqual(await fetchBlob(upstream), blob)
  assert.deepEqual(decodeBasic(registry.requests.at(-1)!.headers.authorization), credentials, 'the registry got the credentials')
  assert.equal(storage.requests.length, 1)
  assert.equal(storage.requests[0]!.headers.authorization, undefined)
  assert.equal(storage.requests[0]!.url.searchParams.get('X-Amz-Signature'), 's3cr3t-signature')

  const logged = logger.text()
  assert.ok(logged.includes('X-Amz-Signature=REDACTED'), 'the redirect is logged, redacted')
  assert.ok(!logged.includes('s3cr3t-signature'))
  assert.ok(!logged.includes('AKIAEXAMPLE'))
})

test('Redirects: more than five are an UpstreamProtocolError', async (t) => {
  const registry = await startServer(t, (request, response) => {
    response.writeHead(302, { location: `${request.url.pathname}?hop=${Number(request.url.searchParams.get('hop') ?? 0) + 1}` })
    response.end()
  })
  const { upstream } = createClient(t, registry.origin)
  await assert.rejects(upstream.fetch(blobRequest()), UpstreamProtocolError)
  assert.equal(registry.requests.length, 6)
})

test('Range: resumes from an offset with a 206 answer', async (t) => {
  const registry = await startServer(t, registryHandler({ honourRange: true }))
  const { upstream } = createClient(t, registry.origin)
  const content = await upstream.fetch(blobRequest('library/alpine', 150_000))
  assert.ok(content !== undefined)
  assert.equal(content.size, blob.length)
  assert.equal(content.offset, 150_000)
  assert.deepEqual(await readAll(content.body), blob.subarray(150_000))
  assert.equal(registry.requests[0]!.headers.range, 'bytes=150000-')
})

test('Range: drops the leading bytes when the upstream ignores Range', async (t) => {
  const registry = await startServer(t, registryHandler({ honourRange: false }))
  const { upstream } = createClient(t, registry.origin)
  const content = await upstream.fetch(blobRequest('library/alpine', 123_457))
  assert.ok(content !== undefined)
  assert.equal(content.size, blob.length)
  assert.equal(content.offset, 123_457)
  assert.deepEqual(await readAll(content.body), blob.subarray(123_457))
  assert.equal(registry.requests[0]!.headers.range, 'bytes=123457-')
})

test('Range: a 206 that starts elsewhere than asked is an UpstreamProtocolError', async (t) => {
  const registry = await startServer(
    t,
    registryHandler({
      blob: (_request, response) => {
        response.writeHead(206, { 'content-length': blob.length, 'content-range': `bytes 0-${blob.length - 1}/${blob.length}` })
        response.end(blob)
      },
    }),
  )
  const { upstream } = createClient(t, registry.origin)
  await assert.rejects(upstream.fetch(blobRequest('library/alpine', 1000)), UpstreamProtocolError)
})

test('a body cut short errors instead of ending cleanly', async (t) => {
  const registry = await startServer(
    t,
    registryHandler({
      blob: (_request, response) => {
        response.writeHead(200, { 'content-length': blob.length })
        response.write(blob.subarray(0, 70_000), () => response.socket?.destroy())
      },
    }),
  )
  const { upstream } = createClient(t, registry.origin)
  const content = await upstream.fetch(blobRequest())
  assert.ok(content !== undefined)
  assert.equal(content.size, blob.length)
  await assert.rejects(readAll(content.body), UpstreamUnavailableError)
})

test('a 206 shorter than the rest of the blob errors at its end, so the caller resumes', async (t) => {
  const registry = await startServer(
    t,
    registryHandler({
      blob: (_request, response) => {
        response.writeHead(206, { 'content-length': 1000, 'content-range': `bytes 5000-5999/${blob.length}` })
        response.end(blob.subarray(5000, 6000))
      },
    }),
  )
  const { upstream } = createClient(t, registry.origin)
  const content = await upstream.fetch(blobRequest('library/alpine', 5000))
  assert.ok(content !== undefined)
  const received: Buffer[] = []
  await assert.rejects(async () => {
    for await (const chunk of content.body) received.push(chunk as Buffer)
  }, UpstreamUnavailableError)
  // The body is a synchronous Transform for throughput; bytes still buffered in it when the short
  // end is detected are discarded with the error (the caller resumes from what it wrote).
  const arrived = Buffer.concat(received)
  assert.ok(arrived.length <= 1000)
  assert.deepEqual(arrived, blob.subarray(5000, 5000 + arrived.length), 'what arrived is a prefix of the right bytes')
})

test('a consumer that destroys the body midway neither crashes nor counts against the breaker', async (t) => {
  const registry = await startServer(
    t,
    registryHandler({
      blob: (_request, response) => {
        response.writeHead(200, { 'content-length': blob.length })
        response.write(blob.subarray(0, 50_000))
      },
    }),
  )
  const { upstream } = createClient(t, registry.origin, { breaker: { failureThreshold: 1, openMs: 30_000 } })
  for (let attempt = 0; attempt < 2; attempt++) {
    const content = await upstream.fetch(blobRequest())
    assert.ok(content !== undefined)
    for await (const chunk of content.body) {
      assert.ok((chunk as Buffer).length > 0)
      break
    }
    assert.equal(content.body.destroyed, true)
  }
  assert.equal(registry.requests.length, 2, 'the breaker stayed closed')
})

test('an upstream that accepts but never answers fails with TimeoutError (firstByte)', async (t) => {
  const registry = await startServer(t, () => {})
  const { upstream } = createClient(t, registry.origin, { timeouts: { connectMs: 2_000, firstByteMs: 300, idleMs: 5_000 } })
  await assert.rejects(upstream.fetch(blobRequest()), (error: unknown) => {
    assert.ok(error instanceof TimeoutError, `expected TimeoutError, got ${String(error)}`)
    assert.equal(error.detail?.phase, 'firstByte')
    assert.equal((error.cause as { code?: string }).code, 'UND_ERR_HEADERS_TIMEOUT')
    return true
  })
  assert.equal(registry.requests.length, 1)
})

test('a body that stalls longer than idleMs errors with TimeoutError (idle)', async (t) => {
  const registry = await startServer(
    t,
    registryHandler({
      blob: (_request, response) => {
        response.writeHead(200, { 'content-length': blob.length })
        response.write(blob.subarray(0, 1000))
      },
    }),
  )
  const { upstream } = createClient(t, registry.origin, { timeouts: { connectMs: 2_000, firstByteMs: 5_000, idleMs: 300 } })
  const content = await upstream.fetch(blobRequest())
  assert.ok(content !== undefined)
  await assert.rejects(readAll(content.body), (error: unknown) => {
    assert.ok(error instanceof TimeoutError, `expected TimeoutError, got ${String(error)}`)
    assert.equal(error.detail?.phase, 'idle')
    return true
  })
})

test("the caller's signal aborts a request in flight with AbortedError", async (t) => {
  let arrived!: () => void
  const requestArrived = new Promise<void>((resolve) => (arrived = resolve))
  const registry = await startServer(t, () => arrived())
  const { upstream } = createClient(t, registry.origin)
  const controller = new AbortController()
  const pending = upstream.fetch(blobRequest('library/alpine', 0, controller.signal))
  await requestArrived
  controller.abort()
  await assert.rejects(pending, AbortedError)
})

test('a refused connection is UpstreamUnavailableError', async (t) => {
  const { upstream } = createClient(t, `http://127.0.0.1:${await closedPort()}`)
  await assert.rejects(upstream.ping({ signal: neverAborted }), UpstreamUnavailableError)
})

test('404 resolves to undefined for tags, manifests and blobs', async (t) => {
  const registry = await startServer(t, registryHandler())
  const { upstream } = createClient(t, registry.origin)
  const signal = neverAborted
  assert.equal(await upstream.resolveTag('library/alpine', 'missing', { signal }), undefined)
  assert.equal(await upstream.fetchManifest('library/alpine', 'missing', { signal }), undefined)
  assert.equal(await upstream.fetchManifest('library/alpine', sha256Digest('other'), { signal }), undefined)
  assert.equal(await upstream.fetch({ ...blobRequest(), digest: sha256Digest('other') }), undefined)
  assert.equal(await upstream.fetch({ ...blobRequest(), kind: 'manifest', digest: sha256Digest('other') }), undefined)
  assert.equal(registry.requests.length, 5)
})

test('resolveTag uses HEAD with the manifest Accept list, identity encoding and the Ferry user agent', async (t) => {
  const registry = await startServer(t, registryHandler())
  const { upstream } = createClient(t, registry.origin)
  const resolved = await upstream.resolveTag('library/alpine', 'latest', { signal: neverAborted })
  assert.deepEqual(resolved, { digest: manifestDigest, mediaType: MediaTypes.ociManifest, size: manifestBytes.length })
  assert.equal(registry.requests.length, 1)
  const head = registry.requests[0]!
  assert.equal(head.method, 'HEAD')
  assert.equal(head.url.pathname, '/v2/library/alpine/manifests/latest')
  assert.equal(head.headers.accept, MANIFEST_ACCEPT)
  assert.equal(head.headers['user-agent'], 'ferry/0.1')
  assert.ok([undefined, 'identity'].includes(head.headers['accept-encoding']))
})

test('resolveTag falls back to GET and hashes the bytes when HEAD has no Docker-Content-Digest', async (t) => {
  const registry = await startServer(t, registryHandler({ announceDigest: false }))
  const { upstream } = createClient(t, registry.origin)
  const resolved = await upstream.resolveTag('library/alpine', 'latest', { signal: neverAborted })
  assert.deepEqual(resolved, { digest: manifestDigest, mediaType: MediaTypes.ociManifest, size: manifestBytes.length })
  assert.deepEqual(
    registry.requests.map((request) => request.method),
    ['HEAD', 'GET'],
  )
})

test('a base URL path prefix is kept in front of /v2/', async (t) => {
  const registry = await startServer(t, registryHandler())
  const { upstream } = createClient(t, `${registry.origin}/mirror/`)
  await upstream.ping({ signal: neverAborted })
  assert.equal(registry.requests[0]!.url.pathname, '/mirror/v2/')
})

test('circuit breaker: opens after N consecutive failures, then fails fast without a request, then probes', async (t) => {
  let healthy = false
  const registry = await startServer(t, (request, response) =>
    healthy ? registryHandler()(request, response) : sendRegistryError(response, 503, 'UNAVAILABLE'),
  )
  const { upstream, clock } = createClient(t, registry.origin, { breaker: { failureThreshold: 3, openMs: 30_000 } })

  for (let attempt = 0; attempt < 3; attempt++) {
    await assert.rejects(upstream.fetch(blobRequest()), UpstreamUnavailableError)
  }
  assert.equal(registry.requests.length, 3)

  await assert.rejects(upstream.fetch(blobRequest()), (error: unknown) => {
    assert.ok(error instanceof UpstreamUnavailableError)
    assert.equal(error.detail?.breaker, 'open')
    return true
  })
  await assert.rejects(upstream.resolveTag('library/alpine', 'latest', { signal: neverAborted }), UpstreamUnavailableError)
  assert.equal(registry.requests.length, 3, 'no request reached the upstream while the breaker was open')

  healthy = true
  clock.advance(29_999)
  await assert.rejects(upstream.fetch(blobRequest()), UpstreamUnavailableError)
  assert.equal(registry.requests.length, 3)

  clock.advance(1)
  assert.deepEqual(await fetchBlob(upstream), blob)
  assert.equal(registry.requests.length, 4, 'the probe went through')
  await fetchBlob(upstream)
  assert.equal(registry.requests.length, 5, 'and closed the breaker')
})

test('circuit breaker: a 404 counts as a success', async (t) => {
  let answer = 503
  const registry = await startServer(t, (_request, response) => sendRegistryError(response, answer, answer === 404 ? 'BLOB_UNKNOWN' : 'UNAVAILABLE'))
  const { upstream } = createClient(t, registry.origin, { breaker: { failureThreshold: 2, openMs: 30_000 } })
  await assert.rejects(upstream.fetch(blobRequest()), UpstreamUnavailableError)
  answer = 404
  assert.equal(await upstream.fetch(blobRequest()), undefined)
  answer = 503
  await assert.rejects(upstream.fetch(blobRequest()), UpstreamUnavailableError)
  await assert.rejects(upstream.fetch(blobRequest()), UpstreamUnavailableError)
  assert.equal(registry.requests.length, 4, 'the 404 reset the count of consecutive failures')
  await assert.rejects(upstream.fetch(blobRequest()), UpstreamUnavailableError)
  assert.equal(registry.requests.length, 4, 'two failures in a row opened it')
})

test('a manifest over 4 MiB is rejected, announced or streamed', async (t) => {
  const huge = Buffer.alloc(MAX_MANIFEST_BYTES + 1, 0x20)
  const registry = await startServer(t, (request, response) => {
    const chunked = request.url.pathname.includes('chunked')
    response.writeHead(200, { 'content-type': MediaTypes.ociManifest, ...(chunked ? {} : { 'content-length': huge.length }) })
    response.end(huge)
  })
  const { upstream } = createClient(t, registry.origin)
  await assert.rejects(upstream.fetchManifest('library/announced', 'latest', { signal: neverAborted }), InvalidManifestError)
  await assert.rejects(upstream.fetchManifest('library/chunked', 'latest', { signal: neverAborted }), InvalidManifestError)
  await assert.rejects(upstream.fetch({ ...blobRequest('library/announced'), kind: 'manifest' }), InvalidManifestError)
})

test('a by-digest manifest that does not match its digest is a DigestMismatchError', async (t) => {
  const other = Buffer.from(manifestBytes.toString('utf8').replace('"schemaVersion":2', '"schemaVersion": 2'))
  const registry = await startServer(t, (request, response) => {
    const lying = request.url.pathname.includes('lying-header')
    response.writeHead(200, {
      'content-type': MediaTypes.ociManifest,
      'docker-content-digest': lying ? sha256Digest(other) : manifestDigest,
      'content-length': (lying ? manifestBytes : other).length,
    })
    response.end(lying ? manifestBytes : other)
  })
  const { upstream } = createClient(t, registry.origin)
  await assert.rejects(upstream.fetchManifest('library/wrong-bytes', manifestDigest, { signal: neverAborted }), DigestMismatchError)
  await assert.rejects(upstream.fetchManifest('library/lying-header', manifestDigest, { signal: neverAborted }), DigestMismatchError)
})

test('metrics count operations by result and token requests', async (t) => {
  const realm = tokenRealm({ prefix: 'metered', expiresIn: 300 })
  const tokenServer = await startServer(t, realm.handler)
  const registry = await startServer(t, registryHandler({ challenge: bearerChallenge(`${tokenServer.origin}/token`, realm.issued) }))
  const metricsRegistry = new Registry()
  const { upstream } = createClient(t, registry.origin, { credentials }, createUpstreamMetrics(metricsRegistry))
  await fetchBlob(upstream)
  assert.equal(await upstream.fetch({ ...blobRequest(), digest: sha256Digest('absent') }), undefined)

  const text = await metricsRegistry.metrics()
  assert.match(text, /ferry_upstream_operations_total\{upstream="test",operation="fetch_blob",result="ok"\} 1/)
  assert.match(text, /ferry_upstream_operations_total\{upstream="test",operation="fetch_blob",result="not_found"\} 1/)
  assert.match(text, /ferry_upstream_token_requests_total\{upstream="test",result="ok"\} 1/)
  assert.match(text, new RegExp(`ferry_upstream_received_bytes_total\\{upstream="test"\\} ${blob.length}`))
})

test('configuration mistakes are caught at construction', () => {
  const logger = new RecordingLogger()
  assert.throws(() => new UpstreamRegistry({ logger }, upstreamConfig('https://user:secret@harbor.example.com')), TypeError)
  assert.throws(() => new UpstreamRegistry({ logger }, upstreamConfig('ftp://harbor.example.com')), TypeError)
  assert.throws(() => new UpstreamRegistry({ logger }, upstreamConfig('https://harbor.example.com', { name: 'has space' })), TypeError)
})

test('listTags passes n and last on and keeps the next-page Link as a path under the base URL', async (t) => {
  const asked: string[] = []
  const registry = await startServer(t, (request, response) => {
    asked.push(`${request.url.pathname}${request.url.search}`)
    if (request.url.pathname === '/mirror/v2/library/alpine/tags/list') {
      response.writeHead(200, {
        'content-type': 'application/json',
        link: '</mirror/v2/library/alpine/tags/list?last=b&n=2>; rel="next"',
      })
      response.end(JSON.stringify({ name: 'library/alpine', tags: ['a', 'b'] }))
      return
    }
    sendRegistryError(response, 404, 'NAME_UNKNOWN')
  })
  const { upstream } = createClient(t, `${registry.origin}/mirror`)
  const page = await upstream.listTags('library/alpine', { n: 2, last: 'x' }, { signal: AbortSignal.timeout(5000) })
  assert.deepEqual(page, { name: 'library/alpine', tags: ['a', 'b'], next: '/v2/library/alpine/tags/list?last=b&n=2' })
  assert.deepEqual(asked, ['/mirror/v2/library/alpine/tags/list?n=2&last=x'])
  assert.equal(await upstream.listTags('library/never', {}, { signal: AbortSignal.timeout(5000) }), undefined)
})

test('a repositoryPrefix (a Harbor proxy-cache project) is put before every repository, in paths and token scopes', async (t) => {
  const scopes: string[] = []
  const tokenServer = await startServer(t, (request, response) => {
    scopes.push(String(request.url.searchParams.get('scope')))
    response.writeHead(200, { 'content-type': 'application/json' })
    response.end(JSON.stringify({ token: 'prefixed-token', expires_in: 300 }))
  })
  const registry = await startServer(
    t,
    registryHandler({ challenge: (request) => (request.headers.authorization ? undefined : `Bearer realm="${tokenServer.origin}/token",service="harbor"`) }),
  )
  const { upstream } = createClient(t, registry.origin, { repositoryPrefix: 'dockerhub-proxy', credentials: { username: 'robot', password: 'pw' } })
  assert.deepEqual(await fetchBlob(upstream), blob)
  assert.ok(await upstream.resolveTag('library/alpine', 'latest', { signal: neverAborted }))
  const paths = registry.requests.map((request) => request.url.pathname)
  assert.ok(paths.length > 0 && paths.every((path) => path.startsWith('/v2/dockerhub-proxy/library/alpine/')), paths.join(' '))
  assert.deepEqual([...new Set(scopes)], ['repository:dockerhub-proxy/library/alpine:pull'])
  assert.throws(() => createClient(t, registry.origin, { repositoryPrefix: 'Not/Valid' }), { name: 'InvalidNameError' })
})
