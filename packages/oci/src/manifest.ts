import { InvalidManifestError } from './errors.js'
import { parseDigest } from './digest.js'
import { MediaTypes, isManifestMediaType, stripParameters } from './media-types.js'

/** Distribution refuses manifests above 4 MiB; so does Ferry, before buffering more. */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024

export interface Descriptor {
  mediaType: string
  digest: string
  size: number
  platform?: Platform
  annotations?: Record<string, string>
}

export interface Platform {
  architecture: string
  os: string
  variant?: string
}

export interface ParsedManifest {
  mediaType: string
  schemaVersion: number
  /** Image manifests: the config blob. */
  config?: Descriptor
  /** Image manifests: the layers. */
  layers: Descriptor[]
  /** Indexes and manifest lists: the platform manifests. */
  manifests: Descriptor[]
}

/**
 * Parses a manifest or index and the descriptors it references. The media type comes from the
 * document's own `mediaType`, else from the HTTP Content-Type, else from its shape (OCI allows the
 * field to be absent).
 */
export function parseManifest(bytes: Uint8Array, contentType?: string): ParsedManifest {
  if (bytes.byteLength > MAX_MANIFEST_BYTES) {
    throw new InvalidManifestError(`manifest of ${bytes.byteLength} bytes exceeds the ${MAX_MANIFEST_BYTES} byte limit`)
  }
  let document: unknown
  try {
    document = JSON.parse(Buffer.from(bytes).toString('utf8'))
  } catch (cause) {
    throw new InvalidManifestError('manifest is not valid JSON', { cause })
  }
  if (typeof document !== 'object' || document === null || Array.isArray(document)) {
    throw new InvalidManifestError('manifest is not a JSON object')
  }
  const record = document as Record<string, unknown>
  const schemaVersion = record.schemaVersion
  if (schemaVersion !== 2 && schemaVersion !== 1) {
    throw new InvalidManifestError(`unsupported manifest schemaVersion ${JSON.stringify(schemaVersion)}`)
  }
  const declared = typeof record.mediaType === 'string' ? record.mediaType : undefined
  const headerType = contentType === undefined ? undefined : stripParameters(contentType)
  const mediaType =
    declared ??
    (isManifestMediaType(headerType) ? headerType : undefined) ??
    (schemaVersion === 1 ? MediaTypes.dockerManifestV1Signed : Array.isArray(record.manifests) ? MediaTypes.ociIndex : MediaTypes.ociManifest)
  if (!isManifestMediaType(mediaType)) {
    throw new InvalidManifestError(`unsupported manifest media type ${JSON.stringify(mediaType)}`)
  }
  return {
    mediaType,
    schemaVersion,
    ...(record.config === undefined ? {} : { config: parseDescriptor(record.config, 'config') }),
    layers: parseDescriptors(record.layers, 'layers'),
    manifests: parseDescriptors(record.manifests, 'manifests'),
  }
}

function parseDescriptors(value: unknown, field: string): Descriptor[] {
  if (value === undefined) return []
  if (!Array.isArray(value)) throw new InvalidManifestError(`manifest field ${field} is not an array`)
  return value.map((item, index) => parseDescriptor(item, `${field}[${index}]`))
}

function parseDescriptor(value: unknown, field: string): Descriptor {
  if (typeof value !== 'object' || value === null) throw new InvalidManifestError(`manifest field ${field} is not an object`)
  const record = value as Record<string, unknown>
  if (typeof record.mediaType !== 'string') throw new InvalidManifestError(`manifest field ${field}.mediaType is missing`)
  if (typeof record.digest !== 'string') throw new InvalidManifestError(`manifest field ${field}.digest is missing`)
  if (typeof record.size !== 'number' || !Number.isSafeInteger(record.size) || record.size < 0) {
    throw new InvalidManifestError(`manifest field ${field}.size is not a non-negative integer`)
  }
  let digest: string
  try {
    digest = parseDigest(record.digest).digest
  } catch (cause) {
    throw new InvalidManifestError(`manifest field ${field}.digest is invalid`, { cause })
  }
  const descriptor: Descriptor = { mediaType: record.mediaType, digest, size: record.size }
  const platform = record.platform as Record<string, unknown> | undefined
  if (platform && typeof platform.architecture === 'string' && typeof platform.os === 'string') {
    descriptor.platform = {
      architecture: platform.architecture,
      os: platform.os,
      ...(typeof platform.variant === 'string' ? { variant: platform.variant } : {}),
    }
  }
  return descriptor
}
