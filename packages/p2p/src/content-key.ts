import { digestBytes } from '@ferry/oci'
import { CID } from 'multiformats/cid'
import * as Digest from 'multiformats/hashes/digest'

const RAW_CODEC = 0x55
const SHA2_256 = 0x12

/**
 * The DHT key of content: CIDv1, raw codec (0x55), sha2-256 multihash (0x12) wrapping the
 * digest's own 32 bytes. The blob's content hash is its key, so every node derives the same key
 * without coordination and the CID names exactly the bytes it stands for.
 */
export function contentKey(digest: string): CID {
  return CID.createV1(RAW_CODEC, Digest.create(SHA2_256, digestBytes(digest)))
}
