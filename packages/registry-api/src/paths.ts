import { InvalidNameError, UnsupportedError, parseDigest, parseReference, validateRepository, type Reference } from '@ferry/oci'

/** Longest request path Ferry parses: a 255-character name plus the longest digest, with room to spare. */
export const MAX_PATH_LENGTH = 1024

export type V2Route =
  | { kind: 'base' }
  | { kind: 'manifest'; repository: string; reference: Reference }
  | { kind: 'blob'; repository: string; digest: string }
  | { kind: 'tags'; repository: string }

/**
 * Parses the path of a distribution API request: `/v2/`, `/v2/<name>/manifests/<reference>` or
 * `/v2/<name>/blobs/<digest>`. The name may itself contain `manifests` or `blobs` components: the
 * kind is always the second-to-last segment, since neither references nor digests contain `/`.
 */
export function parseV2Path(pathname: string): V2Route {
  if (pathname.length > MAX_PATH_LENGTH) {
    throw new InvalidNameError(`request path of ${pathname.length} characters exceeds ${MAX_PATH_LENGTH}`)
  }
  if (pathname === '/v2' || pathname === '/v2/') return { kind: 'base' }
  const segments = pathname.slice('/v2/'.length).split('/').map(decodeSegment)
  if (segments.length >= 4 && segments.at(-3) === 'blobs' && segments.at(-2) === 'uploads') {
    throw new UnsupportedError('Ferry is a pull-only mirror: pushes are not supported')
  }
  if (segments.length >= 3 && segments.at(-2) === 'blobs' && segments.at(-1) === 'uploads') {
    throw new UnsupportedError('Ferry is a pull-only mirror: pushes are not supported')
  }
  if (segments.length < 3) throw new InvalidNameError(`not a distribution API path: ${JSON.stringify(pathname.slice(0, 200))}`)
  const kind = segments.at(-2)
  const last = segments.at(-1)!
  const repository = validateRepository(segments.slice(0, -2).join('/'))
  if (kind === 'manifests') return { kind: 'manifest', repository, reference: parseReference(last) }
  if (kind === 'blobs') return { kind: 'blob', repository, digest: parseDigest(last).digest }
  if (kind === 'tags' && last === 'list') return { kind: 'tags', repository }
  throw new InvalidNameError(`not a distribution API path: ${JSON.stringify(pathname.slice(0, 200))}`)
}

function decodeSegment(segment: string): string {
  try {
    return decodeURIComponent(segment)
  } catch {
    throw new InvalidNameError(`malformed percent-encoding in ${JSON.stringify(segment.slice(0, 100))}`)
  }
}
