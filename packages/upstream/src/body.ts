import { Readable } from 'node:stream'
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
  const fail = (error: FerryError): FerryError => {
    options.onError?.(error)
    return error
  }
  async function* relay(): AsyncGenerator<Buffer> {
    const iterator = (source as AsyncIterable<Buffer>)[Symbol.asyncIterator]()
    let toSkip = options.skip
    let delivered = 0
    try {
      for (;;) {
        let step: IteratorResult<Buffer>
        try {
          step = await iterator.next()
        } catch (error) {
          throw fail(options.mapError(error))
        }
        if (step.done) break
        let chunk = step.value
        if (toSkip > 0) {
          if (chunk.byteLength <= toSkip) {
            toSkip -= chunk.byteLength
            continue
          }
          chunk = chunk.subarray(toSkip)
          toSkip = 0
        }
        delivered += chunk.byteLength
        if (delivered > length) {
          throw fail(
            new UpstreamProtocolError(`upstream ${upstream} sent more than the ${length} bytes it announced`, {
              detail: { upstream, expected: length },
            }),
          )
        }
        options.onBytes?.(chunk.byteLength)
        // A consumer that destroys the stream resumes this generator with return() or throw() here.
        yield chunk
      }
    } finally {
      await iterator.return?.()
    }
    if (toSkip > 0 || delivered < length) {
      throw fail(
        new UpstreamUnavailableError(`upstream ${upstream} ended the transfer after ${delivered} of ${length} bytes`, {
          detail: { upstream, received: delivered, expected: length },
        }),
      )
    }
  }
  return Readable.from(relay(), { objectMode: false })
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
