import { Readable } from 'node:stream'
import type { BlobInfo, BlobStore, BlobWriter, ByteRange, PartialReader } from '@ferry/interfaces'
import { DigestVerifier, parseDigest } from '@ferry/oci'

/** BlobStore in memory, for unit tests and as the reference behaviour of the conformance suite. */
export class MemoryBlobStore implements BlobStore {
  private readonly blobs = new Map<string, Buffer>()

  async stat(digest: string): Promise<BlobInfo | undefined> {
    parseDigest(digest)
    const bytes = this.blobs.get(digest)
    return bytes ? { digest, size: bytes.byteLength } : undefined
  }

  async open(digest: string, range?: ByteRange): Promise<Readable | undefined> {
    parseDigest(digest)
    const bytes = this.blobs.get(digest)
    if (!bytes) return undefined
    return Readable.from(range ? [bytes.subarray(range.start, range.end)] : [bytes])
  }

  async ingest(digest: string, expectedSize?: number): Promise<BlobWriter> {
    parseDigest(digest)
    return new MemoryBlobWriter(digest, expectedSize, (bytes) => this.blobs.set(digest, bytes))
  }

  async delete(digest: string): Promise<boolean> {
    return this.blobs.delete(digest)
  }

  async *list(): AsyncIterable<BlobInfo> {
    for (const [digest, bytes] of this.blobs) yield { digest, size: bytes.byteLength }
  }

  async usage(): Promise<number> {
    let total = 0
    for (const bytes of this.blobs.values()) total += bytes.byteLength
    return total
  }
}

class MemoryBlobWriter implements BlobWriter {
  readonly digest: string
  private readonly verifier: DigestVerifier
  private readonly onCommit: (bytes: Buffer) => void
  private chunks: Buffer[] = []
  private count = 0
  private state: 'writing' | 'verified' | 'committed' | 'aborted' = 'writing'

  constructor(digest: string, expectedSize: number | undefined, onCommit: (bytes: Buffer) => void) {
    this.digest = digest
    this.verifier = new DigestVerifier(digest, expectedSize)
    this.onCommit = onCommit
  }

  get written(): number {
    return this.count
  }

  async write(chunk: Uint8Array): Promise<void> {
    if (this.state !== 'writing') throw new Error(`write after ${this.state} of ${this.digest}`)
    this.verifier.update(chunk)
    this.chunks.push(Buffer.from(chunk))
    this.count += chunk.byteLength
  }

  async openReader(): Promise<PartialReader> {
    if (this.state === 'aborted') throw new Error(`blob writer of ${this.digest} was aborted`)
    // Like a file descriptor, the reader keeps seeing the bytes it was opened on, even after abort.
    const writer = this
    const chunks = this.chunks
    return {
      async read(position: number, length: number): Promise<Buffer> {
        if (position + length > writer.count) throw new RangeError(`cannot read to ${position + length}: only ${writer.count} bytes written`)
        return Buffer.from(Buffer.concat(chunks).subarray(position, position + length))
      },
      async close() {},
    }
  }

  verify(): void {
    if (this.state === 'verified') return
    if (this.state !== 'writing') throw new Error(`verify after ${this.state} of ${this.digest}`)
    this.verifier.check()
    this.state = 'verified'
  }

  async commit(): Promise<BlobInfo> {
    if (this.state !== 'writing' && this.state !== 'verified') throw new Error(`commit after ${this.state} of ${this.digest}`)
    try {
      this.verify()
    } catch (error) {
      await this.abort()
      throw error
    }
    this.state = 'committed'
    this.onCommit(Buffer.concat(this.chunks))
    return { digest: this.digest, size: this.count }
  }

  async abort(): Promise<void> {
    if (this.state === 'committed' || this.state === 'aborted') return
    this.state = 'aborted'
    this.chunks = []
  }
}
