export { ForwardProxy, type ForwardProxyComponents, type ForwardProxyInit } from './forward-proxy.js'
export { loadOrCreateNodeCa, type NodeCertificateAuthority } from './node-ca.js'
export { forwardRequest, type ForwardOptions } from './passthrough.js'
