import { isIP } from 'node:net'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'

/**
 * How the fetching side finds a provider's blob transfer endpoint: it travels with the provider's
 * libp2p addresses, as the multiaddr of an HTTPS endpoint,
 *
 *   /ip4/<address>/tcp/<port>/tls/http      (or /ip6/..., /dns4/<name>/..., /dns6/..., /dns/...)
 *
 * which libp2p's address manager announces beside the node's own libp2p addresses (its announce
 * filter appends them). Identify gives them to connected peers, and kad-dht copies a provider's
 * addresses into every provider record it stores and returns, so a look-up yields who has a blob
 * and where to fetch it in one answer, with no extra round trip or protocol. libp2p itself never
 * dials them: no configured transport handles `/tls/http`.
 *
 * Loopback addresses are announced only when a node has nothing else (tests, one host): a peer
 * that dials another node's loopback address reaches itself.
 */
export interface TransferEndpoint {
  /** Address the transfer server is bound to; `0.0.0.0` or `::` to advertise the libp2p addresses' IPs. */
  host: string
  port: number
  /** Name or address peers should use instead, e.g. the node's IP in a Kubernetes host network. */
  advertiseHost?: string | undefined
}

const HOST_PROTOCOLS = new Set(['ip4', 'ip6', 'dns4', 'dns6', 'dns'])

/** The addresses to announce: the libp2p ones (loopback only if nothing else) plus the transfer endpoint's. */
export function announcedAddresses(addresses: Multiaddr[], endpoint: TransferEndpoint): Multiaddr[] {
  const libp2pAddresses = addresses.filter((address) => !isHttpAddress(address))
  const reachable = libp2pAddresses.filter((address) => !isLoopbackAddress(address))
  const kept = reachable.length > 0 ? reachable : libp2pAddresses
  return [...kept, ...transferAddresses(kept, endpoint)]
}

function transferAddresses(libp2pAddresses: Multiaddr[], endpoint: TransferEndpoint): Multiaddr[] {
  if (endpoint.advertiseHost) return [httpAddress(endpoint.advertiseHost, endpoint.port)]
  if (!isWildcard(endpoint.host)) return [httpAddress(endpoint.host, endpoint.port)]
  const hosts = new Map<string, Multiaddr>()
  for (const address of libp2pAddresses) {
    const [host] = address.getComponents()
    if (host && (host.name === 'ip4' || host.name === 'ip6') && host.value && !hosts.has(host.value)) {
      hosts.set(host.value, httpAddress(host.value, endpoint.port))
    }
  }
  return [...hosts.values()]
}

/** `https://` base URLs of the transfer endpoints among a provider's addresses, reachable ones first. */
export function transferUrls(addresses: Iterable<Multiaddr>): string[] {
  const urls: Array<{ url: string; loopback: boolean }> = []
  for (const address of addresses) {
    const components = address.getComponents()
    const [host, tcp, tls, http] = components
    if (!host || !tcp || !tls || !http || !HOST_PROTOCOLS.has(host.name) || tcp.name !== 'tcp' || tls.name !== 'tls' || http.name !== 'http') continue
    if (components.slice(4).some((component) => component.name !== 'p2p')) continue
    const name = host.name === 'ip6' ? `[${host.value}]` : host.value
    const url = `https://${name}:${Number(tcp.value)}`
    if (!urls.some((known) => known.url === url)) urls.push({ url, loopback: isLoopbackHost(host.value ?? '') })
  }
  return [...urls.filter((entry) => !entry.loopback), ...urls.filter((entry) => entry.loopback)].map((entry) => entry.url)
}

export function httpAddress(host: string, port: number): Multiaddr {
  const family = isIP(host)
  const protocol = family === 4 ? 'ip4' : family === 6 ? 'ip6' : 'dns'
  return multiaddr(`/${protocol}/${host}/tcp/${port}/tls/http`)
}

export function isWildcard(host: string): boolean {
  return host === '0.0.0.0' || host === '::' || host === ''
}

function isHttpAddress(address: Multiaddr): boolean {
  return address.getComponents().some((component) => component.name === 'http' || component.name === 'https')
}

function isLoopbackAddress(address: Multiaddr): boolean {
  const [host] = address.getComponents()
  return host !== undefined && (host.name === 'ip4' || host.name === 'ip6') && isLoopbackHost(host.value ?? '')
}

export function isLoopbackHost(host: string): boolean {
  return host.startsWith('127.') || host === '::1' || host === 'localhost'
}
