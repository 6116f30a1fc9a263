import { randomBytes } from 'node:crypto'
import { chmod, mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import type { PrivateKey } from '@libp2p/interface'

/**
 * The node's libp2p identity, stable across restarts so that provider records, penalties and
 * transfer certificates keep naming the same peer:
 *
 *   <identityDir>/peer.key   Ed25519 private key, libp2p protobuf encoding, mode 0600
 *
 * Created on first start (written to a temporary file, then renamed). A file that exists but does
 * not decode is an error, never silently replaced: a new identity would orphan the node's records.
 */
export const IDENTITY_FILE = 'peer.key'

export async function loadOrCreateIdentity(identityDir: string): Promise<PrivateKey> {
  const path = join(identityDir, IDENTITY_FILE)
  let bytes: Buffer | undefined
  try {
    bytes = await readFile(path)
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error
  }
  if (bytes !== undefined) {
    try {
      return privateKeyFromProtobuf(bytes)
    } catch (error) {
      throw new Error(`peer identity ${path} is not a libp2p private key; move it away to create a new identity`, { cause: error })
    }
  }
  await mkdir(identityDir, { recursive: true, mode: 0o700 })
  const key = await generateKeyPair('Ed25519')
  const temporary = `${path}.${randomBytes(6).toString('hex')}.tmp`
  await writeFile(temporary, privateKeyToProtobuf(key), { mode: 0o600, flag: 'wx' })
  await chmod(temporary, 0o600)
  await rename(temporary, path)
  return key
}
