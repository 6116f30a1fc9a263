export { Mirror, type RegistryRoute, type MirrorInit, type MirrorComponents, type ResolvedTag, type ManifestContent, type BlobContent } from './mirror.js'
export { Download } from './download.js'
export { createMirrorMetrics, type MirrorMetrics } from './metrics.js'
