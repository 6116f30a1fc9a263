import type { ServerResponse } from 'node:http'
import { pipeline } from 'node:stream/promises'
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { Logger } from '@ferry/interfaces'
import type { Mirror } from '@ferry/mirror'
import { FerryError, InvalidNameError, MediaTypes, ociErrorBody, NotMirroredError, UnsupportedError, normalizeRegistryHost } from '@ferry/oci'
import { ociErrorFor } from './oci-errors.js'
import { parseV2Path, type V2Route } from './paths.js'

export interface RegistryApiInit {
  /** Registry for requests without containerd's `?ns=` (skopeo, crane, docker's registry-mirrors). */
  defaultRegistry: string | undefined
  /**
   * Where the registry of a request comes from: containerd's `?ns=` (mirror mode, the default), or
   * the Host header (proxy mode, where the client talks to the registry's own name).
   */
  registryFrom?: 'ns' | 'host'
  /**
   * Proxy mode: requests Ferry does not serve itself (pushes, the `/v2/` ping, other paths) go here,
   * to be forwarded to the real registry, instead of answering UNSUPPORTED.
   */
  passthrough?: (request: FastifyRequest, reply: FastifyReply) => Promise<void>
}

export interface RegistryApiComponents {
  mirror: Mirror
  logger: Logger
}

const API_VERSION_HEADER = { 'docker-distribution-api-version': 'registry/2.0' }

/**
 * The OCI distribution pull API: `GET|HEAD /v2/`, `/v2/<name>/manifests/<reference>` and
 * `/v2/<name>/blobs/<digest>`; everything else under `/v2/` answers an OCI error. Content responses
 * are written straight to the socket so that headers are exact (no Content-Encoding, the length
 * given) and bodies stream with the socket's backpressure; an error after the headers went out
 * can only destroy the socket.
 */
export async function registerRegistryApi(app: FastifyInstance, components: RegistryApiComponents, init: RegistryApiInit): Promise<void> {
  const { mirror, logger } = components
  const defaultRegistry = init.defaultRegistry === undefined ? undefined : normalizeRegistryHost(init.defaultRegistry)

  // Push bodies are never parsed: they are refused as UNSUPPORTED below, whatever their type.
  app.removeAllContentTypeParsers()
  app.addContentTypeParser('*', (_request, _payload, done) => done(null, undefined))

  app.route({
    method: ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE'],
    url: '/v2',
    handler: async (request, reply) => handle(request, reply),
  })
  app.route({
    method: ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE'],
    url: '/v2/*',
    handler: async (request, reply) => handle(request, reply),
  })

  async function handle(request: FastifyRequest, reply: FastifyReply): Promise<void> {
    const url = new URL(request.raw.url ?? '/', 'http://ferry.invalid')
    const { passthrough } = init
    let route: V2Route
    try {
      route = parseV2Path(url.pathname)
    } catch (error) {
      if (passthrough && error instanceof UnsupportedError) return passthrough(request, reply)
      throw error
    }
    if (request.method !== 'GET' && request.method !== 'HEAD') {
      if (passthrough) return passthrough(request, reply)
      throw new UnsupportedError(`${request.method} is not supported: Ferry is a pull-only mirror`)
    }
    if (route.kind === 'base' && passthrough) return passthrough(request, reply)
    if (route.kind === 'base') {
      reply.headers({ ...API_VERSION_HEADER, 'content-type': 'application/json' })
      return reply.send({})
    }
    const registry = registryOf(url, request)
    const head = request.method === 'HEAD'
    const log = logger.child({ reqId: request.id, registry, repository: route.repository })

    if (route.kind === 'tags') {
      const n = url.searchParams.get('n')
      const last = url.searchParams.get('last')
      const page: { n?: number; last?: string } = {}
      if (n !== null) {
        if (!/^\d{1,6}$/.test(n)) throw new InvalidNameError(`invalid page size n=${JSON.stringify(n.slice(0, 20))}`)
        page.n = Number(n)
      }
      if (last !== null) page.last = last.slice(0, 256)
      const list = await mirror.listTags(registry, route.repository, page)
      const namespace = url.searchParams.get('ns')
      if (list.next !== undefined) {
        // Clients follow the link back to Ferry, keeping containerd's ?ns= when it was given.
        const next = new URL(list.next, 'http://ferry.invalid')
        if (namespace !== null) next.searchParams.set('ns', namespace)
        reply.header('link', `<${next.pathname}${next.search}>; rel="next"`)
      }
      reply.headers({ ...API_VERSION_HEADER, 'content-type': 'application/json' })
      return reply.send({ name: list.name, tags: list.tags })
    }

    if (route.kind === 'manifest') {
      const digest =
        route.reference.kind === 'digest'
          ? route.reference.digest
          : await resolveTagDigest(registry, route.repository, route.reference.tag, head, reply)
      if (digest === undefined) return
      const manifest = await mirror.manifest(registry, route.repository, digest)
      const headers = {
        ...API_VERSION_HEADER,
        'content-type': manifest.mediaType,
        'content-length': String(manifest.size),
        'docker-content-digest': manifest.digest,
        etag: `"${manifest.digest}"`,
      }
      writeHead(reply, 200, headers)
      reply.raw.end(head ? undefined : manifest.bytes)
      if (!head) mirror.recordServed('manifest', manifest.source, manifest.size)
      return
    }

    if (head) {
      const { size } = await mirror.statBlob(registry, route.repository, route.digest)
      writeHead(reply, 200, blobHeaders(route.digest, size))
      reply.raw.end()
      return
    }
    const rangeHeader = request.headers.range
    const blob = await mirror.blob(registry, route.repository, route.digest, rangeHeader)
    const headers = blobHeaders(route.digest, blob.range ? blob.range.end - blob.range.start : blob.size)
    if (blob.range) headers['content-range'] = `bytes ${blob.range.start}-${blob.range.end - 1}/${blob.size}`
    writeHead(reply, blob.range ? 206 : 200, headers)
    // Node holds headers back until the first body byte; a body held until verification (bytes
    // from a peer) may be seconds away, and the client should know at once that it is coming.
    reply.raw.flushHeaders()
    let sent = 0
    blob.body.on('data', (chunk: Buffer) => {
      sent += chunk.byteLength
    })
    try {
      await pipeline(blob.body, reply.raw)
    } catch (error) {
      log.warn({ err: error, digest: route.digest, sent, size: blob.size }, 'blob response broken off')
      reply.raw.destroy()
    } finally {
      mirror.recordServed('blob', blob.source, sent)
    }
  }

  /**
   * A HEAD by tag answers from the upstream's descriptor, without fetching the manifest; a GET goes
   * on to serve the manifest by digest.
   */
  async function resolveTagDigest(registry: string, repository: string, tag: string, head: boolean, reply: FastifyReply) {
    const resolved = await mirror.resolveTag(registry, repository, tag)
    if (!head) return resolved.digest
    writeHead(reply, 200, {
      ...API_VERSION_HEADER,
      'content-type': resolved.mediaType,
      'content-length': String(resolved.size),
      'docker-content-digest': resolved.digest,
      etag: `"${resolved.digest}"`,
    })
    reply.raw.end()
    return undefined
  }

  function registryOf(url: URL, request: FastifyRequest): string {
    if (init.registryFrom === 'host') {
      const host = (request.headers.host ?? '').replace(/:443$/, '')
      return normalizeRegistryHost(host)
    }
    const namespace = url.searchParams.get('ns')
    if (namespace !== null) return normalizeRegistryHost(namespace)
    if (defaultRegistry === undefined) {
      throw new NotMirroredError('request names no registry (?ns=) and no default registry is configured')
    }
    return defaultRegistry
  }
}

function blobHeaders(digest: string, length: number): Record<string, string> {
  return {
    ...API_VERSION_HEADER,
    'content-type': MediaTypes.octetStream,
    'content-length': String(length),
    'docker-content-digest': digest,
    'accept-ranges': 'bytes',
    etag: `"${digest}"`,
  }
}

function writeHead(reply: FastifyReply, status: number, headers: Record<string, string>): void {
  reply.hijack()
  const raw: ServerResponse = reply.raw
  raw.writeHead(status, headers)
}

/** Writes every error, from routes or from fastify itself, as an OCI error body. */
export function ociErrorHandler(logger: Logger) {
  return (error: unknown, request: FastifyRequest, reply: FastifyReply) => {
    const { status, body } = ociErrorFor(error)
    const context = { reqId: request.id, status, code: body.errors[0]?.code, url: request.url.slice(0, 300) }
    // Client mistakes are routine; only failures of Ferry or its sources deserve a stack.
    if (status >= 500) logger.warn({ ...context, err: error }, 'request failed')
    else logger.info({ ...context, reason: (error as Error).message }, 'request refused')
    if (reply.sent || reply.raw.headersSent) {
      reply.raw.destroy()
      return
    }
    if (error instanceof FerryError && error.code === 'ERR_RANGE_INVALID' && typeof error.detail?.size === 'number') {
      reply.header('content-range', `bytes */${error.detail.size}`)
    }
    reply.code(status).headers({ ...API_VERSION_HEADER, 'content-type': 'application/json' }).send(body)
  }
}

/**
 * Fastify's `frameworkErrors`: what its router refuses before any route runs (a malformed
 * percent-encoding in the path, an over-long parameter) would otherwise get fastify's own JSON
 * body instead of an OCI error.
 */
export function ociFrameworkErrorHandler(logger: Logger) {
  const handle = ociErrorHandler(logger)
  return (error: FastifyError, request: FastifyRequest, reply: FastifyReply) => {
    if (error.code === 'FST_ERR_BAD_URL') {
      handle(new InvalidNameError('malformed percent-encoding in the request path', { cause: error }), request, reply)
    } else if (error.code === 'FST_ERR_MAX_PARAM_LENGTH') {
      handle(new InvalidNameError('request path too long', { cause: error }), request, reply)
    } else {
      handle(error, request, reply)
    }
  }
}

/** Paths outside the API answer an OCI error too. */
export function ociNotFoundHandler(request: FastifyRequest, reply: FastifyReply) {
  reply
    .code(404)
    .headers({ ...API_VERSION_HEADER, 'content-type': 'application/json' })
    .send(ociErrorBody('NAME_UNKNOWN', `no such endpoint: ${request.method} ${request.url.slice(0, 200)}`))
}
