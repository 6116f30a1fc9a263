import { once } from 'node:events'
import { createServer, type Server } from 'node:https'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { pipeline } from 'node:stream/promises'
import type { Readable } from 'node:stream'
import type { TLSSocket } from 'node:tls'
import type { BlobStore, ContentKind, FetchedContent, FetchRequest, Logger, TagKey, TagRecord } from '@ferry/interfaces'
import {
  BlobNotFoundError,
  FerryError,
  ManifestNotFoundError,
  NotMirroredError,
  normalizeRegistryHost,
  parseDigest,
  RangeNotSatisfiableError,
  resolveRange,
  validateRepository,
} from '@ferry/oci'
import type { RegionMetrics } from './metrics.js'
import type { NodeCertificate } from './region-ca.js'

/**
 * TLS 1.3 suites for blob transfers, fastest first: AES-128-GCM with AES-NI outruns the default
 * AES-256-GCM; integrity of the content does not rest on TLS anyway (every blob is verified by
 * digest), TLS here is for membership and confidentiality inside the region.
 */
export const TRANSFER_CIPHER_SUITES = 'TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256'

/**
 * The blob transfer service a node offers its region peers.
 *
 * Transport: HTTPS/1.1 over TLS 1.3 with mutual authentication. Both certificates must chain to the
 * region CA (`region-ca.ts`); the requesting peer is the subject CN of its certificate. Measured on
 * loopback here, this moves about twice the bytes per second of a libp2p stream (noise + yamux),
 * and gives Range, resume and ordinary tooling for free.
 *
 * Wire format:
 *
 *   GET|HEAD /ferry/v1/blobs/<digest>          digest: sha256:<64 lowercase hex>
 *     Range: bytes=<first>-[<last>]            optional; resumes a broken transfer
 *
 *   200 OK                    the whole blob; Content-Length: <size>
 *   206 Partial Content       Content-Range: bytes <first>-<last>/<size>; Content-Length: <last - first + 1>
 *     both with: Content-Type: application/octet-stream, Accept-Ranges: bytes,
 *                X-Ferry-Digest: <digest>, X-Ferry-Media-Type: <media type> (manifests, when known)
 *   400 Bad Request           not a valid sha256 digest, or a malformed fetch-through query
 *   404 Not Found             not committed on this node (plain requests: in-progress downloads are not served)
 *   405 Method Not Allowed
 *   416 Range Not Satisfiable Content-Range: bytes * /<size>
 *   429 Too Many Requests     this peer already has `maxTransfersPerPeer` transfers running; Retry-After: 1
 *
 * Fetch-through: the requester computed that this node owns the digest (`rendezvous.ts`) and asks
 * it to fetch what it does not hold, naming where the content comes from:
 *
 *   GET /ferry/v1/blobs/<digest>?kind=blob|manifest&registry=<host>&repository=<name>
 *     Range: bytes=<first>-                    optional, this form only; resumes a broken transfer
 *
 *   A committed blob is answered as above. Otherwise the `fetchThrough` component (the mirror,
 *   with the request marked forwarded) starts or joins this node's one download of the digest, and
 *   the answer streams it as it arrives: 200, or 206 when a Range was sent, with Content-Length of
 *   the whole rest and Content-Range as above, once the size is known. The last byte comes only
 *   after the digest was verified here, so a corrupt upstream is never served whole to peers either.
 *   404 {"error":"not_mirrored"}     this node does not mirror <registry> (never an open proxy)
 *   404 {"error":"not_found"}        no source of this node has the content
 *   416                               <first> is not below the size
 *   502 {"error":"unavailable"}      this node's own sources failed; not the owner's fault
 *   HEAD is answered for committed blobs only, and a forwarded request is never forwarded again.
 *
 * Error answers carry `{"error": "<reason>"}`. A failure after the headers were sent destroys the
 * connection, so the receiver sees a short body (undici reports a Content-Length mismatch) and
 * resumes elsewhere from its offset. The receiver verifies the digest before committing.
 */
export const BLOB_PATH_PREFIX = '/ferry/v1/blobs/'
/**
 * `GET /ferry/v1/tags?registry=<host>&repository=<name>&tag=<tag>`: this node's last-known answer
 * of an upstream for a tag, `{digest, mediaType, size, confirmedAt}`, or 404. Asked only by nodes
 * whose every upstream is down and whose operator turned on `p2p.offlineTags`.
 */
export const TAG_PATH = '/ferry/v1/tags'
export const MEDIA_TYPE_HEADER = 'x-ferry-media-type'
export const DIGEST_HEADER = 'x-ferry-digest'
/**
 * Set on a fetch-through answer that streams this node's in-progress download (not a committed
 * copy): it comes at the pace of an upstream link, so the receiver streams it on to its clients
 * instead of holding it until verified.
 */
export const IN_PROGRESS_HEADER = 'x-ferry-in-progress'

/** Where a fetch-through request says its content comes from (query of the wire format above). */
export interface FetchThroughTarget {
  kind: ContentKind
  registry: string
  repository: string
}

/**
 * Fetches content this node does not hold for a peer (`request.forwarded` is set): rejects with
 * NotMirroredError, BlobNotFoundError/ManifestNotFoundError, RangeNotSatisfiableError (with
 * `detail.size`) or any other error for a failure of this node's sources.
 */
export type FetchThrough = (request: FetchRequest) => Promise<FetchedContent>

const FETCH_THROUGH_RANGE = /^bytes=(\d+)-$/

export interface TransferServerComponents {
  logger: Logger
  blobStore: BlobStore
  metrics: RegionMetrics
  /** The media type to tell peers for a digest (manifests), from the daemon's metadata. */
  mediaTypeOf?: ((digest: string) => Promise<string | undefined>) | undefined
  /** Last-known tag records for peers (offline tags); without it the tag path answers 404. */
  tagOf?: ((key: TagKey) => Promise<TagRecord | undefined>) | undefined
  /** Fetch-through for peers; without it only committed blobs are served. */
  fetchThrough?: FetchThrough | undefined
}

export interface TransferServerInit {
  host: string
  port: number
  caCertificatePem: string
  certificate: NodeCertificate
  maxTransfersPerPeer: number
}

export class TransferServer {
  private readonly server: Server
  private readonly components: TransferServerComponents
  private readonly init: TransferServerInit
  private readonly active = new Map<string, number>()

  private constructor(components: TransferServerComponents, init: TransferServerInit) {
    this.components = components
    this.init = init
    this.server = createServer(
      {
        key: init.certificate.privateKeyPem,
        cert: init.certificate.certificatePem,
        ca: [init.caCertificatePem],
        requestCert: true,
        rejectUnauthorized: true,
        minVersion: 'TLSv1.3',
        ciphers: TRANSFER_CIPHER_SUITES,
      },
      (request, response) => {
        this.handle(request, response).catch((error: unknown) => {
          components.logger.warn({ err: error, url: request.url }, 'blob transfer to peer failed')
          response.destroy()
        })
      },
    )
    this.server.on('tlsClientError', (error) => {
      components.logger.debug({ err: error }, 'refused transfer connection that failed the region TLS handshake')
    })
  }

  static async start(components: TransferServerComponents, init: TransferServerInit): Promise<TransferServer> {
    const transfer = new TransferServer(components, init)
    transfer.server.listen(init.port, init.host)
    await once(transfer.server, 'listening')
    return transfer
  }

  get port(): number {
    return (this.server.address() as AddressInfo).port
  }

  async stop(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()))
    this.server.closeAllConnections()
    await closed
  }

  private async handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const { blobStore, mediaTypeOf } = this.components
    const socket = request.socket as TLSSocket
    const peer = socket.authorized ? String(socket.getPeerCertificate().subject?.CN ?? '') : ''
    if (!peer) return this.refuse(response, 403, 'forbidden', 'peer certificate required')
    if (request.method !== 'GET' && request.method !== 'HEAD') {
      response.setHeader('allow', 'GET, HEAD')
      return this.refuse(response, 405, 'method_not_allowed', 'only GET and HEAD are served')
    }
    const url = new URL(request.url ?? '', 'https://transfer.invalid')
    const path = url.pathname
    if (path === TAG_PATH) return this.serveTag(url.searchParams, response)
    if (!path.startsWith(BLOB_PATH_PREFIX)) return this.refuse(response, 404, 'not_found', 'no such path')
    let digest: string
    try {
      digest = parseDigest(decodeURIComponent(path.slice(BLOB_PATH_PREFIX.length))).digest
    } catch {
      return this.refuse(response, 400, 'bad_request', 'not a sha256 digest')
    }
    let target: FetchThroughTarget | undefined
    try {
      target = fetchThroughTarget(url.searchParams)
    } catch (error) {
      return this.refuse(response, 400, 'bad_request', (error as Error).message)
    }
    const running = this.active.get(peer) ?? 0
    if (running >= this.init.maxTransfersPerPeer) {
      response.setHeader('retry-after', '1')
      return this.refuse(response, 429, 'busy', `at most ${this.init.maxTransfersPerPeer} transfers per peer`)
    }
    this.active.set(peer, running + 1)
    response.once('close', () => {
      const left = (this.active.get(peer) ?? 1) - 1
      if (left > 0) this.active.set(peer, left)
      else this.active.delete(peer)
    })

    const info = await blobStore.stat(digest)
    if (!info) {
      if (target && request.method === 'GET' && this.components.fetchThrough) {
        return this.serveFetchThrough(request, response, { peer, digest, target })
      }
      return this.refuse(response, 404, 'not_found', 'blob not committed here')
    }
    if (target) this.components.metrics.fetchThroughsServed.inc({ result: 'committed' })
    let range: { start: number; end: number } | undefined
    try {
      range = resolveRange(request.headers.range, info.size)
    } catch (error) {
      if (!(error instanceof RangeNotSatisfiableError)) throw error
      response.setHeader('content-range', `bytes */${info.size}`)
      return this.refuse(response, 416, 'range_not_satisfiable', error.message)
    }
    const mediaType = await mediaTypeOf?.(digest)
    const body = request.method === 'GET' ? await blobStore.open(digest, range) : undefined
    if (request.method === 'GET' && !body) return this.refuse(response, 404, 'not_found', 'blob not committed here')
    const start = range?.start ?? 0
    const end = range?.end ?? info.size
    await this.send(response, { peer, digest, size: info.size, start, end, partial: range !== undefined, mediaType, body })
  }

  /** A blob this node does not hold, fetched for the peer by the `fetchThrough` component. */
  private async serveFetchThrough(
    request: IncomingMessage,
    response: ServerResponse,
    { peer, digest, target }: { peer: string; digest: string; target: FetchThroughTarget },
  ): Promise<void> {
    const { fetchThrough, logger, mediaTypeOf, metrics } = this.components
    const rangeHeader = request.headers.range
    const match = rangeHeader === undefined ? undefined : FETCH_THROUGH_RANGE.exec(rangeHeader.trim())
    if (rangeHeader !== undefined && !match) {
      return this.refuse(response, 400, 'bad_request', 'fetch-through takes Range: bytes=<first>- only')
    }
    const offset = match ? Number(match[1]) : 0
    if (!Number.isSafeInteger(offset)) return this.refuse(response, 400, 'bad_request', 'range start out of bounds')
    // The requester hanging up ends the wait; the download itself goes on for whoever else reads it.
    const closed = new AbortController()
    response.once('close', () => closed.abort())
    let content: FetchedContent
    try {
      content = await fetchThrough!({ ...target, digest, offset, signal: closed.signal, forwarded: true })
    } catch (error) {
      const refusal = fetchThroughRefusal(error)
      metrics.fetchThroughsServed.inc({ result: refusal.reason })
      if (refusal.status === 502) logger.warn({ err: error, digest, peer, ...target }, 'fetch-through for a peer failed')
      if (refusal.status === 416 && refusal.size !== undefined) response.setHeader('content-range', `bytes */${refusal.size}`)
      return this.refuse(response, refusal.status, refusal.reason, error instanceof Error ? error.message : String(error))
    }
    if (content.offset !== offset) {
      content.body.destroy()
      throw new Error(`fetch-through answered from offset ${content.offset}, asked for ${offset}`)
    }
    const mediaType = content.mediaType ?? (await mediaTypeOf?.(digest))
    response.setHeader(IN_PROGRESS_HEADER, '1')
    const result = await this.send(response, {
      peer,
      digest,
      size: content.size,
      start: offset,
      end: content.size,
      partial: match !== undefined,
      mediaType,
      body: content.body,
    })
    metrics.fetchThroughsServed.inc({ result })
  }

  /** Answers 200 or 206 with `body` (none for HEAD); a failure midway destroys the connection. */
  private async send(
    response: ServerResponse,
    answer: {
      peer: string
      digest: string
      size: number
      start: number
      end: number
      partial: boolean
      mediaType: string | undefined
      body: Readable | undefined
    },
  ): Promise<'ok' | 'interrupted'> {
    const { metrics } = this.components
    const { peer, digest, size, start, end, partial, mediaType, body } = answer
    response.statusCode = partial ? 206 : 200
    response.setHeader('content-type', 'application/octet-stream')
    response.setHeader('content-length', String(end - start))
    response.setHeader('accept-ranges', 'bytes')
    response.setHeader(DIGEST_HEADER, digest)
    if (partial) response.setHeader('content-range', `bytes ${start}-${end - 1}/${size}`)
    if (mediaType) response.setHeader(MEDIA_TYPE_HEADER, mediaType)
    if (!body) {
      response.end()
      metrics.servedRequests.inc({ result: 'head' })
      return 'ok'
    }
    // Headers go out now: a download being followed may take a while to its first full read.
    response.flushHeaders()
    let sent = 0
    body.on('data', (chunk: Buffer) => {
      sent += chunk.byteLength
    })
    try {
      await pipeline(body, response)
      metrics.servedRequests.inc({ result: 'ok' })
      return 'ok'
    } catch (error) {
      metrics.servedRequests.inc({ result: 'interrupted' })
      this.components.logger.debug({ err: error, digest, peer, sent }, 'transfer to peer ended early')
      return 'interrupted'
    } finally {
      metrics.servedBytes.inc(sent)
    }
  }

  private async serveTag(query: URLSearchParams, response: ServerResponse): Promise<void> {
    const registry = query.get('registry')
    const repository = query.get('repository')
    const tag = query.get('tag')
    if (!registry || !repository || !tag || registry.length > 255 || repository.length > 255 || tag.length > 128) {
      return this.refuse(response, 400, 'bad_request', 'registry, repository and tag are required')
    }
    const record = await this.components.tagOf?.({ registry, repository, tag })
    if (!record) return this.refuse(response, 404, 'not_found', 'no record of this tag')
    const body = JSON.stringify({ digest: record.digest, mediaType: record.mediaType, size: record.size, confirmedAt: record.confirmedAt })
    this.components.metrics.servedRequests.inc({ result: 'tag' })
    response.writeHead(200, { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) })
    response.end(body)
  }

  private refuse(response: ServerResponse, status: number, reason: string, message: string): void {
    this.components.metrics.servedRequests.inc({ result: reason })
    const body = JSON.stringify({ error: reason, message })
    response.statusCode = status
    response.setHeader('content-type', 'application/json')
    response.setHeader('content-length', String(Buffer.byteLength(body)))
    response.end(body)
  }
}

/** The fetch-through query (`kind`, `registry`, `repository`, all or none), or undefined for a plain request. */
function fetchThroughTarget(query: URLSearchParams): FetchThroughTarget | undefined {
  const kind = query.get('kind')
  const registry = query.get('registry')
  const repository = query.get('repository')
  if (kind === null && registry === null && repository === null) return undefined
  if (kind !== 'blob' && kind !== 'manifest') throw new Error('fetch-through needs kind=blob or kind=manifest')
  if (registry === null || repository === null) throw new Error('fetch-through needs registry and repository')
  return { kind, registry: normalizeRegistryHost(registry), repository: validateRepository(repository) }
}

function fetchThroughRefusal(error: unknown): { status: number; reason: string; size?: number } {
  if (error instanceof NotMirroredError) return { status: 404, reason: 'not_mirrored' }
  if (error instanceof BlobNotFoundError || error instanceof ManifestNotFoundError) return { status: 404, reason: 'not_found' }
  if (error instanceof RangeNotSatisfiableError) {
    const size = error.detail?.size
    return { status: 416, reason: 'range_not_satisfiable', ...(typeof size === 'number' ? { size } : {}) }
  }
  if (error instanceof FerryError && (error.code === 'ERR_NAME_INVALID' || error.code === 'ERR_DIGEST_INVALID')) {
    return { status: 400, reason: 'bad_request' }
  }
  return { status: 502, reason: 'unavailable' }
}
