/**
 * The error codes of the OCI distribution spec (plus distribution's UNAVAILABLE and RANGE_INVALID),
 * each with the HTTP status Ferry answers it with. Every error body Ferry writes uses one of these.
 */
export const OciErrorCodes = {
  BLOB_UNKNOWN: { status: 404, message: 'blob unknown to registry' },
  BLOB_UPLOAD_INVALID: { status: 400, message: 'blob upload invalid' },
  BLOB_UPLOAD_UNKNOWN: { status: 404, message: 'blob upload unknown to registry' },
  DIGEST_INVALID: { status: 400, message: 'provided digest did not match uploaded content' },
  MANIFEST_BLOB_UNKNOWN: { status: 404, message: 'manifest references a manifest or blob unknown to registry' },
  MANIFEST_INVALID: { status: 400, message: 'manifest invalid' },
  MANIFEST_UNKNOWN: { status: 404, message: 'manifest unknown to registry' },
  NAME_INVALID: { status: 400, message: 'invalid repository name' },
  NAME_UNKNOWN: { status: 404, message: 'repository name not known to registry' },
  SIZE_INVALID: { status: 400, message: 'provided length did not match content length' },
  UNAUTHORIZED: { status: 401, message: 'authentication required' },
  DENIED: { status: 403, message: 'requested access to the resource is denied' },
  UNSUPPORTED: { status: 405, message: 'the operation is unsupported' },
  TOOMANYREQUESTS: { status: 429, message: 'too many requests' },
  RANGE_INVALID: { status: 416, message: 'requested range not satisfiable' },
  TAG_INVALID: { status: 400, message: 'invalid tag' },
  UNAVAILABLE: { status: 503, message: 'service unavailable' },
  UNKNOWN: { status: 500, message: 'unknown error' },
} as const satisfies Record<string, { status: number; message: string }>

export type OciErrorCode = keyof typeof OciErrorCodes

export interface OciErrorBody {
  errors: Array<{ code: OciErrorCode; message: string; detail?: unknown }>
}

export function ociErrorBody(code: OciErrorCode, message?: string, detail?: unknown): OciErrorBody {
  return { errors: [{ code, message: message ?? OciErrorCodes[code].message, ...(detail === undefined ? {} : { detail }) }] }
}
