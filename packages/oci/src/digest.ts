import { createHash, type Hash } from 'node:crypto'
import { Transform, type TransformCallback } from 'node:stream'
import { DigestMismatchError, InvalidDigestError, SizeMismatchError, UnsupportedDigestError } from './errors.js'

/** The distribution spec's digest grammar: `algorithm ":" encoded`. */
const DIGEST_GRAMMAR = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/
const SHA256_ENCODED = /^[a-f0-9]{64}$/
const MAX_DIGEST_LENGTH = 256

export interface ParsedDigest {
  algorithm: 'sha256'
  hex: string
  /** Canonical `sha256:<hex>`. */
  digest: string
}

/**
 * Validates a digest and returns its canonical form. Only sha256 is accepted: it is the only
 * algorithm Ferry verifies, and content is never served unverified.
 */
export function parseDigest(input: string): ParsedDigest {
  if (typeof input !== 'string' || input.length === 0 || input.length > MAX_DIGEST_LENGTH || !DIGEST_GRAMMAR.test(input)) {
    throw new InvalidDigestError(`invalid digest ${JSON.stringify(truncate(input))}`, { detail: { digest: truncate(input) } })
  }
  const colon = input.indexOf(':')
  const algorithm = input.slice(0, colon)
  const hex = input.slice(colon + 1)
  if (algorithm !== 'sha256') {
    throw new UnsupportedDigestError(`unsupported digest algorithm ${JSON.stringify(algorithm)}: only sha256 is verified`, {
      detail: { digest: input },
    })
  }
  if (!SHA256_ENCODED.test(hex)) {
    throw new InvalidDigestError(`invalid sha256 digest ${JSON.stringify(truncate(input))}: want 64 lowercase hex digits`, {
      detail: { digest: truncate(input) },
    })
  }
  return { algorithm, hex, digest: input }
}

export function isDigest(input: string): boolean {
  try {
    parseDigest(input)
    return true
  } catch {
    return false
  }
}

export function sha256Digest(data: Uint8Array | string): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`
}

/** The digest's 32 raw bytes, e.g. for a DHT key. */
export function digestBytes(digest: string): Uint8Array {
  return Buffer.from(parseDigest(digest).hex, 'hex')
}

/** Incremental sha256 with a byte count; `check()` throws the right error when the content is wrong. */
export class DigestVerifier {
  readonly expected: string
  readonly expectedSize: number | undefined
  private readonly hash: Hash = createHash('sha256')
  private count = 0

  constructor(expected: string, expectedSize?: number) {
    this.expected = parseDigest(expected).digest
    this.expectedSize = expectedSize
  }

  get bytes(): number {
    return this.count
  }

  update(chunk: Uint8Array): void {
    this.count += chunk.byteLength
    if (this.expectedSize !== undefined && this.count > this.expectedSize) {
      throw new SizeMismatchError(`content of ${this.expected} is longer than ${this.expectedSize} bytes`, {
        detail: { digest: this.expected, expectedSize: this.expectedSize },
      })
    }
    this.hash.update(chunk)
  }

  /** Finishes hashing. Throws SizeMismatchError or DigestMismatchError; returns the verified digest. */
  check(): string {
    if (this.expectedSize !== undefined && this.count !== this.expectedSize) {
      throw new SizeMismatchError(`content of ${this.expected} has ${this.count} bytes, expected ${this.expectedSize}`, {
        detail: { digest: this.expected, expectedSize: this.expectedSize, actualSize: this.count },
      })
    }
    const actual = `sha256:${this.hash.digest('hex')}`
    if (actual !== this.expected) {
      throw new DigestMismatchError(`content does not match digest ${this.expected} (got ${actual})`, {
        detail: { digest: this.expected, actual },
      })
    }
    return actual
  }
}

/** A pass-through stream that fails at its end unless the bytes match the digest (and size). */
export function verifyingStream(expected: string, expectedSize?: number): Transform {
  const verifier = new DigestVerifier(expected, expectedSize)
  return new Transform({
    transform(chunk: Buffer, _encoding, callback: TransformCallback) {
      try {
        verifier.update(chunk)
        callback(null, chunk)
      } catch (error) {
        callback(error as Error)
      }
    },
    flush(callback: TransformCallback) {
      try {
        verifier.check()
        callback()
      } catch (error) {
        callback(error as Error)
      }
    },
  })
}

function truncate(value: unknown): string {
  const text = String(value)
  return text.length > 100 ? `${text.slice(0, 100)}...` : text
}
