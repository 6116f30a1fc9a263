import type { PeerCertificate } from 'node:tls'
import type { FetchedContent, TagKey, TagRecord } from '@ferry/interfaces'
import { AbortedError, FerryError, TimeoutError, UpstreamProtocolError, UpstreamUnavailableError, isDigest } from '@ferry/oci'
import { Agent, request } from 'undici'
import type { NodeCertificate } from './region-ca.js'
import { BLOB_PATH_PREFIX, IN_PROGRESS_HEADER, MEDIA_TYPE_HEADER, TAG_PATH, TRANSFER_CIPHER_SUITES, type FetchThroughTarget } from './transfer-server.js'

/** Why a peer failed, as counted in `ferry_p2p_peer_errors_total{kind}` (see `metrics.ts`). */
export type PeerErrorKind = 'connect' | 'tls' | 'timeout' | 'status' | 'protocol' | 'stream' | 'corrupt'

export interface TransferClientInit {
  caCertificatePem: string
  certificate: NodeCertificate
  /** TCP and TLS handshake. */
  connectTimeoutMs: number
  /** From the request to the response headers. */
  firstByteTimeoutMs: number
  /**
   * TCP and TLS handshake with a fetch-through owner (default 3 s): giving up on it costs a second
   * fetch from the upstreams rather than a try at the next provider, so a busy owner gets longer.
   */
  fetchThroughConnectTimeoutMs?: number | undefined
  /**
   * From a fetch-through request to the response headers (default 15 s): the owner answers once its
   * own download knows the size, after its DHT look-up and its upstream's first byte.
   */
  fetchThroughFirstByteTimeoutMs?: number | undefined
  /** Longest pause between two body chunks. */
  idleTimeoutMs: number
}

/**
 * `not_found`: not committed there (or, for a fetch-through, not mirrored or found by the owner);
 * `busy`: too many transfers from this node; `unavailable`: a fetch-through owner's own sources failed.
 */
export type TransferResult =
  | { outcome: 'ok'; content: FetchedContent }
  | { outcome: 'not_found' }
  | { outcome: 'busy' }
  | { outcome: 'unavailable' }

/**
 * Bytes the response body may buffer while its reader is busy. A reader that writes each chunk to
 * disk then takes up to this much per read instead of TLS-record-sized pieces: measured here, the
 * disk store commits 16 KiB writes at ~200 MB/s and 256 KiB+ writes at 600-800 MB/s.
 */
const BODY_HIGH_WATER_MARK = 1024 * 1024

const TLS_ERROR_CODES = new Set([
  'ERR_FERRY_PEER_IDENTITY',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_SIGNATURE_FAILURE',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
])

/**
 * Fetches blobs from region peers over the transfer protocol (`transfer-server.ts`). One undici
 * agent per peer (and another for fetch-through requests, with their own bounds): its TLS check
 * accepts only a certificate from the region CA whose CN is that peer's id, and its connections
 * are reused across that peer's transfers.
 */
export class TransferClient {
  private readonly init: TransferClientInit
  private readonly agents = new Map<string, Agent>()

  constructor(init: TransferClientInit) {
    this.init = init
  }

  /** Asks `peerId` for its last-known record of a tag; undefined when it has none or cannot answer. */
  async lastKnownTag(peerId: string, baseUrl: string, key: TagKey, signal: AbortSignal): Promise<TagRecord | undefined> {
    const query = new URLSearchParams({ registry: key.registry, repository: key.repository, tag: key.tag })
    try {
      const response = await request(`${baseUrl}${TAG_PATH}?${query}`, { dispatcher: this.agentFor(peerId, false), method: 'GET', signal })
      if (response.statusCode !== 200) {
        await response.body.dump().catch(() => undefined)
        return undefined
      }
      const record = (await response.body.json()) as Partial<TagRecord>
      if (typeof record.digest !== 'string' || !isDigest(record.digest)) return undefined
      if (typeof record.mediaType !== 'string' || typeof record.size !== 'number' || typeof record.confirmedAt !== 'number') return undefined
      return { digest: record.digest, mediaType: record.mediaType, size: record.size, confirmedAt: record.confirmedAt }
    } catch {
      return undefined
    }
  }

  /**
   * Asks `peerId` at `baseUrl` for `digest` from `offset`; with `through`, as a fetch-through of
   * content the peer may not hold yet. Resolves with the response body, or with
   * `not_found`/`busy`/`unavailable`; throws a FerryError whose `detail.kind` is a PeerErrorKind.
   */
  async fetch(
    peerId: string,
    baseUrl: string,
    digest: string,
    offset: number,
    signal: AbortSignal,
    options: { through?: FetchThroughTarget } = {},
  ): Promise<TransferResult> {
    const { through } = options
    const query = through ? `?${new URLSearchParams({ kind: through.kind, registry: through.registry, repository: through.repository })}` : ''
    const url = `${baseUrl}${BLOB_PATH_PREFIX}${digest}${query}`
    const detail = { peer: peerId, url }
    let response: Awaited<ReturnType<typeof request>>
    try {
      response = await request(url, {
        dispatcher: this.agentFor(peerId, through !== undefined),
        method: 'GET',
        headers: offset > 0 ? { range: `bytes=${offset}-` } : {},
        signal,
        highWaterMark: BODY_HIGH_WATER_MARK,
      })
    } catch (error) {
      throw peerError(error, signal, detail)
    }
    const { statusCode, headers, body } = response
    const header = (name: string) => {
      const value = headers[name]
      return Array.isArray(value) ? value[0] : value
    }
    const fail = (kind: PeerErrorKind, message: string): never => {
      body.destroy()
      throw new (kind === 'protocol' ? UpstreamProtocolError : UpstreamUnavailableError)(`peer ${peerId} ${message}`, {
        detail: { ...detail, kind, status: statusCode },
      })
    }
    if (statusCode === 404 || statusCode === 429 || (through && statusCode === 502)) {
      await body.dump().catch(() => undefined)
      return { outcome: statusCode === 404 ? 'not_found' : statusCode === 429 ? 'busy' : 'unavailable' }
    }
    if (statusCode !== 200 && statusCode !== 206) return fail('status', `answered ${statusCode}`)
    const length = Number(header('content-length'))
    if (!Number.isSafeInteger(length) || length < 0) return fail('protocol', 'sent no valid Content-Length')
    let size = length
    if (statusCode === 206) {
      const match = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(header('content-range') ?? '')
      const [first, last, total] = match ? [Number(match[1]), Number(match[2]), Number(match[3])] : [NaN, NaN, NaN]
      if (first !== offset || last !== total - 1 || length !== total - offset) {
        return fail('protocol', `answered range ${JSON.stringify(header('content-range'))} for bytes=${offset}-`)
      }
      size = total
    } else if (offset !== 0) {
      return fail('protocol', `ignored bytes=${offset}-`)
    }
    const mediaType = header(MEDIA_TYPE_HEADER)
    // A committed copy comes fast from inside the region, and a lying peer is the risk: its bytes
    // reach clients only once verified. An owner's in-progress download (marked by the owner)
    // comes at the pace of its upstream link: holding that back could leave a client without a
    // byte for minutes (containerd's CRI cancels a pull after 5 minutes without progress), so it
    // streams like an upstream, last byte held until verified.
    const holdUntilVerified = header(IN_PROGRESS_HEADER) !== '1'
    return { outcome: 'ok', content: { size, offset, body, holdUntilVerified, ...(mediaType ? { mediaType } : {}) } }
  }

  async close(): Promise<void> {
    const agents = [...this.agents.values()]
    this.agents.clear()
    await Promise.all(agents.map((agent) => agent.destroy().catch(() => undefined)))
  }

  private agentFor(peerId: string, fetchThrough: boolean): Agent {
    const key = fetchThrough ? `${peerId} fetch-through` : peerId
    let agent = this.agents.get(key)
    if (!agent) {
      const { caCertificatePem, certificate } = this.init
      agent = new Agent({
        connect: {
          ca: [caCertificatePem],
          cert: certificate.certificatePem,
          key: certificate.privateKeyPem,
          minVersion: 'TLSv1.3',
          ciphers: TRANSFER_CIPHER_SUITES,
          rejectUnauthorized: true,
          timeout: fetchThrough ? (this.init.fetchThroughConnectTimeoutMs ?? 3_000) : this.init.connectTimeoutMs,
          checkServerIdentity: (_host: string, peerCertificate: PeerCertificate) => checkPeerIdentity(peerId, peerCertificate),
        },
        headersTimeout: fetchThrough ? (this.init.fetchThroughFirstByteTimeoutMs ?? 15_000) : this.init.firstByteTimeoutMs,
        bodyTimeout: this.init.idleTimeoutMs,
      })
      this.agents.set(key, agent)
    }
    return agent
  }
}

/** The provider must be the peer the DHT named: its certificate (already chained to the region CA) names it. */
function checkPeerIdentity(peerId: string, certificate: PeerCertificate): Error | undefined {
  const name = certificate.subject?.CN
  if (name === peerId) return undefined
  return Object.assign(new Error(`transfer endpoint presented a certificate for ${String(name)}, expected peer ${peerId}`), {
    code: 'ERR_FERRY_PEER_IDENTITY',
  })
}

/** What a transport failure says about the peer. */
export function peerErrorKind(error: unknown): PeerErrorKind {
  if (error instanceof FerryError && typeof error.detail?.kind === 'string') return error.detail.kind as PeerErrorKind
  const code = typeof error === 'object' && error !== null ? String((error as { code?: unknown }).code ?? '') : ''
  if (code === 'UND_ERR_CONNECT_TIMEOUT' || code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT' || code === 'ETIMEDOUT') {
    return 'timeout'
  }
  if (TLS_ERROR_CODES.has(code) || code.startsWith('ERR_TLS') || code.startsWith('ERR_SSL')) return 'tls'
  return 'connect'
}

function peerError(error: unknown, signal: AbortSignal, detail: Record<string, unknown>): FerryError {
  if (signal.aborted) return new AbortedError(`transfer from peer ${String(detail.peer)} was aborted`, { cause: error, detail })
  const kind = peerErrorKind(error)
  const reason = error instanceof Error ? error.message : String(error)
  const ErrorClass = kind === 'timeout' ? TimeoutError : UpstreamUnavailableError
  return new ErrorClass(`peer ${String(detail.peer)} could not be reached: ${reason}`, { cause: error, detail: { ...detail, kind } })
}
