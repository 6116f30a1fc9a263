import { mkdir, rename, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { normalizeRegistryHost } from '@ferry/oci'

export interface HostsTomlEntry {
  /** Registry host as named in image references. */
  registry: string
  /** Where containerd goes when Ferry fails: the registry itself. Default `https://<registry>`. */
  server?: string
}

/**
 * containerd's `hosts.toml` for one registry: Ferry first as a pull/resolve mirror, then the
 * registry itself. containerd 1.6 rejects a file without a `[host]` table and silently falls back
 * to the registry, so the mirror is always written as a table.
 */
export function hostsToml(entry: HostsTomlEntry, mirrorUrl: string): string {
  const registry = normalizeRegistryHost(entry.registry)
  const server = entry.server ?? (registry === 'docker.io' ? 'https://registry-1.docker.io' : `https://${registry}`)
  return [
    '# Written by `ferry hosts-toml`: pulls go through the node-local Ferry mirror first.',
    `server = ${tomlString(server)}`,
    '',
    `[host.${tomlString(mirrorUrl.replace(/\/+$/, ''))}]`,
    '  capabilities = ["pull", "resolve"]',
    '',
  ].join('\n')
}

/** Writes `<dir>/<registry>/hosts.toml` for each entry, atomically; returns the paths written. */
export async function writeHostsTomls(dir: string, entries: HostsTomlEntry[], mirrorUrl: string): Promise<string[]> {
  const written: string[] = []
  for (const entry of entries) {
    const registryDir = join(dir, normalizeRegistryHost(entry.registry))
    await mkdir(registryDir, { recursive: true })
    const path = join(registryDir, 'hosts.toml')
    await writeFile(`${path}.tmp`, hostsToml(entry, mirrorUrl))
    await rename(`${path}.tmp`, path)
    written.push(path)
  }
  return written
}

function tomlString(value: string): string {
  return JSON.stringify(value)
}
