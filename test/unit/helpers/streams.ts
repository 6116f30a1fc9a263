import type { Readable } from 'node:stream'

export async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = []
  for await (const chunk of stream) chunks.push(chunk as Buffer)
  return Buffer.concat(chunks)
}

/** Reads until the stream ends or errors; returns what arrived and the error, if any. */
export async function readUntilEnd(stream: Readable): Promise<{ bytes: Buffer; error: Error | undefined }> {
  const chunks: Buffer[] = []
  try {
    for await (const chunk of stream) chunks.push(chunk as Buffer)
    return { bytes: Buffer.concat(chunks), error: undefined }
  } catch (error) {
    return { bytes: Buffer.concat(chunks), error: error as Error }
  }
}
