import { randomBytes } from 'node:crypto'
import { mkdir, open, readdir, rename, rm, stat, unlink, type FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import type { BlobInfo, BlobStore, BlobWriter, ByteRange, PartialReader } from '@ferry/interfaces'
import { DigestVerifier, parseDigest } from '@ferry/oci'

/**
 * Blobs on disk, content-addressed:
 *
 *   <root>/
 *     blobs/sha256/<first two hex>/<64 hex>   committed, verified content (read-only once renamed)
 *     ingest/<random>.partial                 content being written; removed at start-up
 *
 * A blob is written to `ingest/`, hashed as it is written, fsynced, then renamed into `blobs/`
 * only when its digest matches. A rename is atomic, so a crash leaves either no blob or a whole
 * verified one, plus leftovers in `ingest/` that `DiskBlobStore.open` deletes.
 * Readers open a file descriptor before streaming, so deleting a blob never breaks a response
 * in flight.
 */
export class DiskBlobStore implements BlobStore {
  private readonly blobsDir: string
  private readonly ingestDir: string
  private readonly readChunkBytes: number

  private constructor(root: string, readChunkBytes: number) {
    this.blobsDir = join(root, 'blobs', 'sha256')
    this.ingestDir = join(root, 'ingest')
    this.readChunkBytes = readChunkBytes
  }

  /** Opens the store at `root`, creating it, and removes leftovers of interrupted writes. */
  static async open(root: string, options: { readChunkBytes?: number } = {}): Promise<DiskBlobStore> {
    const store = new DiskBlobStore(root, options.readChunkBytes ?? 1024 * 1024)
    await mkdir(store.blobsDir, { recursive: true })
    await rm(store.ingestDir, { recursive: true, force: true })
    await mkdir(store.ingestDir, { recursive: true })
    return store
  }

  pathOf(digest: string): string {
    const { hex } = parseDigest(digest)
    return join(this.blobsDir, hex.slice(0, 2), hex)
  }

  async stat(digest: string): Promise<BlobInfo | undefined> {
    try {
      const info = await stat(this.pathOf(digest))
      return { digest, size: info.size }
    } catch (error) {
      if (isNotFound(error)) return undefined
      throw error
    }
  }

  async open(digest: string, range?: ByteRange): Promise<Readable | undefined> {
    let handle: FileHandle
    try {
      handle = await open(this.pathOf(digest), 'r')
    } catch (error) {
      if (isNotFound(error)) return undefined
      throw error
    }
    return this.streamFrom(handle, range)
  }

  /** Streams from an open handle; the handle is closed when the stream ends or is destroyed. */
  streamFrom(handle: FileHandle, range?: ByteRange): Readable {
    if (range && range.end <= range.start) {
      void handle.close()
      return Readable.from([])
    }
    // createReadStream's `end` is inclusive.
    return handle.createReadStream({
      highWaterMark: this.readChunkBytes,
      autoClose: true,
      ...(range ? { start: range.start, end: range.end - 1 } : {}),
    })
  }

  async ingest(digest: string, expectedSize?: number): Promise<BlobWriter> {
    parseDigest(digest)
    const tempPath = join(this.ingestDir, `${randomBytes(12).toString('hex')}.partial`)
    const handle = await open(tempPath, 'wx')
    return new DiskBlobWriter(this, digest, expectedSize, tempPath, handle)
  }

  async delete(digest: string): Promise<boolean> {
    try {
      await unlink(this.pathOf(digest))
      return true
    } catch (error) {
      if (isNotFound(error)) return false
      throw error
    }
  }

  async *list(): AsyncIterable<BlobInfo> {
    for (const shard of await readdir(this.blobsDir)) {
      let names: string[]
      try {
        names = await readdir(join(this.blobsDir, shard))
      } catch (error) {
        if (isNotFound(error)) continue
        throw error
      }
      for (const hex of names) {
        const digest = `sha256:${hex}`
        const info = await this.stat(digest).catch(() => undefined)
        if (info) yield info
      }
    }
  }

  async usage(): Promise<number> {
    let total = 0
    for await (const info of this.list()) total += info.size
    return total
  }

  /** Moves a verified temp file into place durably: the file was fsynced, the rename is atomic. */
  async place(tempPath: string, digest: string): Promise<void> {
    const finalPath = this.pathOf(digest)
    const shardDir = join(finalPath, '..')
    await mkdir(shardDir, { recursive: true })
    await rename(tempPath, finalPath)
    const dir = await open(shardDir, 'r')
    try {
      await dir.sync()
    } finally {
      await dir.close()
    }
  }
}

class DiskBlobWriter implements BlobWriter {
  readonly digest: string
  private readonly store: DiskBlobStore
  private readonly verifier: DigestVerifier
  private readonly tempPath: string
  private handle: FileHandle | undefined
  private count = 0
  private state: 'writing' | 'verified' | 'committed' | 'aborted' = 'writing'

  constructor(store: DiskBlobStore, digest: string, expectedSize: number | undefined, tempPath: string, handle: FileHandle) {
    this.store = store
    this.digest = digest
    this.verifier = new DigestVerifier(digest, expectedSize)
    this.tempPath = tempPath
    this.handle = handle
  }

  get written(): number {
    return this.count
  }

  async write(chunk: Uint8Array): Promise<void> {
    if (this.state !== 'writing' || !this.handle) throw new Error(`write after ${this.state} of ${this.digest}`)
    this.verifier.update(chunk)
    let offset = 0
    while (offset < chunk.byteLength) {
      const { bytesWritten } = await this.handle.write(chunk, offset, chunk.byteLength - offset, this.count + offset)
      offset += bytesWritten
    }
    this.count += chunk.byteLength
  }

  async openReader(): Promise<PartialReader> {
    if (this.state === 'aborted') throw new Error(`blob writer of ${this.digest} was aborted`)
    // One descriptor per reader: it survives the rename at commit, since it holds the inode.
    let handle: FileHandle
    try {
      handle = await open(this.state === 'committed' ? this.store.pathOf(this.digest) : this.tempPath, 'r')
    } catch (error) {
      // Renamed into place between the check and the open: commit renames before it syncs the
      // directory and sets 'committed', so a verified writer's temp file may already be gone.
      if (!isNotFound(error) || (this.state !== 'committed' && this.state !== 'verified')) throw error
      handle = await open(this.store.pathOf(this.digest), 'r')
    }
    const writer = this
    return {
      async read(position: number, length: number): Promise<Buffer> {
        if (position + length > writer.count) throw new RangeError(`cannot read to ${position + length}: only ${writer.count} bytes written`)
        const buffer = Buffer.allocUnsafe(length)
        let filled = 0
        while (filled < length) {
          const { bytesRead } = await handle.read(buffer, filled, length - filled, position + filled)
          if (bytesRead === 0) throw new Error(`unexpected end of ${writer.digest} at ${position + filled}`)
          filled += bytesRead
        }
        return buffer
      },
      close: () => handle.close(),
    }
  }

  verify(): void {
    if (this.state === 'verified') return
    if (this.state !== 'writing') throw new Error(`verify after ${this.state} of ${this.digest}`)
    this.verifier.check()
    this.state = 'verified'
  }

  async commit(): Promise<BlobInfo> {
    if ((this.state !== 'writing' && this.state !== 'verified') || !this.handle) throw new Error(`commit after ${this.state} of ${this.digest}`)
    try {
      this.verify()
      await this.handle.sync()
      await this.handle.close()
      this.handle = undefined
      await this.store.place(this.tempPath, this.digest)
      this.state = 'committed'
      return { digest: this.digest, size: this.count }
    } catch (error) {
      await this.abort()
      throw error
    }
  }

  async abort(): Promise<void> {
    if (this.state === 'committed' || this.state === 'aborted') return
    this.state = 'aborted'
    const handle = this.handle
    this.handle = undefined
    await handle?.close().catch(() => undefined)
    await rm(this.tempPath, { force: true })
  }
}

function isNotFound(error: unknown): boolean {
  return (error as NodeJS.ErrnoException).code === 'ENOENT'
}
