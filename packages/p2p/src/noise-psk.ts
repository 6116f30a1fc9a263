import { noise, pureJsCrypto, type ICryptoInterface } from '@chainsafe/libp2p-noise'
import { deriveRegionKey } from './region-secret.js'

/**
 * Region membership for libp2p connections: Noise XX whose key schedule is keyed by the region
 * secret.
 *
 * Every `MixKey(ikm)` of the handshake (and the final `Split()`) runs HKDF over `ikm || psk`
 * instead of `ikm`, so every handshake and transport key depends on a 32-byte key derived from the
 * region secret, the way Noise's own `psk` modifier mixes a pre-shared key into the chaining key.
 * A node without the secret cannot decrypt the responder's static key, and the AEAD tag of its own
 * handshake message fails: the handshake aborts before any libp2p protocol (identify, kad-dht) is
 * spoken, so an outsider learns nothing and joins nothing. The prologue binds the handshake to the
 * region's name as well.
 *
 * Why not `@libp2p/pnet`: it adds an unauthenticated XSalsa20 layer under Noise, measured here to
 * silently truncate large writes under backpressure (its WebAssembly memory cannot grow; the reader
 * sees a clean end of stream) and to halve throughput. A connection gater cannot prove knowledge of
 * the secret before identify and kad-dht run. Keying Noise costs nothing, adds no layer and no
 * round trip, and fails closed with an authenticated error.
 */
export function regionNoise(secret: Uint8Array, region: string): ReturnType<typeof noise> {
  const psk = deriveRegionKey(secret, region, 'noise-psk')
  const crypto: ICryptoInterface = {
    ...pureJsCrypto,
    getHKDF(chainingKey, inputKeyMaterial) {
      return pureJsCrypto.getHKDF(chainingKey, Buffer.concat([inputKeyMaterial, psk]))
    },
  }
  return noise({ crypto, prologueBytes: Buffer.from(`/ferry/${region}/noise/v1`) })
}
