import type { BlobSource, BlobStore, Clock, ContentAnnouncer, Logger, TagKey, TagRecord } from '@ferry/interfaces'
import { identify, type Identify } from '@libp2p/identify'
import type { Connection, Libp2p } from '@libp2p/interface'
import { kadDHT, type KadDHT, type SingleKadDHT } from '@libp2p/kad-dht'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { ping, type Ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { yamux } from '@chainsafe/libp2p-yamux'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'
import type { Registry } from 'prom-client'
import { DhtAnnouncer } from './announcer.js'
import { Bootstrapper, type HostResolver } from './bootstrap.js'
import { DhtContentRouter } from './dht-router.js'
import { loadOrCreateIdentity } from './identity.js'
import { createRegionMetrics, type RegionMetrics } from './metrics.js'
import { regionNoise } from './noise-psk.js'
import { PenaltyBox } from './penalties.js'
import { PeerBlobSource, type RegionMember } from './peer-source.js'
import { regionPeerInfoMapper } from './peer-info-mapper.js'
import { createRegionCertificateAuthority } from './region-ca.js'
import { MIN_SECRET_BYTES } from './region-secret.js'
import { TransferClient } from './transfer-client.js'
import { announcedAddresses, isWildcard, transferUrls } from './transfer-endpoint.js'
import { TransferServer, type FetchThrough } from './transfer-server.js'

export interface RegionConfig {
  /** Region name, e.g. `ap-southeast-1`; part of every protocol id (`/ferry/<region>/kad/1.0.0`). */
  region: string
  /** The region secret (from the PSK file, see `parseRegionSecret`); every key is derived from it. */
  secret: Uint8Array
  /** libp2p listen multiaddrs, e.g. `/ip4/0.0.0.0/tcp/5052`. */
  listen: string[]
  /** Static multiaddrs (with or without `/p2p/<id>`) and `/dns4/<name>/tcp/<port>` names, resolved again periodically. */
  bootstrap: string[]
  /** The blob transfer server; `advertiseHost` is what peers should dial instead of the bound addresses. */
  transfer: { host: string; port: number; advertiseHost?: string }
  /** Holds `peer.key`, the node's persistent identity. */
  identityDir: string
  /** Bound of one DHT look-up. */
  lookupTimeoutMs: number
  /** Providers asked per fetch (at most the DHT's k, 20). */
  maxProviders: number
  /** How long a digest nobody provides is not looked up again. */
  negativeCacheMs: number
  /** How long a failing or lying peer is skipped. */
  penaltyMs: number
  /** How often every stored blob is announced again; shorter than `recordLifetimeMs`. */
  reprovideIntervalMs: number
  /** Transfers served at once to one requesting peer; more are answered 429. */
  maxTransfersPerPeer: number
  /** How long provider records are kept by the peers that store them; default 3 × `reprovideIntervalMs`. */
  recordLifetimeMs?: number
  /** Between bootstrap rounds while connected; default 30 s (rounds retry sooner while alone). */
  bootstrapIntervalMs?: number
  /** libp2p dial bound; default 5 s. */
  dialTimeoutMs?: number
  /** DHT provides running at once; default 16. */
  provideConcurrency?: number
  /** Bound of one DHT provide; default 10 s. */
  provideTimeoutMs?: number
  /**
   * Transfer client bounds: TCP+TLS connect (1 s), response headers (3 s), pause within a body
   * (10 s); for a fetch-through owner, connect (3 s: giving up costs a second upstream fetch) and
   * response headers (15 s: the owner answers once its own download knows the size, after its
   * look-up and its upstream's first byte).
   */
  transferTimeouts?: {
    connectMs?: number
    firstByteMs?: number
    idleMs?: number
    fetchThroughConnectMs?: number
    fetchThroughFirstByteMs?: number
  }
}

export interface RegionNodeComponents {
  logger: Logger
  clock?: Clock
  blobStore: BlobStore
  metrics?: Registry
  /** Media type to send peers with a digest (manifests), e.g. from the daemon's metadata store. */
  mediaTypeOf?: (digest: string) => Promise<string | undefined>
  /** Host name resolution for bootstrap names; default `dns.lookup` with `all: true`. */
  resolve?: HostResolver
  /**
   * Fetches content this node does not hold for a peer that asked it as the digest's owner
   * (region-wide single flight), e.g. the mirror with the request marked forwarded. Without it,
   * fetch-through requests are answered 404 and the requester fetches from its own upstreams.
   */
  fetchThrough?: FetchThrough
  /** This node's last-known tag records, answered to peers asking in offline mode (`p2p.offlineTags`). */
  tagOf?: (key: TagKey) => Promise<TagRecord | undefined>
}

/** Peers asked at once for a last-known tag. */
const TAG_PEERS_ASKED = 5

export interface RegionStatus {
  peerId: string
  region: string
  listen: string[]
  transferUrl: string
  connectedPeers: Array<{ peerId: string; addresses: string[] }>
  routingTableSize: number
  providing: number
  penalised: string[]
}

type RegionServices = { identify: Identify; ping: Ping; dht: KadDHT }

const REGION_NAME = /^[a-z0-9](?:[a-z0-9.-]{0,61}[a-z0-9])?$/
const KAD_STREAM_LIMIT = 256
const USER_AGENT = 'ferry/0.1.0'

/**
 * This node's membership of its region: a libp2p node (TCP, Noise keyed by the region secret,
 * yamux, identify, ping, kad-dht in server mode under `/ferry/<region>/kad/1.0.0`), the blob
 * transfer server peers fetch from, the peer `BlobSource` the pull path asks before upstreams, and
 * the `ContentAnnouncer` that keeps this node's blobs findable.
 */
export class RegionNode {
  readonly peerId: string
  readonly peerSource: BlobSource
  readonly announcer: ContentAnnouncer
  private readonly config: RegionConfig
  private readonly logger: Logger
  private readonly libp2p: Libp2p<RegionServices>
  private readonly transferServer: TransferServer
  private readonly transferClient: TransferClient
  private readonly dhtAnnouncer: DhtAnnouncer
  private readonly bootstrapper: Bootstrapper
  private readonly penalties: PenaltyBox
  private reprovideTimer: NodeJS.Timeout | undefined
  private stopped: Promise<void> | undefined

  private constructor(parts: {
    config: RegionConfig
    logger: Logger
    peerId: string
    libp2p: Libp2p<RegionServices>
    transferServer: TransferServer
    transferClient: TransferClient
    peerSource: PeerBlobSource
    announcer: DhtAnnouncer
    bootstrapper: Bootstrapper
    penalties: PenaltyBox
  }) {
    this.config = parts.config
    this.logger = parts.logger
    this.peerId = parts.peerId
    this.libp2p = parts.libp2p
    this.transferServer = parts.transferServer
    this.transferClient = parts.transferClient
    this.peerSource = parts.peerSource
    this.dhtAnnouncer = parts.announcer
    this.announcer = parts.announcer
    this.bootstrapper = parts.bootstrapper
    this.penalties = parts.penalties
  }

  /**
   * The most recently confirmed answer connected peers remember for a tag (PeerTagSource): for
   * offline mode only, when no upstream can answer. Peers are region members, but a tag from them
   * is their word, not a digest check: the daemon uses it only where its operator chose to.
   */
  async lastKnownTag(key: TagKey, options: { signal: AbortSignal }): Promise<TagRecord | undefined> {
    const members = (await connectedMembers(this.libp2p)).filter((member) => member.addresses.length > 0).slice(0, TAG_PEERS_ASKED)
    const answers = await Promise.all(
      members.map((member) => this.transferClient.lastKnownTag(member.peerId, member.addresses[0]!, key, options.signal)),
    )
    let newest: TagRecord | undefined
    for (const answer of answers) if (answer && (!newest || answer.confirmedAt > newest.confirmedAt)) newest = answer
    return newest
  }

  static async start(components: RegionNodeComponents, config: RegionConfig): Promise<RegionNode> {
    validate(config)
    const { blobStore } = components
    const logger = components.logger.child({ component: 'p2p', region: config.region })
    const clock = components.clock ?? { now: () => Date.now() }
    const privateKey = await loadOrCreateIdentity(config.identityDir)
    const peerId = peerIdFromPrivateKey(privateKey).toString()
    const authority = await createRegionCertificateAuthority(config.secret, config.region)
    const certificate = await authority.issue(peerId)
    const penalties = new PenaltyBox(clock, config.penaltyMs)
    let node: RegionNode | undefined
    const metrics: RegionMetrics = createRegionMetrics(components.metrics, {
      connectedPeers: () => (node ? new Set(node.libp2p.getConnections().map((c) => c.remotePeer.toString())).size : 0),
      routingTableSize: () => (node ? node.routingTableSize() : 0),
      providing: () => node?.dhtAnnouncer.size ?? 0,
      penalised: () => penalties.list().length,
    })

    const transferServer = await TransferServer.start(
      { logger, blobStore, metrics, mediaTypeOf: components.mediaTypeOf, fetchThrough: components.fetchThrough, tagOf: components.tagOf },
      {
        host: config.transfer.host,
        port: config.transfer.port,
        caCertificatePem: authority.certificatePem,
        certificate,
        maxTransfersPerPeer: config.maxTransfersPerPeer,
      },
    )
    const endpoint = { host: config.transfer.host, port: transferServer.port, advertiseHost: config.transfer.advertiseHost }
    const recordLifetimeMs = config.recordLifetimeMs ?? config.reprovideIntervalMs * 3
    let libp2p: Libp2p<RegionServices>
    try {
      libp2p = await createLibp2p<RegionServices>({
        privateKey,
        nodeInfo: { userAgent: USER_AGENT },
        addresses: { listen: config.listen, announceFilter: (addresses) => announcedAddresses(addresses, endpoint) },
        transports: [tcp()],
        connectionEncrypters: [regionNoise(config.secret, config.region)],
        streamMuxers: [yamux()],
        connectionManager: {
          dialTimeout: config.dialTimeoutMs ?? 5_000,
          // Region nodes behind one address (tests, one host) reconnect in bursts; Noise already refuses outsiders.
          inboundConnectionThreshold: 100,
        },
        services: {
          identify: identify(),
          ping: ping(),
          dht: kadDHT({
            protocol: `/ferry/${config.region}/kad/1.0.0`,
            // Automatic mode only turns server on a public address: a region is a private network.
            clientMode: false,
            peerInfoMapper: regionPeerInfoMapper,
            // The defaults (32 in, 64 out per connection) silently drop bursts of provides.
            maxInboundStreams: KAD_STREAM_LIMIT,
            maxOutboundStreams: KAD_STREAM_LIMIT,
            // A lone node answers "nobody" at once instead of waiting for a peer until the deadline.
            allowQueryWithZeroPeers: true,
            reprovide: {
              validity: recordLifetimeMs,
              // kad-dht re-provides this node's records only if our own schedule falls behind.
              threshold: Math.max(0, (recordLifetimeMs - config.reprovideIntervalMs) / 2),
              interval: Math.min(Math.max(recordLifetimeMs / 4, 1_000), 60 * 60 * 1000),
            },
          }),
        },
      })
    } catch (error) {
      await transferServer.stop()
      throw error
    }

    const router = new DhtContentRouter(libp2p.services.dht)
    const transferTimeouts = config.transferTimeouts ?? {}
    const transferClient = new TransferClient({
      caCertificatePem: authority.certificatePem,
      certificate,
      connectTimeoutMs: transferTimeouts.connectMs ?? 1_000,
      firstByteTimeoutMs: transferTimeouts.firstByteMs ?? 3_000,
      idleTimeoutMs: transferTimeouts.idleMs ?? 10_000,
      fetchThroughConnectTimeoutMs: transferTimeouts.fetchThroughConnectMs,
      fetchThroughFirstByteTimeoutMs: transferTimeouts.fetchThroughFirstByteMs,
    })
    const peerSource = new PeerBlobSource(
      { logger, clock, metrics, router, transfers: transferClient, penalties, members: () => connectedMembers(libp2p) },
      {
        self: peerId,
        lookupTimeoutMs: config.lookupTimeoutMs,
        maxProviders: config.maxProviders,
        negativeCacheMs: config.negativeCacheMs,
      },
    )
    const announcer = new DhtAnnouncer(
      { logger, metrics, router, blobStore },
      { concurrency: config.provideConcurrency ?? 16, provideTimeoutMs: config.provideTimeoutMs ?? 10_000 },
    )
    const bootstrapper = new Bootstrapper(
      { logger, libp2p, resolve: components.resolve },
      {
        entries: config.bootstrap,
        intervalMs: config.bootstrapIntervalMs ?? 30_000,
        retryMs: 500,
        dialTimeoutMs: config.dialTimeoutMs ?? 5_000,
      },
    )
    node = new RegionNode({ config, logger, peerId, libp2p, transferServer, transferClient, peerSource, announcer, bootstrapper, penalties })

    await publishOwnAddresses(libp2p, logger)
    // Records provided while the routing table was empty reached no one: provide again once it is not.
    // kad-dht's routing table is an event target, though its public type only shows `size`.
    const routingTable = (libp2p.services.dht as SingleKadDHT).routingTable as unknown as EventTarget & { size: number }
    // kad-dht queries for itself (which finds the rest of the region) 1 s after start and then only
    // every few minutes: nodes that start together and meet the region late would learn only their
    // bootstrap peer. Learning the first peer is the moment to look for the others.
    let refreshing = false
    routingTable.addEventListener('peer:add', () => {
      if (routingTable.size === 1) announcer.requestSweep()
      if (routingTable.size <= 2 && !refreshing) {
        refreshing = true
        ;(libp2p.services.dht as SingleKadDHT)
          .refreshRoutingTable({ signal: AbortSignal.timeout(10_000) })
          .catch((error: unknown) => logger.debug({ err: error }, 'routing table refresh failed'))
          .finally(() => {
            refreshing = false
          })
      }
    })
    bootstrapper.start()
    announcer.requestSweep()
    node.reprovideTimer = setInterval(() => {
      void publishOwnAddresses(libp2p, logger)
      announcer.requestSweep()
    }, config.reprovideIntervalMs)
    node.reprovideTimer.unref()
    logger.info({ peerId, listen: libp2p.getMultiaddrs().map(String), transferPort: transferServer.port }, 'joined region')
    return node
  }

  /** Announces every blob the store holds (also run at start and every `reprovideIntervalMs`). */
  provideAll(): Promise<void> {
    return this.dhtAnnouncer.provideAll()
  }

  /**
   * Connects to a region peer at a libp2p multiaddr (with or without `/p2p/<id>`) and resolves
   * with its peer id; rejects when it is unreachable or not a member of the region.
   */
  async dial(address: string, options: { signal?: AbortSignal } = {}): Promise<string> {
    const signal = options.signal ?? AbortSignal.timeout(this.config.dialTimeoutMs ?? 5_000)
    const connection = await this.libp2p.dial(multiaddr(address), { signal })
    return connection.remotePeer.toString()
  }

  status(): RegionStatus {
    const peers = new Map<string, string[]>()
    for (const connection of this.libp2p.getConnections()) {
      const id = connection.remotePeer.toString()
      peers.set(id, [...(peers.get(id) ?? []), connection.remoteAddr.toString()])
    }
    return {
      peerId: this.peerId,
      region: this.config.region,
      listen: this.libp2p
        .getMultiaddrs()
        .map(String)
        .filter((address) => !address.includes('/tls/http')),
      transferUrl: this.transferUrl(),
      connectedPeers: [...peers].map(([peerId, addresses]) => ({ peerId, addresses })),
      routingTableSize: this.routingTableSize(),
      providing: this.dhtAnnouncer.size,
      penalised: this.penalties.list(),
    }
  }

  stop(): Promise<void> {
    this.stopped ??= (async () => {
      clearInterval(this.reprovideTimer)
      this.bootstrapper.stop()
      this.dhtAnnouncer.stop()
      await Promise.allSettled([this.libp2p.stop(), this.transferServer.stop(), this.transferClient.close()])
      this.logger.info({ peerId: this.peerId }, 'left region')
    })()
    return this.stopped
  }

  private transferUrl(): string {
    const { host, advertiseHost } = this.config.transfer
    const port = this.transferServer.port
    if (advertiseHost) return `https://${bracket(advertiseHost)}:${port}`
    if (!isWildcard(host)) return `https://${bracket(host)}:${port}`
    return transferUrls(this.libp2p.getMultiaddrs()).at(0) ?? `https://${bracket(host)}:${port}`
  }

  private routingTableSize(): number {
    return (this.libp2p.services.dht as SingleKadDHT).routingTable.size
  }
}

/**
 * kad-dht answers GET_PROVIDERS with the addresses its peer store holds for each provider, and
 * libp2p 3 leaves this node's own entry without addresses: a node would never name itself as a
 * provider, so its records would be findable only once they reached other peers (not at all for a
 * node that provided while alone). Its own announced addresses, transfer endpoint included, fix that.
 */
async function publishOwnAddresses(libp2p: Libp2p, logger: Logger): Promise<void> {
  const self = `/p2p/${libp2p.peerId.toString()}`
  const multiaddrs = libp2p.getMultiaddrs().map((address) => (address.toString().endsWith(self) ? address.decapsulate(self) : address))
  try {
    await libp2p.peerStore.patch(libp2p.peerId, { multiaddrs })
  } catch (error) {
    logger.warn({ err: error }, 'could not record own addresses in the peer store')
  }
}

/** The region peers with an open connection, and the transfer endpoints identify told of them. */
async function connectedMembers(libp2p: Libp2p): Promise<RegionMember[]> {
  const peers = new Map<string, Connection['remotePeer']>()
  for (const connection of libp2p.getConnections()) {
    if (connection.status === 'open') peers.set(connection.remotePeer.toString(), connection.remotePeer)
  }
  return Promise.all(
    [...peers].map(async ([peerId, id]) => {
      const peer = await libp2p.peerStore.get(id).catch(() => undefined)
      return { peerId, addresses: peer ? transferUrls(peer.addresses.map((address) => address.multiaddr)) : [] }
    }),
  )
}

function bracket(host: string): string {
  return host.includes(':') ? `[${host}]` : host
}

function validate(config: RegionConfig): void {
  const fail = (key: string, message: string): never => {
    throw new RangeError(`p2p.${key} ${message}`)
  }
  if (!REGION_NAME.test(config.region)) fail('region', 'must be lower-case letters, digits, dots and dashes, e.g. ap-southeast-1')
  if (config.secret.byteLength < MIN_SECRET_BYTES) fail('secret', `must have at least ${MIN_SECRET_BYTES} bytes`)
  if (config.listen.length === 0) fail('listen', 'must name at least one multiaddr')
  if (!config.identityDir) fail('identityDir', 'is required')
  const positive = ['lookupTimeoutMs', 'maxProviders', 'penaltyMs', 'reprovideIntervalMs', 'maxTransfersPerPeer'] as const
  for (const key of positive) if (!(Number.isFinite(config[key]) && config[key] > 0)) fail(key, 'must be a positive number')
  if (!(config.negativeCacheMs >= 0)) fail('negativeCacheMs', 'must not be negative')
  if (config.maxProviders > 20) fail('maxProviders', 'must be at most 20, the DHT bucket size')
  const lifetime = config.recordLifetimeMs
  if (lifetime !== undefined && !(lifetime > config.reprovideIntervalMs)) fail('recordLifetimeMs', 'must be longer than reprovideIntervalMs')
}
