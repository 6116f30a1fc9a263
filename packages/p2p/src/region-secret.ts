import { hkdfSync } from 'node:crypto'

/**
 * Everything a region's members share is derived from one secret with HKDF-SHA256, a distinct
 * label per use, and the region's name, so that no two uses (or regions) ever share key material:
 *
 *   key(label) = HKDF-SHA256(ikm = secret, salt = "ferry/region/v1", info = "ferry/<region>/<label>")
 *
 * Labels in use: `noise-psk` (libp2p connections, see `noise-psk.ts`) and `region-ca-p256/<n>`
 * (the region CA's private scalar, see `region-ca.ts`).
 */
const SALT = 'ferry/region/v1'

/** Shortest secret accepted: anything shorter could be guessed. */
export const MIN_SECRET_BYTES = 16

export function deriveRegionKey(secret: Uint8Array, region: string, label: string, length = 32): Buffer {
  if (secret.byteLength < MIN_SECRET_BYTES) {
    throw new RangeError(`region secret has ${secret.byteLength} bytes; at least ${MIN_SECRET_BYTES} are needed`)
  }
  return Buffer.from(hkdfSync('sha256', secret, SALT, `ferry/${region}/${label}`, length))
}

const SWARM_KEY_HEADER = '/key/swarm/psk/1.0.0/'

/**
 * The secret in a region's PSK file. A libp2p swarm key file (`/key/swarm/psk/1.0.0/`, `/base16/`,
 * then 64 hex digits, as `ipfs-swarm-key-gen` writes) yields its 32 key bytes; any other file is
 * the secret itself, without trailing whitespace, so `openssl rand -base64 32 > region.psk` works.
 */
export function parseRegionSecret(file: Uint8Array): Uint8Array {
  const text = Buffer.from(file).toString('utf8')
  if (text.startsWith(SWARM_KEY_HEADER)) {
    const lines = text.split(/\r?\n/).map((line) => line.trim())
    if (lines[1] !== '/base16/' || lines[2] === undefined || !/^[0-9a-fA-F]{64}$/.test(lines[2])) {
      throw new RangeError('swarm key file must hold /base16/ and 64 hex digits')
    }
    return Buffer.from(lines[2], 'hex')
  }
  let end = file.byteLength
  while (end > 0 && isWhitespace(file[end - 1]!)) end -= 1
  const secret = Buffer.from(file.subarray(0, end))
  if (secret.byteLength < MIN_SECRET_BYTES) {
    throw new RangeError(`region secret has ${secret.byteLength} bytes; at least ${MIN_SECRET_BYTES} are needed`)
  }
  return secret
}

function isWhitespace(byte: number): boolean {
  return byte === 0x20 || byte === 0x09 || byte === 0x0a || byte === 0x0d
}
