import { createHash } from 'node:crypto'

/**
 * Rendezvous (highest-random-weight) hashing: which member of the region fetches a digest that no
 * peer holds yet, so that the region's nodes agree on one without talking to each other.
 *
 * The weight of a peer for a digest is `sha256(peerId || digest)`, over the UTF-8 of the peer id
 * string (`12D3Koo...`) followed by the UTF-8 of the digest string (`sha256:<hex>`), compared as
 * 32-byte big-endian numbers; the owner is the candidate with the largest weight. Nodes that see
 * the same members pick the same owner; a member joining or leaving moves only the digests it
 * wins or owned.
 *
 * Every node counts itself among the candidates, so a node that hands a digest to an owner gave it
 * to a peer of strictly larger weight: requests can be handed on along a chain of views that
 * disagree, but never around a cycle.
 */
export function rendezvousOwner(digest: string, candidates: Iterable<string>): string | undefined {
  let owner: string | undefined
  let best: Buffer | undefined
  for (const peerId of candidates) {
    const weight = rendezvousWeight(peerId, digest)
    const order = best === undefined ? 1 : Buffer.compare(weight, best)
    // Equal weights (never seen with sha256) fall to the smaller id, so every node still agrees.
    if (order > 0 || (order === 0 && owner !== undefined && peerId < owner)) {
      owner = peerId
      best = weight
    }
  }
  return owner
}

export function rendezvousWeight(peerId: string, digest: string): Buffer {
  return createHash('sha256').update(peerId, 'utf8').update(digest, 'utf8').digest()
}
