import { InvalidNameError, InvalidReferenceError } from './errors.js'
import { isDigest, parseDigest } from './digest.js'

/** Path components per the distribution spec: lowercase alphanumerics joined by `.`, `_`, `__` or dashes. */
const REPOSITORY_GRAMMAR = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$/
const TAG_GRAMMAR = /^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/
/** Distribution's limit on a repository name. */
export const MAX_REPOSITORY_LENGTH = 255
/** hostname[:port]: DNS labels or an IPv4 address, or a bracketed IPv6 address. */
const REGISTRY_HOST_GRAMMAR =
  /^(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*|\[[0-9a-fA-F:.]+\])(?::[0-9]{1,5})?$/
const MAX_HOST_LENGTH = 255

export function validateRepository(name: string): string {
  if (name.length === 0 || name.length > MAX_REPOSITORY_LENGTH) {
    throw new InvalidNameError(`repository name must be 1 to ${MAX_REPOSITORY_LENGTH} characters, got ${name.length}`, {
      detail: { length: name.length },
    })
  }
  if (!REPOSITORY_GRAMMAR.test(name)) {
    throw new InvalidNameError(`invalid repository name ${JSON.stringify(name)}`, { detail: { name } })
  }
  return name
}

export function isTag(reference: string): boolean {
  return TAG_GRAMMAR.test(reference)
}

export type Reference = { kind: 'tag'; tag: string } | { kind: 'digest'; digest: string }

/** A manifest reference: a tag or a digest. Digests of algorithms other than sha256 are rejected. */
export function parseReference(reference: string): Reference {
  if (reference.includes(':')) {
    return { kind: 'digest', digest: parseDigest(reference).digest }
  }
  if (!isTag(reference)) {
    throw new InvalidReferenceError(`invalid tag ${JSON.stringify(reference.slice(0, 140))}`, {
      detail: { reference: reference.slice(0, 140) },
    })
  }
  return { kind: 'tag', tag: reference }
}

export function isDigestReference(reference: string): boolean {
  return reference.includes(':') && isDigest(reference)
}

/**
 * Canonical registry host. `index.docker.io` and `registry-1.docker.io` are Docker Hub's API hosts
 * for what image references call `docker.io`, and containerd sends `ns=docker.io`.
 */
export function normalizeRegistryHost(host: string): string {
  if (host.length === 0 || host.length > MAX_HOST_LENGTH || !REGISTRY_HOST_GRAMMAR.test(host)) {
    throw new InvalidNameError(`invalid registry host ${JSON.stringify(host.slice(0, 100))}`, {
      detail: { registry: host.slice(0, 100) },
    })
  }
  const lower = host.toLowerCase()
  if (lower === 'index.docker.io' || lower === 'registry-1.docker.io') return 'docker.io'
  return lower
}
