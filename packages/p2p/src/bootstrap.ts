import { lookup } from 'node:dns/promises'
import { networkInterfaces } from 'node:os'
import type { Logger } from '@ferry/interfaces'
import type { Libp2p } from '@libp2p/interface'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'

/** Resolves a host name to addresses; `family` 0 means either. */
export type HostResolver = (name: string, family: 0 | 4 | 6) => Promise<string[]>

export interface BootstrapComponents {
  logger: Logger
  libp2p: Libp2p
  resolve?: HostResolver | undefined
}

export interface BootstrapInit {
  /** Static multiaddrs (with or without `/p2p/<id>`) and `/dns4|dns6|dns/<name>/tcp/<port>` names. */
  entries: string[]
  /** Between two rounds once connected to someone. */
  intervalMs: number
  /** First retry while connected to no one; doubles up to `intervalMs`. */
  retryMs: number
  dialTimeoutMs: number
}

type Target = { kind: 'static'; address: Multiaddr; peerId: string | undefined } | { kind: 'dns'; name: string; family: 0 | 4 | 6; port: number }

/**
 * Joins the region and keeps it joined: dials the static addresses and every address a bootstrap
 * name resolves to (a Kubernetes headless Service resolves to every node), at start and then
 * periodically, skipping targets already connected and this node's own addresses. Names are
 * resolved again each round, so nodes that come later are found and a node that lost its peers
 * finds them again; kad-dht fills its routing table from whoever is connected.
 *
 * A resolved address is dialled as `/ip4/<ip>/tcp/<port>` without a peer id: libp2p 3 learns the
 * id from the Noise handshake.
 */
export class Bootstrapper {
  private readonly components: BootstrapComponents
  private readonly init: BootstrapInit
  private readonly targets: Target[]
  private readonly stopping = new AbortController()
  /** `ip:port` of dialled targets → the peer that answered there. */
  private readonly answered = new Map<string, string>()
  private timer: NodeJS.Timeout | undefined
  private retryMs: number
  private round: Promise<void> | undefined

  constructor(components: BootstrapComponents, init: BootstrapInit) {
    this.components = components
    this.init = init
    this.targets = init.entries.map(parseTarget)
    this.retryMs = init.retryMs
  }

  start(): void {
    if (this.targets.length === 0) return
    this.schedule(0)
  }

  stop(): void {
    this.stopping.abort()
    clearTimeout(this.timer)
  }

  /** One round of dials; resolves when every dial finished. */
  runOnce(): Promise<void> {
    this.round ??= this.dialAll().finally(() => {
      this.round = undefined
    })
    return this.round
  }

  private schedule(delayMs: number): void {
    if (this.stopping.signal.aborted) return
    this.timer = setTimeout(() => {
      this.runOnce()
        .catch((error: unknown) => this.components.logger.warn({ err: error }, 'bootstrap round failed'))
        .finally(() => {
          if (this.components.libp2p.getConnections().length > 0) {
            this.retryMs = this.init.retryMs
            this.schedule(this.init.intervalMs)
          } else {
            const delay = this.retryMs
            this.retryMs = Math.min(this.retryMs * 2, this.init.intervalMs)
            this.schedule(delay)
          }
        })
    }, delayMs)
    this.timer.unref()
  }

  private async dialAll(): Promise<void> {
    const { libp2p, logger } = this.components
    const connectedPeers = new Set(libp2p.getConnections().map((connection) => connection.remotePeer.toString()))
    const self = ownEndpoints(libp2p)
    const dials: Array<{ address: Multiaddr; key: string; peerId: string | undefined }> = []
    for (const target of this.targets) {
      if (target.kind === 'static') {
        const key = endpointKey(target.address)
        const known = target.peerId ?? this.answered.get(key)
        if ((known && connectedPeers.has(known)) || self.has(key) || target.peerId === libp2p.peerId.toString()) continue
        dials.push({ address: target.address, key, peerId: target.peerId })
        continue
      }
      let hosts: string[]
      try {
        hosts = await (this.components.resolve ?? resolveHost)(target.name, target.family)
      } catch (error) {
        logger.warn({ err: error, name: target.name }, 'could not resolve bootstrap name')
        continue
      }
      for (const host of hosts) {
        const key = `${host}:${target.port}`
        const known = this.answered.get(key)
        if ((known && connectedPeers.has(known)) || self.has(key)) continue
        dials.push({ address: multiaddr(`/${host.includes(':') ? 'ip6' : 'ip4'}/${host}/tcp/${target.port}`), key, peerId: undefined })
      }
    }
    await Promise.all(
      dials.map(async ({ address, key }) => {
        if (this.stopping.signal.aborted) return
        try {
          const signal = AbortSignal.any([this.stopping.signal, AbortSignal.timeout(this.init.dialTimeoutMs)])
          const connection = await libp2p.dial(address, { signal })
          this.answered.set(key, connection.remotePeer.toString())
          logger.debug({ address: address.toString(), peer: connection.remotePeer.toString() }, 'connected to bootstrap peer')
        } catch (error) {
          if (!this.stopping.signal.aborted) logger.debug({ err: error, address: address.toString() }, 'could not dial bootstrap peer')
        }
      }),
    )
  }
}

function parseTarget(entry: string): Target {
  const address = multiaddr(entry)
  const components = address.getComponents()
  const [host, tcp] = components
  if (!host || !tcp || tcp.name !== 'tcp' || !tcp.value) throw new RangeError(`bootstrap address ${entry} is not <host>/tcp/<port>`)
  const peerId = components.find((component) => component.name === 'p2p')?.value
  if (host.name === 'dns4' || host.name === 'dns6' || host.name === 'dns') {
    const family = host.name === 'dns4' ? 4 : host.name === 'dns6' ? 6 : 0
    return { kind: 'dns', name: host.value ?? '', family, port: Number(tcp.value) }
  }
  if (host.name !== 'ip4' && host.name !== 'ip6') throw new RangeError(`bootstrap address ${entry} has no IP address or DNS name`)
  return { kind: 'static', address, peerId }
}

async function resolveHost(name: string, family: 0 | 4 | 6): Promise<string[]> {
  // getaddrinfo, like every other program on the host: /etc/hosts, then cluster DNS; every A/AAAA record.
  const addresses = await lookup(name, { all: true, family })
  return [...new Set(addresses.map((entry) => entry.address))]
}

function endpointKey(address: Multiaddr): string {
  const [host, tcp] = address.getComponents()
  return `${host?.value ?? ''}:${tcp?.value ?? ''}`
}

/** `ip:port` pairs this node listens on, wildcards expanded to every local interface address. */
function ownEndpoints(libp2p: Libp2p): Set<string> {
  const ports = new Set<string>()
  const endpoints = new Set<string>()
  for (const address of libp2p.getMultiaddrs()) {
    const [host, tcp, next] = address.getComponents()
    if (!host || tcp?.name !== 'tcp' || (next && next.name !== 'p2p')) continue
    ports.add(tcp.value ?? '')
    endpoints.add(`${host.value}:${tcp.value}`)
  }
  for (const entries of Object.values(networkInterfaces())) {
    for (const entry of entries ?? []) for (const port of ports) endpoints.add(`${entry.address}:${port}`)
  }
  return endpoints
}
