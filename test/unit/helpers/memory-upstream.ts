import { Readable } from 'node:stream'
import type { FetchRequest, FetchedContent, ManifestDescriptor, UpstreamSource } from '@ferry/interfaces'
import { UpstreamUnavailableError, sha256Digest } from '@ferry/oci'

/**
 * An UpstreamSource held in memory: the memory implementation of the upstream interface, with
 * knobs for the failures the pull path must survive (down, a broken transfer, corrupt bytes).
 */
export class MemoryUpstream implements UpstreamSource {
  readonly name: string
  readonly blobs = new Map<string, Buffer>()
  readonly manifests = new Map<string, { bytes: Buffer; mediaType: string }>()
  readonly tags = new Map<string, string>()
  /** Throw UpstreamUnavailableError on every call. */
  down = false
  /** Break each transfer after this many bytes. */
  breakAfterBytes: number | undefined
  /** Flip a byte of every blob served. */
  corrupt = false
  /** Serve (and announce) only the first this-many bytes of every blob: a source that lies about the size. */
  truncateTo: number | undefined
  /** Ask the mirror to pass none of this source's bytes on before verification (as peers do). */
  holdUntilVerified = false
  /** Hold each transfer before its last `holdLastBytes` bytes until `release()`. */
  holdLastBytes: number | undefined
  bytesServed = 0
  readonly fetches: FetchRequest[] = []
  corruptReports = 0
  private releaseHeld: Array<() => void> = []
  private heldWaiters: Array<() => void> = []

  constructor(name: string) {
    this.name = `upstream:${name}`
  }

  addBlob(bytes: Buffer): string {
    const digest = sha256Digest(bytes)
    this.blobs.set(digest, bytes)
    return digest
  }

  addManifest(repository: string, tag: string, document: object, mediaType: string): string {
    const bytes = Buffer.from(JSON.stringify(document))
    const digest = sha256Digest(bytes)
    this.manifests.set(digest, { bytes, mediaType })
    this.tags.set(`${repository}:${tag}`, digest)
    return digest
  }

  /** Resolves once a transfer is being held before its last bytes. */
  waitUntilHeld(): Promise<void> {
    if (this.releaseHeld.length > 0) return Promise.resolve()
    return new Promise((resolve) => this.heldWaiters.push(resolve))
  }

  release(): void {
    const waiting = this.releaseHeld
    this.releaseHeld = []
    for (const wake of waiting) wake()
  }

  async resolveTag(repository: string, tag: string): Promise<ManifestDescriptor | undefined> {
    this.throwIfDown()
    const digest = this.tags.get(`${repository}:${tag}`)
    if (!digest) return undefined
    const manifest = this.manifests.get(digest)!
    return { digest, mediaType: manifest.mediaType, size: manifest.bytes.byteLength }
  }

  async fetchManifest(_repository: string, reference: string) {
    this.throwIfDown()
    const digest = reference.includes(':') ? reference : this.tags.get(`${_repository}:${reference}`)
    const manifest = digest ? this.manifests.get(digest) : undefined
    if (!manifest || !digest) return undefined
    return { bytes: this.corrupt ? Buffer.concat([manifest.bytes, Buffer.from(' ')]) : manifest.bytes, mediaType: manifest.mediaType, digest }
  }

  async fetch(request: FetchRequest): Promise<FetchedContent | undefined> {
    this.fetches.push({ ...request })
    this.throwIfDown()
    const original = this.blobs.get(request.digest)
    if (!original) return undefined
    const bytes = Buffer.from(this.truncateTo === undefined ? original : original.subarray(0, this.truncateTo))
    if (this.corrupt) bytes[Math.floor(bytes.length / 2)] ^= 0xff
    const self = this
    const tail = bytes.subarray(request.offset)
    async function* body() {
      let sent = 0
      let held = false
      for (let start = 0; start < tail.length; start += 64 * 1024) {
        let chunk = tail.subarray(start, Math.min(start + 64 * 1024, tail.length))
        if (self.breakAfterBytes !== undefined && sent + chunk.length > self.breakAfterBytes) {
          chunk = chunk.subarray(0, self.breakAfterBytes - sent)
          self.bytesServed += chunk.length
          yield chunk
          throw new UpstreamUnavailableError(`${self.name} broke the transfer`)
        }
        if (!held && self.holdLastBytes !== undefined && request.offset + start + chunk.length > bytes.length - self.holdLastBytes) {
          const before = bytes.length - self.holdLastBytes - (request.offset + start)
          if (before > 0) {
            self.bytesServed += before
            sent += before
            yield chunk.subarray(0, before)
            chunk = chunk.subarray(before)
          }
          held = true
          await new Promise<void>((resolve, reject) => {
            self.releaseHeld.push(resolve)
            request.signal.addEventListener('abort', () => reject(request.signal.reason as Error), { once: true })
            for (const wake of self.heldWaiters.splice(0)) wake()
          })
        }
        self.bytesServed += chunk.length
        sent += chunk.length
        yield chunk
      }
    }
    return { size: bytes.length, offset: request.offset, body: Readable.from(body()), ...(this.holdUntilVerified ? { holdUntilVerified: true } : {}) }
  }

  reportCorrupt(): void {
    this.corruptReports += 1
  }

  private throwIfDown(): void {
    if (this.down) throw new UpstreamUnavailableError(`${this.name} is down`)
  }
}
