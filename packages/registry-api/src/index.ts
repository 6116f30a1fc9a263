export { registerRegistryApi, ociErrorHandler, ociFrameworkErrorHandler, ociNotFoundHandler, type RegistryApiInit, type RegistryApiComponents } from './routes.js'
export { ociErrorFor } from './oci-errors.js'
export { parseV2Path, MAX_PATH_LENGTH, type V2Route } from './paths.js'
