import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { loadOrCreateNodeCa } from '@ferry/proxy'
import { ConfigError, loadConfig, type FerryConfig } from './config.js'
import { startDaemon } from './daemon.js'
import { writeHostsTomls, type HostsTomlEntry } from './hosts-toml.js'

const USAGE = `Usage: ferry <command> [options]

Commands:
  daemon       Run the mirror daemon.
               --config FILE      YAML config (default: FERRY_CONFIG, else the embedded default)
               --listen HOST:PORT --data-dir DIR --log-level LEVEL
               --set key.path=value  (repeatable; applied after the file and FERRY_* variables)
  check-config Validate the config as 'daemon' would, print it as JSON, and exit.
  hosts-toml   Write containerd hosts.toml files pointing at Ferry.
               --dir DIR          certs.d directory (default /etc/containerd/certs.d)
               --mirror URL       Ferry's URL (default http://127.0.0.1:5050, or the config's listen)
               --config FILE      also write one for every registry in the config
               REGISTRY[=SERVER_URL] ...   registries to mirror; SERVER_URL is the fallback
  proxy-ca     Print the node CA of proxy mode (PEM), creating it if needed: install it as
               /etc/docker/certs.d/<registry>/ca.crt (or in the system trust store).
               --config FILE      as for daemon (the CA lives in proxy.caDir, default <dataDir>/proxy-ca)
  status       Show a running daemon's status: store, downloads, region peers and DHT.
               --url URL          the daemon (default http://127.0.0.1:5050)
  help         Show this text.
`

export async function main(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const [command, ...rest] = argv
  try {
    switch (command) {
      case 'daemon':
        return await runDaemon(rest, env)
      case 'check-config':
        process.stdout.write(`${JSON.stringify(redact(configFromArgs(rest, env).config), null, 2)}\n`)
        return 0
      case 'hosts-toml':
        return await runHostsToml(rest, env)
      case 'status':
        return await runStatus(rest)
      case 'proxy-ca':
        return await runProxyCa(rest, env)
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        process.stdout.write(USAGE)
        return command === undefined ? 2 : 0
      default:
        process.stderr.write(`ferry: unknown command ${JSON.stringify(command)}\n\n${USAGE}`)
        return 2
    }
  } catch (error) {
    if (error instanceof ConfigError || (error as { code?: string }).code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') {
      process.stderr.write(`ferry: ${(error as Error).message}\n`)
      return 2
    }
    throw error
  }
}

const DAEMON_OPTIONS = {
  config: { type: 'string' },
  listen: { type: 'string' },
  'data-dir': { type: 'string' },
  'log-level': { type: 'string' },
  set: { type: 'string', multiple: true },
} as const

function configFromArgs(args: string[], env: NodeJS.ProcessEnv): { config: FerryConfig } {
  const { values } = parseArgs({ args, options: DAEMON_OPTIONS, allowPositionals: false })
  const filePath = values.config ?? env.FERRY_CONFIG
  let fileText: string | undefined
  if (filePath !== undefined) {
    try {
      fileText = readFileSync(filePath, 'utf8')
    } catch (error) {
      throw new ConfigError(`--config ${filePath}: cannot read: ${(error as Error).message}`)
    }
  }
  const overrides = [...(values.set ?? [])]
  if (values.listen !== undefined) overrides.push(`listen=${values.listen}`)
  if (values['data-dir'] !== undefined) overrides.push(`dataDir=${values['data-dir']}`)
  if (values['log-level'] !== undefined) overrides.push(`log.level=${values['log-level']}`)
  return { config: loadConfig({ fileText, filePath, env, overrides, cwd: process.cwd() }) }
}

async function runDaemon(args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const { config } = configFromArgs(args, env)
  const daemon = await startDaemon(config)
  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      daemon.app.log.info({ signal }, 'shutting down')
      process.off('SIGTERM', onTerm)
      process.off('SIGINT', onInt)
      resolve()
    }
    const onTerm = () => stop('SIGTERM')
    const onInt = () => stop('SIGINT')
    process.on('SIGTERM', onTerm)
    process.on('SIGINT', onInt)
  })
  await daemon.close()
  daemon.app.log.info({}, 'stopped')
  return 0
}

async function runHostsToml(args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    options: { dir: { type: 'string' }, mirror: { type: 'string' }, config: { type: 'string' } },
    allowPositionals: true,
  })
  const entries: HostsTomlEntry[] = positionals.map((argument) => {
    const equals = argument.indexOf('=')
    return equals === -1 ? { registry: argument } : { registry: argument.slice(0, equals), server: argument.slice(equals + 1) }
  })
  let mirror = values.mirror
  if (values.config !== undefined) {
    const { config } = configFromArgs(['--config', values.config], env)
    for (const registry of config.registries) {
      if (!entries.some((entry) => entry.registry === registry.registry)) entries.push({ registry: registry.registry })
    }
    mirror ??= `http://${config.listen.host}:${config.listen.port}`
  }
  if (entries.length === 0) throw new ConfigError('hosts-toml: name at least one registry, or --config FILE')
  const written = await writeHostsTomls(values.dir ?? '/etc/containerd/certs.d', entries, mirror ?? 'http://127.0.0.1:5050')
  for (const path of written) process.stdout.write(`${path}\n`)
  return 0
}

async function runProxyCa(args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const { config } = configFromArgs(args, env)
  const caDir = config.proxy?.caDir ?? join(config.dataDir, 'proxy-ca')
  const ca = await loadOrCreateNodeCa(caDir)
  process.stdout.write(ca.certificatePem)
  return 0
}

async function runStatus(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { url: { type: 'string' } } })
  const base = (values.url ?? 'http://127.0.0.1:5050').replace(/\/+$/, '')
  let response: Response
  try {
    response = await fetch(`${base}/status`, { signal: AbortSignal.timeout(5000) })
  } catch (error) {
    process.stderr.write(`ferry: cannot reach ${base}: ${(error as Error).message}\n`)
    return 1
  }
  process.stdout.write(`${JSON.stringify(await response.json(), null, 2)}\n`)
  return response.ok ? 0 : 1
}

function redact(config: FerryConfig): unknown {
  return JSON.parse(JSON.stringify(config, (key, value) => (key === 'password' || key === 'secret' ? '<redacted>' : value)))
}
