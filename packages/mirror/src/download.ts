import { Readable } from 'node:stream'
import type { BlobInfo, BlobSource, BlobStore, BlobWriter, ByteRange, ContentKind, FetchRequest, Logger, PartialReader } from '@ferry/interfaces'
import {
  AbortedError,
  BlobNotFoundError,
  DigestMismatchError,
  FerryError,
  ManifestNotFoundError,
  SizeMismatchError,
  UpstreamProtocolError,
  UpstreamUnavailableError,
} from '@ferry/oci'
import type { MirrorMetrics } from './metrics.js'

/** Followers wait for at least this much new data before reading it back, to keep reads large. */
const FOLLOW_READ_BYTES = 256 * 1024
/** Largest single read of a follower, and largest batch written to the store at once. */
const MAX_FOLLOW_READ_BYTES = 1024 * 1024
/** Each source is tried at most this often per attempt at the whole blob. */
const TRIES_PER_SOURCE = 2

export interface DownloadComponents {
  blobStore: BlobStore
  logger: Logger
  metrics: MirrorMetrics
}

export interface DownloadInit {
  kind: ContentKind
  registry: string
  repository: string
  digest: string
  /** Tried in order; a broken transfer resumes at the next source from the current offset. */
  sources: BlobSource[]
  /** How long a download goes on with no client reading it. */
  orphanTimeoutMs: number
  /** Started for a region peer's fetch-through: the sources are told, so the peer source does not forward it again. */
  forwarded?: boolean
}

/**
 * One download of one blob into the local store, shared by every request for that digest on this
 * node. Requests follow it: they read back what was written so far and wait for more, so the
 * download is not tied to any client's socket and outlives a disconnect, up to `orphanTimeoutMs`
 * with nobody reading.
 *
 * A broken transfer resumes from the next source at the current offset (`Range`), which keeps the
 * running hash valid because every source serves the same content-addressed bytes. Only the final
 * digest check proves that: when it fails, every source that contributed is reported and excluded,
 * the bytes are discarded and the download starts over from zero. Followers that already sent bytes
 * of a failed attempt are destroyed; no follower ever sends the last byte of a blob before it was
 * verified and committed, so a client never receives corrupt content whole.
 */
export class Download {
  readonly digest: string
  readonly kind: ContentKind
  /** Total size, known once the first source answered. */
  size: number | undefined
  mediaType: string | undefined
  /** Metric label of the source that first delivered bytes. */
  source: string | undefined
  state: 'running' | 'committed' | 'failed' = 'running'
  error: Error | undefined
  /** Resolves when the size is known; rejects when the download failed before that. */
  readonly ready: Promise<void>
  /** Resolves with the committed blob; rejects with the reason of failure. */
  readonly done: Promise<BlobInfo>

  private readonly components: DownloadComponents
  private readonly init: DownloadInit
  private readonly controller = new AbortController()
  private writer: BlobWriter | undefined
  private attempt = 0
  /** The attempt whose bytes were verified; its followers may send the last byte. */
  private verifiedAttempt = -1
  /** The attempt that took bytes from a source asking them to be held until verified. */
  private heldAttempt = -1
  private readers = 0
  private orphanTimer: NodeJS.Timeout | undefined
  private waiters: Array<() => void> = []
  private resolveReady!: () => void
  private rejectReady!: (error: Error) => void

  constructor(components: DownloadComponents, init: DownloadInit) {
    this.components = components
    this.init = init
    this.digest = init.digest
    this.kind = init.kind
    this.ready = new Promise((resolve, reject) => {
      this.resolveReady = resolve
      this.rejectReady = reject
    })
    this.ready.catch(() => undefined)
    this.done = this.run()
    this.done.catch(() => undefined)
    this.armOrphanTimer()
  }

  /** A stream of `range` of the blob as it arrives; it errors if the download fails. */
  follow(range: ByteRange): Readable {
    this.readers += 1
    clearTimeout(this.orphanTimer)
    const closed = new AbortController()
    const stream = Readable.from(this.chunks(range, closed.signal, this.size), { objectMode: false, highWaterMark: 1024 * 1024 })
    // Readable.from ends its generator only after the generator's pending await: wake it at once,
    // so a client that left stops counting as a reader now, not at the source's next bytes.
    const destroyGenerator = stream._destroy.bind(stream)
    stream._destroy = (error, callback) => {
      closed.abort()
      destroyGenerator(error, callback)
    }
    stream.once('close', () => {
      closed.abort()
      this.readers -= 1
      this.armOrphanTimer()
    })
    return stream
  }

  /** Stops the download; followers error. */
  abort(reason: Error): void {
    this.controller.abort(reason)
  }

  private armOrphanTimer(): void {
    if (this.readers > 0 || this.state !== 'running') return
    clearTimeout(this.orphanTimer)
    this.orphanTimer = setTimeout(() => {
      if (this.readers === 0) this.abort(new AbortedError(`download of ${this.digest} abandoned: no client read it for ${this.init.orphanTimeoutMs} ms`))
    }, this.init.orphanTimeoutMs)
    this.orphanTimer.unref()
  }

  private notify(): void {
    const waiters = this.waiters
    this.waiters = []
    for (const wake of waiters) wake()
  }

  private changed(signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      if (signal.aborted) return resolve()
      const wake = () => {
        signal.removeEventListener('abort', wake)
        resolve()
      }
      this.waiters.push(wake)
      signal.addEventListener('abort', wake, { once: true })
    })
  }

  private async *chunks(range: ByteRange, closed: AbortSignal, announcedSize: number | undefined): AsyncGenerator<Buffer> {
    let position = range.start
    let reader: PartialReader | undefined
    let readerAttempt = 0
    try {
      while (!closed.aborted) {
        if (this.state === 'failed') throw this.error ?? new UpstreamUnavailableError(`download of ${this.digest} failed`)
        if (announcedSize !== undefined && this.size !== undefined && this.size !== announcedSize) {
          throw new SizeMismatchError(`${this.digest} turned out to have ${this.size} bytes, not the ${announcedSize} this response announced`)
        }
        if (position >= range.end) {
          // A response that ends at the blob's end ends only once the blob is verified: even an
          // empty one (a source claiming 0 bytes) must not look complete before that.
          if (this.size !== undefined && (range.end < this.size || this.verifiedAttempt === this.attempt)) return
          await this.changed(closed)
          continue
        }
        const writer = this.writer
        if (writer === undefined || this.size === undefined) {
          await this.changed(closed)
          continue
        }
        if (readerAttempt !== this.attempt) {
          if (readerAttempt !== 0 && position > range.start) {
            throw new DigestMismatchError(`a source of ${this.digest} sent corrupt content; the transfer was abandoned`)
          }
          const attempt = this.attempt
          await reader?.close()
          reader = undefined
          const opened = await writer.openReader()
          if (attempt !== this.attempt) {
            await opened.close()
            continue
          }
          reader = opened
          readerAttempt = attempt
        }
        // The blob's last byte goes out only after verification, so corrupt content is never served whole.
        const verified = this.verifiedAttempt === this.attempt
        const held = this.heldAttempt === this.attempt && !verified
        const reachable = held ? position : Math.min(range.end, verified ? this.size : this.size - 1)
        const limit = Math.min(reachable, writer.written)
        // Wait for a sizeable read unless this is the last of what can be sent before verification.
        const enough = limit - position >= Math.min(FOLLOW_READ_BYTES, reachable - position)
        if (position < limit && enough && reader) {
          const length = Math.min(limit - position, MAX_FOLLOW_READ_BYTES)
          const chunk = await reader.read(position, length)
          position += length
          yield chunk
          continue
        }
        await this.changed(closed)
      }
    } finally {
      await reader?.close()
    }
  }

  private request(offset: number): FetchRequest {
    const { kind, registry, repository, digest, forwarded } = this.init
    return { kind, registry, repository, digest, offset, signal: this.controller.signal, ...(forwarded ? { forwarded } : {}) }
  }

  private async run(): Promise<BlobInfo> {
    const { blobStore, logger, metrics } = this.components
    const excluded = new Set<BlobSource>()
    try {
      let verificationError: Error | undefined
      for (;;) {
        this.attempt += 1
        // After a verification failure the size is open again: the source that set it may have lied.
        const writer = await blobStore.ingest(this.digest, verificationError ? undefined : this.size)
        this.writer = writer
        this.notify()
        const contributors = new Set<BlobSource>()
        let verified: BlobInfo
        try {
          await this.fill(writer, excluded, contributors, verificationError)
          writer.verify()
          // Followers may finish as soon as the digest matched; durability (fsync, rename) follows.
          this.verifiedAttempt = this.attempt
          this.notify()
          verified = await writer.commit()
        } catch (error) {
          // Followers arriving now wait for the next attempt instead of opening the discarded file.
          this.writer = undefined
          await writer.abort()
          if (!isVerificationFailure(error) || contributors.size === 0) throw error
          verificationError = error as Error
          // Some source sent wrong bytes; which one cannot be known, so none of them is asked again.
          for (const source of contributors) {
            excluded.add(source)
            metrics.corruptContent.inc({ source: source.name })
            source.reportCorrupt?.(this.request(0))
          }
          logger.error({ err: error, digest: this.digest, sources: [...contributors].map((s) => s.name) }, 'content failed verification; discarded')
          continue
        }
        this.state = 'committed'
        clearTimeout(this.orphanTimer)
        metrics.downloads.inc({ kind: this.kind, result: 'committed' })
        this.notify()
        return verified
      }
    } catch (error) {
      const failure = error instanceof Error ? error : new Error(String(error))
      this.state = 'failed'
      this.error = failure
      clearTimeout(this.orphanTimer)
      metrics.downloads.inc({ kind: this.kind, result: failure instanceof FerryError ? failure.code : 'error' })
      this.rejectReady(failure)
      this.notify()
      throw failure
    }
  }

  /**
   * Writes the whole blob, asking sources in turn: after a failure the next source resumes at the
   * current offset, and each source is asked at most TRIES_PER_SOURCE times.
   */
  private async fill(writer: BlobWriter, excluded: Set<BlobSource>, contributors: Set<BlobSource>, verificationError: Error | undefined): Promise<void> {
    const { logger, metrics } = this.components
    const sources = this.init.sources
    const tries = new Map<BlobSource, number>()
    let cursor = 0
    // With every source used up after corrupt content, that is the failure to report, not "not found".
    let lastError: Error | undefined = verificationError
    let sizeOpen = verificationError !== undefined
    while (this.size === undefined || sizeOpen || writer.written < this.size) {
      this.throwIfAborted()
      let source: BlobSource | undefined
      for (let step = 0; step < sources.length && !source; step += 1) {
        const candidate = sources[(cursor + step) % sources.length]!
        if (!excluded.has(candidate) && (tries.get(candidate) ?? 0) < TRIES_PER_SOURCE) {
          source = candidate
          cursor = (cursor + step) % sources.length
        }
      }
      if (!source) throw lastError ?? this.notFound()
      tries.set(source, (tries.get(source) ?? 0) + 1)
      try {
        const content = await source.fetch(this.request(writer.written))
        if (!content) {
          excluded.add(source)
          continue
        }
        if (content.offset !== writer.written) {
          content.body.destroy()
          throw new UpstreamProtocolError(`${source.name} answered from offset ${content.offset}, asked for ${writer.written}`)
        }
        if (this.size !== undefined && !sizeOpen && content.size !== this.size) {
          content.body.destroy()
          throw new UpstreamProtocolError(`${source.name} announced ${content.size} bytes for ${this.digest}, expected ${this.size}`)
        }
        if (this.size === undefined || sizeOpen) {
          this.size = content.size
          this.mediaType = content.mediaType
          sizeOpen = false
          this.resolveReady()
        }
        this.source ??= source.name
        if (content.holdUntilVerified) this.heldAttempt = this.attempt
        contributors.add(source)
        // An abort (shutdown, orphan timeout) must end a transfer even while the source is silent.
        const stopTransfer = () => content.body.destroy(this.controller.signal.reason as Error)
        this.controller.signal.addEventListener('abort', stopTransfer, { once: true })
        try {
          this.throwIfAborted()
          for await (const batch of readBatches(content.body, MAX_FOLLOW_READ_BYTES)) {
            await writer.write(batch)
            metrics.fetchedBytes.inc({ kind: this.kind, source: source.name }, batch.byteLength)
            this.notify()
          }
        } finally {
          this.controller.signal.removeEventListener('abort', stopTransfer)
          // A failed write leaves the body paused, which no idle timeout ends: release the connection.
          if (!content.body.readableEnded) content.body.destroy()
        }
        if (writer.written !== this.size) {
          throw new UpstreamProtocolError(`${source.name} ended ${this.digest} at ${writer.written} of ${this.size} bytes`)
        }
      } catch (error) {
        this.throwIfAborted()
        if (isVerificationFailure(error)) throw error
        lastError = asSourceFailure(error, source.name)
        cursor = (cursor + 1) % sources.length
        logger.warn({ err: error, digest: this.digest, source: source.name, offset: writer.written }, 'source failed; trying the next one')
      }
    }
  }

  private throwIfAborted(): void {
    if (this.controller.signal.aborted) {
      const reason = this.controller.signal.reason
      throw reason instanceof Error ? reason : new AbortedError(`download of ${this.digest} aborted`)
    }
  }

  private notFound(): FerryError {
    return this.kind === 'manifest'
      ? new ManifestNotFoundError(`manifest ${this.digest} not found in any source`, { detail: { digest: this.digest } })
      : new BlobNotFoundError(`blob ${this.digest} not found in any source`, { detail: { digest: this.digest } })
  }
}

function isVerificationFailure(error: unknown): boolean {
  return error instanceof DigestMismatchError || error instanceof SizeMismatchError
}

/**
 * Reads a stream in batches of whatever is buffered (up to `maxBytes`), so that a fast source is
 * written to disk in few large writes while a slow one is still written as soon as bytes arrive.
 */
async function* readBatches(stream: Readable, maxBytes: number): AsyncGenerator<Buffer> {
  // Errors are read from `stream.errored`. The listener stays: a destroyed stream emits its error
  // on a later tick, when this generator may be gone, and an unheard error would be uncaught.
  stream.on('error', () => undefined)
  yield* batchesOf(stream, maxBytes)
}

async function* batchesOf(stream: Readable, maxBytes: number): AsyncGenerator<Buffer> {
  for (;;) {
    const chunks: Buffer[] = []
    let size = 0
    let chunk: Buffer | null
    while (size < maxBytes && (chunk = stream.read() as Buffer | null) !== null) {
      chunks.push(chunk)
      size += chunk.byteLength
    }
    if (chunks.length > 0) {
      yield chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size)
      continue
    }
    if (stream.errored) throw stream.errored
    if (stream.readableEnded) return
    if (stream.destroyed) throw new UpstreamProtocolError('source stream closed before its end')
    await new Promise<void>((resolve) => {
      const done = () => {
        stream.off('readable', done)
        stream.off('end', done)
        stream.off('error', done)
        stream.off('close', done)
        resolve()
      }
      stream.on('readable', done)
      stream.on('end', done)
      stream.on('error', done)
      stream.on('close', done)
    })
  }
}

/**
 * A source's own refusal must not reach the client as the client's mistake: an upstream that
 * answers 416 to Ferry's resume, or sends an invalid document, is a failed source (5xx).
 */
function asSourceFailure(error: unknown, source: string): Error {
  if (error instanceof FerryError && (error.code === 'ERR_RANGE_INVALID' || error.code === 'ERR_MANIFEST_INVALID')) {
    return new UpstreamProtocolError(`${source}: ${error.message}`, { cause: error })
  }
  return error as Error
}
