import { FerryError, OciErrorCodes, ociErrorBody, type FerryErrorCode, type OciErrorBody, type OciErrorCode } from '@ferry/oci'

/**
 * The one table from Ferry's error taxonomy to what a client sees. Client mistakes are 4xx; failures
 * of the sources behind Ferry are 5xx, so that containerd moves on to its next host at once.
 */
const OCI_ERROR_FOR: Record<FerryErrorCode, { code: OciErrorCode; status: number }> = {
  ERR_NAME_INVALID: { code: 'NAME_INVALID', status: 400 },
  ERR_REFERENCE_INVALID: { code: 'TAG_INVALID', status: 400 },
  ERR_DIGEST_INVALID: { code: 'DIGEST_INVALID', status: 400 },
  ERR_DIGEST_UNSUPPORTED: { code: 'DIGEST_INVALID', status: 400 },
  ERR_RANGE_INVALID: { code: 'RANGE_INVALID', status: 416 },
  ERR_MANIFEST_INVALID: { code: 'MANIFEST_INVALID', status: 400 },
  ERR_NOT_MIRRORED: { code: 'NAME_UNKNOWN', status: 404 },
  ERR_BLOB_NOT_FOUND: { code: 'BLOB_UNKNOWN', status: 404 },
  ERR_MANIFEST_NOT_FOUND: { code: 'MANIFEST_UNKNOWN', status: 404 },
  ERR_REPOSITORY_NOT_FOUND: { code: 'NAME_UNKNOWN', status: 404 },
  ERR_DIGEST_MISMATCH: { code: 'UNAVAILABLE', status: 502 },
  ERR_SIZE_MISMATCH: { code: 'UNAVAILABLE', status: 502 },
  ERR_UPSTREAM_UNAVAILABLE: { code: 'UNAVAILABLE', status: 503 },
  ERR_UPSTREAM_AUTH: { code: 'UNAVAILABLE', status: 502 },
  ERR_UPSTREAM_PROTOCOL: { code: 'UNAVAILABLE', status: 502 },
  ERR_UNSUPPORTED: { code: 'UNSUPPORTED', status: 405 },
  ERR_TIMEOUT: { code: 'UNAVAILABLE', status: 504 },
  ERR_ABORTED: { code: 'UNAVAILABLE', status: 503 },
}

export interface OciErrorResponse {
  status: number
  body: OciErrorBody
}

/** Maps any error to an HTTP status and an OCI error body; unknown errors never leak their message. */
export function ociErrorFor(error: unknown): OciErrorResponse {
  if (error instanceof FerryError) {
    const { code, status } = OCI_ERROR_FOR[error.code]
    return { status, body: ociErrorBody(code, error.message, error.detail) }
  }
  const status = (error as { statusCode?: number }).statusCode
  if (typeof status === 'number' && status >= 400 && status < 500) {
    const code: OciErrorCode = status === 404 ? 'NAME_UNKNOWN' : status === 405 ? 'UNSUPPORTED' : status === 429 ? 'TOOMANYREQUESTS' : 'UNSUPPORTED'
    return { status, body: ociErrorBody(code, (error as Error).message) }
  }
  return { status: OciErrorCodes.UNKNOWN.status, body: ociErrorBody('UNKNOWN', 'internal error') }
}
