import { readFile, writeFile, mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { stringify } from 'yaml'
import { startProcess, type ManagedProcess } from '../harness/index.js'

const FERRY_BIN = fileURLToPath(new URL('../../daemon/bin/ferry.js', import.meta.url))

export interface FerryProcess {
  url: string
  dataDir: string
  process: ManagedProcess
  stop(): Promise<unknown>
}

/** Starts a Ferry daemon process on a free loopback port mirroring `registries` (host -> upstream URLs). */
export async function startFerryProcess(dir: string, registries: Record<string, string[]>, extra: Record<string, unknown> = {}): Promise<FerryProcess> {
  await mkdir(dir, { recursive: true })
  const configPath = join(dir, 'config.yaml')
  const logFile = join(dir, 'ferry.log')
  const dataDir = join(dir, 'data')
  const config = {
    listen: '127.0.0.1:0',
    dataDir,
    log: { level: 'warn' },
    registries: Object.fromEntries(Object.entries(registries).map(([host, urls]) => [host, { upstreams: urls.map((url) => ({ url })) }])),
    ...extra,
  }
  await writeFile(configPath, stringify(config))
  let url: string | undefined
  const process = await startProcess({
    name: 'ferry',
    command: FERRY_BIN,
    args: ['daemon', '--config', configPath, '--log-level', 'info'],
    logFile,
    isReady: async () => {
      const text = await readFile(logFile, 'utf8').catch(() => '')
      const line = text.split('\n').find((entry) => entry.includes('"ferry is serving"'))
      if (line) url = (JSON.parse(line) as { url: string }).url
      return url !== undefined
    },
  })
  return { url: url!, dataDir, process, stop: () => process.stop() }
}
