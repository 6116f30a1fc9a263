import type { PeerInfo } from '@libp2p/interface'
import { isLoopbackHost } from './transfer-endpoint.js'

/**
 * The addresses kad-dht keeps and passes on for a peer. A region is a private network, so private
 * addresses are the useful ones: kad-dht's default mapper (which drops private and loopback
 * addresses) would leave every peer unreachable. Loopback addresses are dropped only when the peer
 * has others: dialled elsewhere, they reach the dialler itself.
 */
export function regionPeerInfoMapper(peer: PeerInfo): PeerInfo {
  const reachable = peer.multiaddrs.filter((address) => {
    const [host] = address.getComponents()
    return !(host && (host.name === 'ip4' || host.name === 'ip6') && isLoopbackHost(host.value ?? ''))
  })
  return reachable.length > 0 && reachable.length < peer.multiaddrs.length ? { ...peer, multiaddrs: reachable } : peer
}
