/**
 * Peer transfer throughput: a blob moved node → node through the region (DHT look-up, mutual-TLS
 * HTTPS transfer, sha256 verification, optionally commit into a DiskBlobStore), against a raw
 * loopback TCP copy of the same file between the same two processes (with and without sha256).
 *
 *   node dist-test/bench/p2p-transfer.js [--mib 256] [--runs 3]
 *
 * or `benchPeerTransfer(log)` from `run.ts`. The serving node runs in a child process (this script
 * with `--serve`), so each side has its own event loop, as two daemons would. MB/s are 10^6 bytes
 * per second.
 */
import { spawn } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { createReadStream } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { connect, createServer, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath, pathToFileURL } from 'node:url'
import type { BlobStore } from '@ferry/interfaces'
import { RegionNode, type RegionConfig } from '@ferry/p2p'
import { DiskBlobStore } from '@ferry/store'
import { pino } from 'pino'

const args = process.argv.slice(2)
const option = (name: string, fallback: number) => {
  const index = args.indexOf(`--${name}`)
  return index >= 0 ? Number(args[index + 1]) : fallback
}
const SECRET = Buffer.from('ferry benchmark region secret, not for production use')
const logger = pino({ level: 'warn' })

function regionConfig(dir: string, bootstrap: string[]): RegionConfig {
  return {
    region: 'bench',
    secret: SECRET,
    listen: ['/ip4/127.0.0.1/tcp/0'],
    bootstrap,
    transfer: { host: '127.0.0.1', port: 0 },
    identityDir: join(dir, 'identity'),
    lookupTimeoutMs: 300,
    maxProviders: 5,
    negativeCacheMs: 0,
    penaltyMs: 60_000,
    reprovideIntervalMs: 600_000,
    maxTransfersPerPeer: 4,
    bootstrapIntervalMs: 1_000,
  }
}

async function writeBlob(store: BlobStore, size: number): Promise<string> {
  // Random content, hashed first so the writer can verify it on commit.
  const chunk = randomBytes(4 * 1024 * 1024)
  const hash = createHash('sha256')
  for (let written = 0; written < size; written += chunk.byteLength) hash.update(chunk.subarray(0, Math.min(chunk.byteLength, size - written)))
  const digest = `sha256:${hash.digest('hex')}`
  const writer = await store.ingest(digest, size)
  for (let written = 0; written < size; written += chunk.byteLength) await writer.write(chunk.subarray(0, Math.min(chunk.byteLength, size - written)))
  await writer.commit()
  return digest
}

async function serve(size: number): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-bench-serve-'))
  const store = await DiskBlobStore.open(join(dir, 'store'))
  const digest = await writeBlob(store, size)
  const node = await RegionNode.start({ logger, blobStore: store }, regionConfig(dir, []))
  await node.provideAll()
  // The raw baseline: the same file, straight onto a socket.
  const raw = createServer((socket) => {
    createReadStream(store.pathOf(digest), { highWaterMark: 1024 * 1024 }).pipe(socket)
  })
  raw.listen(0, '127.0.0.1')
  await once(raw, 'listening')
  const address = node.status().listen.find((entry) => !entry.includes('/http'))
  process.stdout.write(`${JSON.stringify({ address, digest, rawPort: (raw.address() as AddressInfo).port })}\n`)
  process.stdin.resume()
  await once(process.stdin, 'end')
  raw.close()
  await node.stop()
  await rm(dir, { recursive: true, force: true })
}

async function rawCopy(port: number, size: number, hashing: boolean): Promise<number> {
  const started = performance.now()
  const socket = connect(port, '127.0.0.1')
  const hash = hashing ? createHash('sha256') : undefined
  let received = 0
  for await (const chunk of socket) {
    received += (chunk as Buffer).byteLength
    hash?.update(chunk as Buffer)
  }
  hash?.digest()
  if (received !== size) throw new Error(`raw copy received ${received} of ${size} bytes`)
  return performance.now() - started
}

async function peerFetch(node: RegionNode, digest: string, store: DiskBlobStore | undefined): Promise<number> {
  const started = performance.now()
  const request = { kind: 'blob' as const, registry: 'bench', repository: 'bench', digest, offset: 0, signal: AbortSignal.timeout(120_000) }
  const content = await node.peerSource.fetch(request)
  if (!content) throw new Error('no provider found')
  if (store) {
    // The pull path's way: the writer hashes every chunk and commits only if the digest matches.
    const writer = await store.ingest(digest, content.size)
    for await (const chunk of content.body) await writer.write(chunk as Buffer)
    await writer.commit()
  } else {
    const hash = createHash('sha256')
    for await (const chunk of content.body) hash.update(chunk as Buffer)
    if (`sha256:${hash.digest('hex')}` !== digest) throw new Error('digest mismatch')
  }
  return performance.now() - started
}

export interface PeerTransferResult {
  bytes: number
  runs: number
  /** MB/s by path: median and best run. */
  rates: Record<string, { median: number; best: number }>
}

export async function benchPeerTransfer(
  log: (line: string) => void,
  options: { mib?: number; runs?: number } = {},
): Promise<PeerTransferResult> {
  const size = (options.mib ?? 256) * 1024 * 1024
  const runs = options.runs ?? 3
  const child = spawn(process.execPath, [fileURLToPath(import.meta.url), '--serve', '--mib', String(size / 1024 / 1024)], {
    stdio: ['pipe', 'pipe', 'inherit'],
  })
  const [line] = (await once(createInterface({ input: child.stdout! }), 'line')) as [string]
  const served = JSON.parse(line) as { address: string; digest: string; rawPort: number }
  const dir = await mkdtemp(join(tmpdir(), 'ferry-bench-fetch-'))
  const node = await RegionNode.start({ logger, blobStore: await DiskBlobStore.open(join(dir, 'own')) }, regionConfig(dir, [served.address]))
  try {
    while (node.status().routingTableSize < 1) await new Promise((resolve) => setTimeout(resolve, 20))
    const times: Record<string, number[]> = {
      'raw TCP copy': [],
      'raw TCP copy + sha256': [],
      'peer: look-up + mTLS HTTPS + sha256': [],
      'peer: look-up + mTLS HTTPS + verify + commit to disk': [],
    }
    for (let run = 0; run < runs; run += 1) {
      times['raw TCP copy']!.push(await rawCopy(served.rawPort, size, false))
      times['raw TCP copy + sha256']!.push(await rawCopy(served.rawPort, size, true))
      times['peer: look-up + mTLS HTTPS + sha256']!.push(await peerFetch(node, served.digest, undefined))
      const store = await DiskBlobStore.open(join(dir, `run-${run}`))
      times['peer: look-up + mTLS HTTPS + verify + commit to disk']!.push(await peerFetch(node, served.digest, store))
      await rm(join(dir, `run-${run}`), { recursive: true, force: true })
    }
    const rate = (ms: number) => size / 1e6 / (ms / 1000)
    const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!
    const rates = Object.fromEntries(
      Object.entries(times).map(([name, values]) => [name, { median: rate(median(values)), best: rate(Math.min(...values)) }]),
    )
    const raw = rates['raw TCP copy']!.median
    log(`${size / 1024 / 1024} MiB, ${runs} runs, two processes on loopback (MB/s: median, best)`)
    for (const [name, { median: medianRate, best }] of Object.entries(rates)) {
      log(`${name.padEnd(56)} ${medianRate.toFixed(0).padStart(6)} ${best.toFixed(0).padStart(6)}   ${(medianRate / raw).toFixed(2)}x raw`)
    }
    return { bytes: size, runs, rates }
  } finally {
    await node.stop()
    child.stdin!.end()
    await once(child, 'exit')
    await rm(dir, { recursive: true, force: true })
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  if (args.includes('--serve')) await serve(option('mib', 256) * 1024 * 1024)
  else await benchPeerTransfer((line) => process.stdout.write(`${line}\n`), { mib: option('mib', 256), runs: option('runs', 3) })
}
