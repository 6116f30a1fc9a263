import { Transform, type Readable, type TransformCallback } from 'node:stream'
import { type FerryError, UpstreamProtocolError, UpstreamUnavailableError } from '@ferry/oci'
import { dropBody, type ResponseBody } from './transport.js'

export interface ContentBodyOptions {
  source: ResponseBody
  /** Leading bytes to drop: an upstream that ignored `Range` sends the blob from its start. */
  skip: number
  /** Bytes the caller must receive after the skipped ones; fewer is a truncated transfer. */
  length: number
  upstream: string
  mapError: (error: unknown) => FerryError
  onBytes?: (count: number) => void
  /** Called once when the body fails, not when the consumer destroys it. */
  onError?: (error: FerryError) => void
}

/**
 * The body handed to callers. It ends cleanly only after exactly `length` bytes; a connection
 * that breaks, stalls beyond the idle timeout or closes early makes it error instead, so that
 * the caller resumes with `Range` from the bytes it has (or from another source).
 */
export function contentBody(options: ContentBodyOptions): Readable {
  const { source, length, upstream } = options
  let failed = false
  const fail = (error: FerryError): FerryError => {
    if (!failed) {
      failed = true
      options.onError?.(error)
    }
    return error
  }
  let toSkip = options.skip
  let delivered = 0
  // A synchronous Transform rather than an async generator: no promise hops per chunk, which
  // matters at hundreds of MB/s.
  const relay = new Transform({
    readableHighWaterMark: 1024 * 1024,
    transform(chunk: Buffer, _encoding, callback: TransformCallback) {
      if (toSkip > 0) {
        if (chunk.byteLength <= toSkip) {
          toSkip -= chunk.byteLength
          return callback()
        }
        chunk = chunk.subarray(toSkip)
        toSkip = 0
      }
      delivered += chunk.byteLength
      if (delivered > length) {
        return callback(
          fail(
            new UpstreamProtocolError(`upstream ${upstream} sent more than the ${length} bytes it announced`, {
              detail: { upstream, expected: length },
            }),
          ),
        )
      }
      options.onBytes?.(chunk.byteLength)
      callback(null, chunk)
    },
    flush(callback: TransformCallback) {
      if (toSkip > 0 || delivered < length) {
        return callback(
          fail(
            new UpstreamUnavailableError(`upstream ${upstream} ended the transfer after ${delivered} of ${length} bytes`, {
              detail: { upstream, received: delivered, expected: length },
            }),
          ),
        )
      }
      callback()
    },
  })
  source.on('error', (error) => {
    if (!failed) relay.destroy(fail(options.mapError(error)))
  })
  // A source that closes without ending (connection reset) must not leave the relay waiting.
  source.on('close', () => {
    if (!source.readableEnded && !relay.destroyed && !failed) {
      relay.destroy(fail(new UpstreamUnavailableError(`upstream ${upstream} closed the transfer after ${delivered} of ${length} bytes`, { detail: { upstream, received: delivered, expected: length } })))
    }
  })
  // The consumer destroying the body (a client gone, a resume elsewhere) releases the connection.
  relay.on('close', () => {
    if (!source.destroyed) dropBody(source)
  })
  source.pipe(relay)
  return relay
}

/**
 * Reads a whole body of at most `limit` bytes. Throws `tooLarge()` as soon as more arrive, and
 * UpstreamUnavailableError when fewer than `expectedLength` do.
 */
export async function readBody(
  source: ResponseBody,
  options: { limit: number; expectedLength?: number | undefined; upstream: string; mapError: (error: unknown) => FerryError; tooLarge: () => FerryError },
): Promise<Buffer> {
  const chunks: Buffer[] = []
  let total = 0
  try {
    for await (const chunk of source as AsyncIterable<Buffer>) {
      total += chunk.byteLength
      if (total > options.limit) {
        dropBody(source)
        throw options.tooLarge()
      }
      chunks.push(chunk)
    }
  } catch (error) {
    throw options.mapError(error)
  }
  if (options.expectedLength !== undefined && total !== options.expectedLength) {
    throw new UpstreamUnavailableError(`upstream ${options.upstream} ended a response after ${total} of ${options.expectedLength} bytes`, {
      detail: { upstream: options.upstream, received: total, expected: options.expectedLength },
    })
  }
  return Buffer.concat(chunks, total)
}
