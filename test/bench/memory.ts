/**
 * Memory under load: Ferry's resident set while 10 clients pull the same 512 MiB blob at once,
 * cold (one download, ten followers) and then from the cache. Streaming end to end means the peak
 * stays far below the blob size and does not grow with the number of clients.
 */
import { randomBytes } from 'node:crypto'
import { request } from 'undici'
import { createTempDir, runCommand, startRegistry } from '../harness/index.js'
import { uploadBlob } from './helpers.js'
import { startFerryProcess, type FerryProcess } from './ferry-process.js'

const BLOB_BYTES = 512 * 1024 * 1024
const CLIENTS = 10

export interface MemoryResult {
  blobBytes: number
  clients: number
  baselineRssBytes: number
  peakColdRssBytes: number
  peakHitRssBytes: number
}

export async function benchMemory(log: (line: string) => void): Promise<MemoryResult> {
  const dir = await createTempDir('bench-memory')
  const stops: Array<() => Promise<unknown>> = []
  try {
    const registry = await startRegistry({ dir: dir.path, name: 'central', auth: 'none' })
    stops.push(() => registry.stop())
    const digest = await uploadBlob(registry, 'bench/memory', randomBytes(BLOB_BYTES))
    const host = new URL(registry.url).host
    const ferry = await startFerryProcess(dir.join('ferry'), { [host]: [registry.url] })
    stops.push(() => ferry.stop())
    const url = `${ferry.url}/v2/bench/memory/blobs/${digest}?ns=${encodeURIComponent(host)}`
    const baselineRssBytes = await rss(ferry)
    const peakColdRssBytes = await peakWhile(ferry, () => pullAll(url))
    log(`cold: ${CLIENTS} clients, one download: peak RSS ${mib(peakColdRssBytes)} MiB (baseline ${mib(baselineRssBytes)} MiB, blob ${mib(BLOB_BYTES)} MiB)`)
    const peakHitRssBytes = await peakWhile(ferry, () => pullAll(url))
    log(`hit: ${CLIENTS} clients from the store: peak RSS ${mib(peakHitRssBytes)} MiB`)
    return { blobBytes: BLOB_BYTES, clients: CLIENTS, baselineRssBytes, peakColdRssBytes, peakHitRssBytes }
  } finally {
    for (const stop of stops.reverse()) await stop().catch(() => undefined)
    await dir.remove()
  }
}

async function pullAll(url: string): Promise<void> {
  await Promise.all(
    Array.from({ length: CLIENTS }, async () => {
      const { stdout } = await runCommand('curl', ['-sf', '-o', '/dev/null', '-w', '%{size_download}', url], { timeoutMs: 600_000 })
      if (Number(stdout) !== BLOB_BYTES) throw new Error(`a client got ${stdout} bytes, expected ${BLOB_BYTES}`)
    }),
  )
}

/** Samples the daemon's RSS (its own Prometheus gauge) every 50 ms while `work` runs. */
async function peakWhile(ferry: FerryProcess, work: () => Promise<void>): Promise<number> {
  let peak = 0
  let running = true
  const sampler = (async () => {
    while (running) {
      peak = Math.max(peak, await rss(ferry).catch(() => 0))
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  })()
  try {
    await work()
  } finally {
    running = false
    await sampler
  }
  return Math.max(peak, await rss(ferry))
}

async function rss(ferry: FerryProcess): Promise<number> {
  const text = await (await request(`${ferry.url}/metrics`)).body.text()
  const line = text.split('\n').find((entry) => entry.startsWith('ferry_process_resident_memory_bytes '))
  if (!line) throw new Error('the daemon reports no resident memory')
  return Number(line.slice(line.lastIndexOf(' ') + 1))
}

function mib(bytes: number): string {
  return (bytes / 1024 / 1024).toFixed(0)
}
