import { readFileSync } from 'node:fs'
import { isAbsolute, resolve } from 'node:path'
import { parse as parseYaml } from 'yaml'
import { z } from 'zod'
import { normalizeRegistryHost } from '@ferry/oci'
import { parseRegionSecret } from '@ferry/p2p'
import { parseDuration, parseSize } from './durations.js'

/** A config problem, always naming the key at fault. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError'
  readonly code = 'ERR_CONFIG'
}

/**
 * The embedded default: what `ferry daemon` runs with no file. A mirror on loopback, data in
 * `./.ferry` under the working directory, Docker Hub mirrored, no peers.
 */
export const DEFAULT_CONFIG_YAML = `
listen: 127.0.0.1:5050
dataDir: ./.ferry
registries:
  docker.io:
    upstreams:
      - url: https://registry-1.docker.io
`

const duration = (fallback: string) =>
  z
    .union([z.string(), z.number()])
    .default(fallback)
    .transform((value, context) => {
      const ms = parseDuration(value)
      if (ms === undefined) {
        context.addIssue({ code: 'custom', message: `expected a duration like 500ms, 3s, 10m or 1h, got ${JSON.stringify(value)}` })
        return z.NEVER
      }
      return ms
    })

const size = z.union([z.string(), z.number()]).transform((value, context) => {
  const bytes = parseSize(value)
  if (bytes === undefined) {
    context.addIssue({ code: 'custom', message: `expected a size like 500MB or 50GiB, got ${JSON.stringify(value)}` })
    return z.NEVER
  }
  return bytes
})

const hostPort = z.string().refine((value) => parseHostPort(value) !== undefined, {
  message: 'expected host:port, e.g. 127.0.0.1:5050',
})

const httpUrl = z.string().refine(
  (value) => {
    try {
      const url = new URL(value)
      return (url.protocol === 'http:' || url.protocol === 'https:') && url.username === '' && url.password === ''
    } catch {
      return false
    }
  },
  { message: 'expected an http:// or https:// URL without credentials in it (use auth)' },
)

const upstreamSchema = z
  .object({
    name: z
      .string()
      .regex(/^[A-Za-z0-9][A-Za-z0-9._:-]*$/, 'expected letters, digits, ".", "_", ":" or "-"')
      .optional(),
    url: httpUrl,
    repositoryPrefix: z
      .string()
      .regex(/^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$/, 'expected a repository path like dockerhub-proxy')
      .optional(),
    auth: z
      .object({
        username: z.string().min(1),
        password: z.string().min(1).optional(),
        passwordFile: z.string().min(1).optional(),
      })
      .strict()
      .refine((auth) => (auth.password === undefined) !== (auth.passwordFile === undefined), {
        message: 'set exactly one of password or passwordFile',
      })
      .optional(),
    timeout: z
      .object({ connect: duration('3s'), firstByte: duration('15s'), idle: duration('30s') })
      .strict()
      .prefault({}),
    breaker: z
      .object({ failures: z.number().int().min(1).default(5), open: duration('30s') })
      .strict()
      .prefault({}),
    tls: z
      .object({ caFile: z.string().min(1).optional(), insecureSkipVerify: z.boolean().default(false) })
      .strict()
      .optional(),
  })
  .strict()

const registrySchema = z
  .object({
    upstreams: z.array(upstreamSchema).min(1, 'a mirrored registry needs at least one upstream'),
    peers: z.boolean().default(true),
  })
  .strict()

export const configSchema = z
  .object({
    listen: hostPort.default('127.0.0.1:5050'),
    dataDir: z.string().min(1).default('./.ferry'),
    defaultRegistry: z.string().min(1).optional(),
    log: z
      .object({ level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info') })
      .strict()
      .prefault({}),
    tagTimeout: duration('3s'),
    orphanTimeout: duration('10m'),
    shutdownTimeout: duration('10s'),
    registries: z.record(z.string(), registrySchema).default({}),
    proxy: z
      .object({ listen: hostPort.default('127.0.0.1:5051'), caDir: z.string().min(1).optional(), connectTimeout: duration('5s') })
      .strict()
      .optional(),
    p2p: z
      .object({
        region: z.string().regex(/^[a-z0-9][a-z0-9.-]{0,62}$/, 'expected a region name of lowercase letters, digits, "." and "-"'),
        pskFile: z.string().min(1),
        listen: z.union([z.string(), z.array(z.string())]).default(['/ip4/0.0.0.0/tcp/5052']),
        bootstrap: z.array(z.string()).default([]),
        transfer: z
          .object({ listen: hostPort.default('0.0.0.0:5053'), advertiseHost: z.string().min(1).optional() })
          .strict()
          .prefault({}),
        lookupTimeout: duration('300ms'),
        maxProviders: z.number().int().min(1).max(20).default(5),
        negativeCache: duration('2s'),
        penalty: duration('60s'),
        reprovideInterval: duration('1h'),
        maxTransfersPerPeer: z.number().int().min(1).default(8),
        offlineTags: z.boolean().default(false),
        transferTimeout: z
          .object({
            connect: duration('1s'),
            firstByte: duration('3s'),
            idle: duration('10s'),
            fetchThroughConnect: duration('3s'),
            fetchThroughFirstByte: duration('15s'),
          })
          .strict()
          .prefault({}),
      })
      .strict()
      .optional(),
    store: z
      .object({
        maxSize: size.optional(),
        lowWater: z.number().gt(0).max(1).default(0.9),
        evictionInterval: duration('1m'),
      })
      .strict()
      .prefault({}),
  })
  .strict()

export type ConfigInput = z.input<typeof configSchema>
type ParsedConfig = z.output<typeof configSchema>

export interface UpstreamSettings {
  name: string
  url: string
  credentials: { username: string; password: string } | undefined
  timeouts: { connectMs: number; firstByteMs: number; idleMs: number }
  breaker: { failureThreshold: number; openMs: number }
  tls: { ca: string | undefined; insecureSkipVerify: boolean } | undefined
  repositoryPrefix: string | undefined
}

export interface P2PSettings {
  region: string
  /** The region secret from pskFile. */
  secret: Uint8Array
  listen: string[]
  bootstrap: string[]
  transfer: { host: string; port: number; advertiseHost: string | undefined }
  lookupTimeoutMs: number
  maxProviders: number
  negativeCacheMs: number
  penaltyMs: number
  reprovideIntervalMs: number
  maxTransfersPerPeer: number
  /** Ask region peers for their last-known tag when every upstream is down and this node has none. */
  offlineTags: boolean
  transferTimeouts: { connectMs: number; firstByteMs: number; idleMs: number; fetchThroughConnectMs: number; fetchThroughFirstByteMs: number }
}

export interface RegistrySettings {
  registry: string
  upstreams: UpstreamSettings[]
  peers: boolean
}

/** The validated, frozen configuration: durations in ms, secrets read, paths absolute. */
export interface FerryConfig {
  listen: { host: string; port: number }
  dataDir: string
  defaultRegistry: string | undefined
  log: { level: string }
  tagTimeoutMs: number
  orphanTimeoutMs: number
  shutdownTimeoutMs: number
  registries: RegistrySettings[]
  /** Forward-proxy mode for Docker hosts; unset means off. */
  proxy: { listen: { host: string; port: number }; caDir: string; connectTimeoutMs: number } | undefined
  /** Region peers; unset means this node works alone. */
  p2p: P2PSettings | undefined
  /** Quota of the blob store; unset means no eviction. */
  store: { maxBytes: number | undefined; lowWaterRatio: number; evictionIntervalMs: number }
}

export interface ConfigSources {
  /** YAML text of the config file, or undefined for the embedded default. */
  fileText?: string | undefined
  /** Where the file came from, for error messages and relative paths. */
  filePath?: string | undefined
  /** `FERRY_*` variables: FERRY_LISTEN, FERRY_DATA_DIR, FERRY_LOG__LEVEL (nested keys joined by `__`). */
  env?: Record<string, string | undefined>
  /** `key.path=value` overrides from the command line, applied last. */
  overrides?: string[]
  /** Directory relative paths are resolved against. */
  cwd: string
  /** Reads secret files; injected so tests need no files. */
  readFile?: (path: string) => string
  /** Reads binary secret files (the region secret). */
  readBinaryFile?: (path: string) => Buffer
}

/** Merges file (or embedded default), environment and flags, then validates, naming the key of every problem. */
export function loadConfig(sources: ConfigSources): FerryConfig {
  const origin = sources.filePath ?? 'embedded default config'
  let document: unknown
  try {
    document = parseYaml(sources.fileText ?? DEFAULT_CONFIG_YAML) ?? {}
  } catch (error) {
    throw new ConfigError(`${origin}: not valid YAML: ${(error as Error).message}`)
  }
  if (typeof document !== 'object' || Array.isArray(document) || document === null) {
    throw new ConfigError(`${origin}: the top level must be a mapping of keys`)
  }
  const merged = document as Record<string, unknown>
  for (const [name, value] of Object.entries(sources.env ?? {})) {
    if (!name.startsWith('FERRY_') || name === 'FERRY_CONFIG' || value === undefined) continue
    const path = name.slice('FERRY_'.length).split('__').map(screamingToCamel)
    setPath(merged, path, parseScalar(value), name)
  }
  for (const override of sources.overrides ?? []) {
    const equals = override.indexOf('=')
    if (equals <= 0) throw new ConfigError(`--set ${override}: expected key.path=value`)
    setPath(merged, override.slice(0, equals).split('.'), parseScalar(override.slice(equals + 1)), `--set ${override}`)
  }
  const result = configSchema.safeParse(merged)
  if (!result.success) {
    const problems = result.error.issues.map((issue) => `${formatPath(issue.path)}: ${issueMessage(issue)}`)
    throw new ConfigError(`${origin}: invalid config:\n  ${problems.join('\n  ')}`)
  }
  const baseDir = sources.filePath ? resolve(sources.cwd, sources.filePath, '..') : sources.cwd
  return finish(result.data, { ...sources, cwd: baseDir })
}

function finish(parsed: ParsedConfig, sources: ConfigSources): FerryConfig {
  const readFile = sources.readFile ?? ((path: string) => readFileSync(path, 'utf8'))
  const readSecret = sources.readBinaryFile ?? ((path: string) => readFileSync(path))
  const absolute = (path: string) => (isAbsolute(path) ? path : resolve(sources.cwd, path))
  const registries: RegistrySettings[] = []
  for (const [host, registry] of Object.entries(parsed.registries)) {
    let name: string
    try {
      name = normalizeRegistryHost(host)
    } catch (error) {
      throw new ConfigError(`registries.${JSON.stringify(host)}: ${(error as Error).message}`)
    }
    const upstreams = registry.upstreams.map((upstream, index): UpstreamSettings => {
      const key = `registries.${JSON.stringify(host)}.upstreams[${index}]`
      let password = upstream.auth?.password
      if (upstream.auth?.passwordFile !== undefined) {
        try {
          password = readFile(absolute(upstream.auth.passwordFile)).trim()
        } catch (error) {
          throw new ConfigError(`${key}.auth.passwordFile: cannot read ${upstream.auth.passwordFile}: ${(error as Error).message}`)
        }
        if (password === '') throw new ConfigError(`${key}.auth.passwordFile: ${upstream.auth.passwordFile} is empty`)
      }
      let ca: string | undefined
      if (upstream.tls?.caFile !== undefined) {
        try {
          ca = readFile(absolute(upstream.tls.caFile))
        } catch (error) {
          throw new ConfigError(`${key}.tls.caFile: cannot read ${upstream.tls.caFile}: ${(error as Error).message}`)
        }
      }
      return {
        name: upstream.name ?? new URL(upstream.url).host,
        url: upstream.url.replace(/\/+$/, ''),
        credentials: upstream.auth ? { username: upstream.auth.username, password: password! } : undefined,
        timeouts: { connectMs: upstream.timeout.connect, firstByteMs: upstream.timeout.firstByte, idleMs: upstream.timeout.idle },
        breaker: { failureThreshold: upstream.breaker.failures, openMs: upstream.breaker.open },
        tls: upstream.tls ? { ca, insecureSkipVerify: upstream.tls.insecureSkipVerify } : undefined,
        repositoryPrefix: upstream.repositoryPrefix,
      }
    })
    const names = new Set<string>()
    for (const [index, upstream] of upstreams.entries()) {
      if (names.has(upstream.name)) {
        throw new ConfigError(`registries.${JSON.stringify(host)}.upstreams[${index}].name: ${upstream.name} is used twice; give each upstream its own name`)
      }
      names.add(upstream.name)
    }
    registries.push({ registry: name, upstreams, peers: registry.peers })
  }
  let defaultRegistry: string | undefined
  if (parsed.defaultRegistry !== undefined) {
    try {
      defaultRegistry = normalizeRegistryHost(parsed.defaultRegistry)
    } catch (error) {
      throw new ConfigError(`defaultRegistry: ${(error as Error).message}`)
    }
    if (!registries.some((registry) => registry.registry === defaultRegistry)) {
      throw new ConfigError(`defaultRegistry: ${parsed.defaultRegistry} is not one of the configured registries`)
    }
  } else if (registries.length === 1) {
    // With one mirrored registry, requests without `?ns=` (skopeo, crane) can only mean that one.
    defaultRegistry = registries[0]!.registry
  }
  let p2p: P2PSettings | undefined
  if (parsed.p2p) {
    const settings = parsed.p2p
    let file: Buffer
    try {
      file = readSecret(absolute(settings.pskFile))
    } catch (error) {
      throw new ConfigError(`p2p.pskFile: cannot read ${settings.pskFile}: ${(error as Error).message}`)
    }
    let secret: Uint8Array
    try {
      secret = parseRegionSecret(file)
    } catch (error) {
      throw new ConfigError(`p2p.pskFile: ${settings.pskFile}: ${(error as Error).message}`)
    }
    const listenAddresses = typeof settings.listen === 'string' ? [settings.listen] : settings.listen
    for (const [index, address] of [...listenAddresses.map((a) => ['listen', a] as const), ...settings.bootstrap.map((a) => ['bootstrap', a] as const)].entries()) {
      if (!address[1].startsWith('/')) throw new ConfigError(`p2p.${address[0]}: ${JSON.stringify(address[1])} is not a multiaddr (e.g. /ip4/10.0.0.1/tcp/5052) [${index}]`)
    }
    const transfer = parseHostPort(settings.transfer.listen)!
    p2p = {
      region: settings.region,
      secret,
      listen: listenAddresses,
      bootstrap: settings.bootstrap,
      transfer: { ...transfer, advertiseHost: settings.transfer.advertiseHost },
      lookupTimeoutMs: settings.lookupTimeout,
      maxProviders: settings.maxProviders,
      negativeCacheMs: settings.negativeCache,
      penaltyMs: settings.penalty,
      reprovideIntervalMs: settings.reprovideInterval,
      maxTransfersPerPeer: settings.maxTransfersPerPeer,
      offlineTags: settings.offlineTags,
      transferTimeouts: {
        connectMs: settings.transferTimeout.connect,
        firstByteMs: settings.transferTimeout.firstByte,
        idleMs: settings.transferTimeout.idle,
        fetchThroughConnectMs: settings.transferTimeout.fetchThroughConnect,
        fetchThroughFirstByteMs: settings.transferTimeout.fetchThroughFirstByte,
      },
    }
  }
  const listen = parseHostPort(parsed.listen)!
  return deepFreeze({
    listen,
    dataDir: absolute(parsed.dataDir),
    defaultRegistry,
    log: { level: parsed.log.level },
    tagTimeoutMs: parsed.tagTimeout,
    orphanTimeoutMs: parsed.orphanTimeout,
    shutdownTimeoutMs: parsed.shutdownTimeout,
    registries,
    proxy: parsed.proxy
      ? {
          listen: loopbackOnly(parseHostPort(parsed.proxy.listen)!),
          caDir: absolute(parsed.proxy.caDir ?? resolve(absolute(parsed.dataDir), 'proxy-ca')),
          connectTimeoutMs: parsed.proxy.connectTimeout,
        }
      : undefined,
    p2p,
    store: { maxBytes: parsed.store.maxSize, lowWaterRatio: parsed.store.lowWater, evictionIntervalMs: parsed.store.evictionInterval },
  })
}

/** The forward proxy tunnels to any host: it must only ever be reachable from the node itself. */
function loopbackOnly(address: { host: string; port: number }): { host: string; port: number } {
  if (!/^(127\.\d+\.\d+\.\d+|::1|localhost)$/.test(address.host)) {
    throw new ConfigError(`proxy.listen: ${address.host} is not a loopback address; the proxy forwards to any host, so it listens on loopback only (e.g. 127.0.0.1:5051)`)
  }
  return address
}

export function parseHostPort(value: string): { host: string; port: number } | undefined {
  const match = /^(\[[0-9a-fA-F:.]+\]|[^:\s]+):(\d{1,5})$/.exec(value)
  if (!match) return undefined
  const port = Number(match[2])
  if (port > 65535) return undefined
  return { host: match[1]!.replace(/^\[|\]$/g, ''), port }
}

function screamingToCamel(part: string): string {
  return part.toLowerCase().replace(/_([a-z0-9])/g, (_, letter: string) => letter.toUpperCase())
}

function parseScalar(value: string): unknown {
  try {
    return parseYaml(value)
  } catch {
    return value
  }
}

function setPath(target: Record<string, unknown>, path: string[], value: unknown, origin: string): void {
  let node = target
  for (const [index, key] of path.entries()) {
    if (key === '' || key === '__proto__' || key === 'constructor' || key === 'prototype') {
      throw new ConfigError(`${origin}: invalid key path ${path.join('.')}`)
    }
    if (index === path.length - 1) {
      node[key] = value
      return
    }
    const next = node[key]
    if (typeof next !== 'object' || next === null || Array.isArray(next)) node[key] = {}
    node = node[key] as Record<string, unknown>
  }
}

function formatPath(path: PropertyKey[]): string {
  if (path.length === 0) return '(top level)'
  return path
    .map((key, index) =>
      typeof key === 'number' ? `[${key}]` : /^[A-Za-z_][A-Za-z0-9_]*$/.test(String(key)) ? `${index === 0 ? '' : '.'}${String(key)}` : `${index === 0 ? '' : '.'}${JSON.stringify(String(key))}`,
    )
    .join('')
}

function issueMessage(issue: z.core.$ZodIssue): string {
  if (issue.code === 'unrecognized_keys') return `unknown key${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((key) => JSON.stringify(key)).join(', ')}`
  return issue.message
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !ArrayBuffer.isView(value)) {
    for (const child of Object.values(value)) deepFreeze(child)
    Object.freeze(value)
  }
  return value
}
