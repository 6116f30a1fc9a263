/**
 * Ferry's one error taxonomy. Libraries throw these; the API layer maps each `code` to an OCI error
 * code and HTTP status in a single table (`ociErrorFor` in `@ferry/registry-api`).
 */
export type FerryErrorCode =
  | 'ERR_NAME_INVALID'
  | 'ERR_REFERENCE_INVALID'
  | 'ERR_DIGEST_INVALID'
  | 'ERR_DIGEST_UNSUPPORTED'
  | 'ERR_RANGE_INVALID'
  | 'ERR_MANIFEST_INVALID'
  | 'ERR_NOT_MIRRORED'
  | 'ERR_BLOB_NOT_FOUND'
  | 'ERR_MANIFEST_NOT_FOUND'
  | 'ERR_REPOSITORY_NOT_FOUND'
  | 'ERR_DIGEST_MISMATCH'
  | 'ERR_SIZE_MISMATCH'
  | 'ERR_UPSTREAM_UNAVAILABLE'
  | 'ERR_UPSTREAM_AUTH'
  | 'ERR_UPSTREAM_PROTOCOL'
  | 'ERR_UNSUPPORTED'
  | 'ERR_TIMEOUT'
  | 'ERR_ABORTED'

export class FerryError extends Error {
  readonly code: FerryErrorCode
  /** Extra structured detail for logs and for the OCI error's `detail` field. */
  readonly detail: Record<string, unknown> | undefined

  constructor(code: FerryErrorCode, message: string, options?: { cause?: unknown; detail?: Record<string, unknown> }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause })
    this.code = code
    this.detail = options?.detail
  }
}

function defineError(name: string, code: FerryErrorCode) {
  const ErrorClass = class extends FerryError {
    constructor(message: string, options?: { cause?: unknown; detail?: Record<string, unknown> }) {
      super(code, message, options)
    }
  }
  Object.defineProperty(ErrorClass, 'name', { value: name })
  Object.defineProperty(ErrorClass.prototype, 'name', { value: name })
  return ErrorClass
}

/** A repository name that breaks the distribution spec's grammar. */
export const InvalidNameError = defineError('InvalidNameError', 'ERR_NAME_INVALID')
/** A tag or reference that is neither a valid tag nor a valid digest. */
export const InvalidReferenceError = defineError('InvalidReferenceError', 'ERR_REFERENCE_INVALID')
/** A digest that is not `algorithm:encoded` with a well-formed encoding. */
export const InvalidDigestError = defineError('InvalidDigestError', 'ERR_DIGEST_INVALID')
/** A well-formed digest of an algorithm Ferry does not verify (only sha256 is). */
export const UnsupportedDigestError = defineError('UnsupportedDigestError', 'ERR_DIGEST_UNSUPPORTED')
/** A Range header that cannot be satisfied for the content's size. */
export const RangeNotSatisfiableError = defineError('RangeNotSatisfiableError', 'ERR_RANGE_INVALID')
/** A manifest whose bytes are not a manifest Ferry understands, or too large to be one. */
export const InvalidManifestError = defineError('InvalidManifestError', 'ERR_MANIFEST_INVALID')
/** A registry host that this node has no upstreams for: Ferry is never an open proxy. */
export const NotMirroredError = defineError('NotMirroredError', 'ERR_NOT_MIRRORED')
export const BlobNotFoundError = defineError('BlobNotFoundError', 'ERR_BLOB_NOT_FOUND')
export const ManifestNotFoundError = defineError('ManifestNotFoundError', 'ERR_MANIFEST_NOT_FOUND')
/** A repository no upstream knows (listing its tags). */
export const RepositoryNotFoundError = defineError('RepositoryNotFoundError', 'ERR_REPOSITORY_NOT_FOUND')
/** Bytes that do not hash to the digest they were asked for. Always the source's fault. */
export const DigestMismatchError = defineError('DigestMismatchError', 'ERR_DIGEST_MISMATCH')
/** Bytes of another length than announced. Always the source's fault. */
export const SizeMismatchError = defineError('SizeMismatchError', 'ERR_SIZE_MISMATCH')
/** No source could answer: connection refused, timed out, 5xx, breaker open. */
export const UpstreamUnavailableError = defineError('UpstreamUnavailableError', 'ERR_UPSTREAM_UNAVAILABLE')
/** An upstream refused Ferry's credentials. */
export const UpstreamAuthError = defineError('UpstreamAuthError', 'ERR_UPSTREAM_AUTH')
/** An upstream answered something the distribution spec does not allow. */
export const UpstreamProtocolError = defineError('UpstreamProtocolError', 'ERR_UPSTREAM_PROTOCOL')
/** An operation a pull-only mirror does not offer (push, delete). */
export const UnsupportedError = defineError('UnsupportedError', 'ERR_UNSUPPORTED')
export const TimeoutError = defineError('TimeoutError', 'ERR_TIMEOUT')
export const AbortedError = defineError('AbortedError', 'ERR_ABORTED')

export function isFerryError(error: unknown): error is FerryError {
  return error instanceof FerryError
}
