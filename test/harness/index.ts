export * from './tmp.js';
export * from './scope.js';
export * from './ports.js';
export * from './process.js';
export * from './token-issuer.js';
export * from './registry.js';
export * from './images.js';
export * from './containerd.js';
export * from './metrics.js';
export * from './ferry.js';
export * from './files.js';
export * from './netns.js';
// Namespaced because `skopeo.copy` / `skopeo.inspect` say what they run; bare `copy` would not.
export * as skopeo from './skopeo.js';
export type { RegistryCredentials } from './skopeo.js';
