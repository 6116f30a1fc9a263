export { DiskBlobStore } from './disk-blob-store.js'
export { MemoryBlobStore } from './memory-blob-store.js'
export { LevelMetadataStore } from './level-metadata-store.js'
export { MemoryMetadataStore } from './memory-metadata-store.js'
