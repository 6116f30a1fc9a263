/**
 * Region benchmarks (issue 3), side by side in one run:
 * - peer path: a 256 MiB blob pulled through a cold Ferry whose region peer holds it (look-up,
 *   mutual-TLS transfer, verify, commit, serve) vs the same blob fetched directly from the CNCF
 *   registry, and vs a raw loopback TCP copy (the machine's limit), curl as the client;
 * - rollout: N cold daemons pull the same new image at once; bytes the registry served divided by
 *   the image size (1.0 would be every blob crossing once).
 */
import { randomBytes } from 'node:crypto'
import { copyFile, writeFile } from 'node:fs/promises'
import { createServer, connect, type AddressInfo } from 'node:net'
import { request } from 'undici'
import { createNetworkNamespace, createTempDir, startRegistry, type Registry } from '../harness/index.js'
import { curlSeconds, median, uploadBlob } from './helpers.js'
import { startFerryProcess, type FerryProcess } from './ferry-process.js'

const BLOB_BYTES = 256 * 1024 * 1024
const RUNS = 3
const ROLLOUT_NODES = 8
const ROLLOUT_LAYER_BYTES = 32 * 1024 * 1024

export interface RegionResult {
  peerPath: { ferryPeerMBps: number; registryDirectMBps: number; rawTcpMBps: number; ratioToRegistry: number; ratioToRawTcp: number }
  rollout: { nodes: number; imageBytes: number; registryBlobBytes: number; ratio: number }
  shapedRollout: { linkMbit: number; ferrySeconds: number; directSeconds: number; speedup: number; ratio: number }
}

const SHAPED_LINK_MBIT = 200

interface RolloutFigures {
  imageBytes: number
  registryBlobBytes: number
  ratio: number
  ferrySeconds: number
  directSeconds: number
}

/**
 * ROLLOUT_NODES cold daemons of one region pull the same new image at once; then, for the wall
 * time to compare, as many clients pull it straight from the registry at once.
 */
async function benchRollout(
  registry: Registry,
  startNode: (name: string, bootstrap: string[]) => Promise<FerryProcess>,
  label: string,
): Promise<RolloutFigures> {
  const repository = `bench/rollout-${label}`
  const layers = [randomBytes(ROLLOUT_LAYER_BYTES), randomBytes(ROLLOUT_LAYER_BYTES / 2), randomBytes(4096)]
  const layerDigests = await Promise.all(layers.map((layer) => uploadBlob(registry, repository, layer)))
  const imageBytes = layers.reduce((sum, layer) => sum + layer.length, 0)
  const host = new URL(registry.url).host
  const nodes: FerryProcess[] = [await startNode(`rollout-${label}-0`, [])]
  const firstAddress = await listenAddress(nodes[0]!)
  for (let index = 1; index < ROLLOUT_NODES; index += 1) nodes.push(await startNode(`rollout-${label}-${index}`, [firstAddress]))
  await waitUntil(async () => (await Promise.all(nodes.map(status))).every((node) => node.p2p.connectedPeers.length > 0))
  const pullImage = (base: string, query: string) =>
    Promise.all(layerDigests.map((layerDigest, index) => curlSeconds(`${base}/v2/${repository}/blobs/${layerDigest}${query}`, layers[index]!.length)))
  const before = await blobBytesServed(registry, repository)
  const started = performance.now()
  await Promise.all(nodes.map((node) => pullImage(node.url, `?ns=${encodeURIComponent(host)}`)))
  const ferrySeconds = (performance.now() - started) / 1000
  const registryBlobBytes = (await blobBytesServed(registry, repository)) - before
  const directStarted = performance.now()
  await Promise.all(nodes.map(() => pullImage(registry.url, '')))
  const directSeconds = (performance.now() - directStarted) / 1000
  for (const node of nodes) await node.stop()
  return { imageBytes, registryBlobBytes, ratio: registryBlobBytes / imageBytes, ferrySeconds, directSeconds }
}

export async function benchRegion(log: (line: string) => void): Promise<RegionResult> {
  const dir = await createTempDir('bench-region')
  const stops: Array<() => Promise<unknown>> = []
  try {
    const registry = await startRegistry({ dir: dir.path, name: 'regional', auth: 'none' })
    stops.push(() => registry.stop())
    const host = new URL(registry.url).host
    const secretPath = dir.join('region.secret')
    await writeFile(secretPath, randomBytes(32).toString('hex'))
    const p2p = (bootstrap: string[]) => ({
      p2p: { region: 'bench', pskFile: secretPath, listen: '/ip4/127.0.0.1/tcp/0', transfer: { listen: '127.0.0.1:0' }, bootstrap, lookupTimeout: '1s' },
    })
    const startNode = async (name: string, bootstrap: string[]) => {
      const node = await startFerryProcess(dir.join(name), { [host]: [registry.url] }, p2p(bootstrap))
      stops.push(() => node.stop())
      return node
    }

    // Peer path.
    const blob = randomBytes(BLOB_BYTES)
    const digest = await uploadBlob(registry, 'bench/big', blob)
    const blobUrl = (base: string) => `${base}/v2/bench/big/blobs/${digest}?ns=${encodeURIComponent(host)}`
    const seed = await startNode('seed', [])
    const seedAddress = await listenAddress(seed)
    await curlSeconds(blobUrl(seed.url), BLOB_BYTES)
    await waitUntil(async () => (await status(seed)).p2p.providing > 0)
    const peer: number[] = []
    const direct: number[] = []
    const raw: number[] = []
    for (let run = 0; run < RUNS; run += 1) {
      direct.push(BLOB_BYTES / 1e6 / (await curlSeconds(blobUrl(registry.url), BLOB_BYTES)))
      const cold = await startNode(`cold-${run}`, [seedAddress])
      await waitUntil(async () => (await status(cold)).p2p.connectedPeers.length > 0)
      peer.push(BLOB_BYTES / 1e6 / (await curlSeconds(blobUrl(cold.url), BLOB_BYTES)))
      const fromPeer = await metricSum(cold, 'ferry_fetched_bytes_total', 'source="peer"')
      await cold.stop()
      if (fromPeer !== BLOB_BYTES) {
        // Not the peer path: keep the node's log for a look, and leave this run out of the figure.
        await copyFile(cold.process.logFile, `bench-results/region-cold-${run}.log`)
        log(`peer path run ${run + 1}: the cold node took ${fromPeer} of ${BLOB_BYTES} bytes from peers; left out (log in bench-results/)`)
        peer.pop()
        continue
      }
      raw.push(await measureRawTcpMBps(blob))
      log(`peer path run ${run + 1}/${RUNS}: via peer ${peer.at(-1)!.toFixed(0)} MB/s, registry direct ${direct.at(-1)!.toFixed(0)} MB/s, raw TCP ${raw.at(-1)!.toFixed(0)} MB/s`)
    }
    await seed.stop()

    // Rollout: N cold nodes in one region pull the same new image at the same moment.
    const rollout = await benchRollout(registry, (name, bootstrap) => startNode(name, bootstrap), 'loopback')
    log(`rollout: ${ROLLOUT_NODES} nodes, image ${rollout.imageBytes} bytes, registry served ${rollout.registryBlobBytes} blob bytes = ${rollout.ratio.toFixed(2)}x the image`)

    // The same over a shaped link: the registry in a namespace behind 200 Mbit/s, wall time of the
    // whole rollout through Ferry vs every node pulling the registry directly.
    const namespace = await createNetworkNamespace({ rateMbit: SHAPED_LINK_MBIT })
    stops.push(() => namespace.remove())
    const remote = await startRegistry({ dir: dir.path, name: 'remote', auth: 'none', namespace })
    stops.push(() => remote.stop())
    const remoteHost = new URL(remote.url).host
    const startRemoteNode = async (name: string, bootstrap: string[]) => {
      const node = await startFerryProcess(dir.join(name), { [remoteHost]: [remote.url] }, p2p(bootstrap))
      stops.push(() => node.stop())
      return node
    }
    const shaped = await benchRollout(remote, startRemoteNode, 'shaped')
    log(`rollout over ${SHAPED_LINK_MBIT} Mbit/s: through Ferry ${shaped.ferrySeconds.toFixed(1)} s vs every node direct ${shaped.directSeconds.toFixed(1)} s; registry bytes / image = ${shaped.ratio.toFixed(2)}`)

    const ferryPeerMBps = median(peer)
    const registryDirectMBps = median(direct)
    const rawTcpMBps = median(raw)
    return {
      peerPath: {
        ferryPeerMBps,
        registryDirectMBps,
        rawTcpMBps,
        ratioToRegistry: ferryPeerMBps / registryDirectMBps,
        ratioToRawTcp: ferryPeerMBps / rawTcpMBps,
      },
      rollout: { nodes: ROLLOUT_NODES, imageBytes: rollout.imageBytes, registryBlobBytes: rollout.registryBlobBytes, ratio: rollout.ratio },
      shapedRollout: {
        linkMbit: SHAPED_LINK_MBIT,
        ferrySeconds: shaped.ferrySeconds,
        directSeconds: shaped.directSeconds,
        speedup: shaped.directSeconds / shaped.ferrySeconds,
        ratio: shaped.ratio,
      },
    }
  } finally {
    for (const stop of stops.reverse()) await stop().catch(() => undefined)
    await dir.remove()
  }
}

interface Status {
  p2p: { providing: number; listen: string[]; connectedPeers: unknown[] }
}

async function status(node: FerryProcess): Promise<Status> {
  const response = await request(`${node.url}/status`)
  return (await response.body.json()) as Status
}

async function listenAddress(node: FerryProcess): Promise<string> {
  return (await status(node)).p2p.listen[0]!
}

async function metricSum(node: FerryProcess, name: string, labelFilter: string): Promise<number> {
  const text = await (await request(`${node.url}/metrics`)).body.text()
  return text
    .split('\n')
    .filter((line) => line.startsWith(`${name}{`) && line.includes(labelFilter))
    .reduce((sum, line) => sum + Number(line.slice(line.lastIndexOf(' ') + 1)), 0)
}

async function blobBytesServed(registry: Registry, repository: string): Promise<number> {
  const entries = await registry.readAccessLog()
  return entries.filter((entry) => entry.kind === 'blob' && entry.method === 'GET' && entry.repository === repository).reduce((sum, entry) => sum + (entry.bytes ?? 0), 0)
}

/** A raw loopback TCP copy of the blob from a server to a client in this process. */
async function measureRawTcpMBps(blob: Buffer): Promise<number> {
  const server = createServer((socket) => socket.end(blob))
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  const started = performance.now()
  await new Promise<void>((resolve, reject) => {
    let received = 0
    const socket = connect(port, '127.0.0.1')
    socket.on('data', (chunk) => (received += chunk.length))
    socket.on('end', () => (received === blob.length ? resolve() : reject(new Error(`raw copy got ${received} bytes`))))
    socket.on('error', reject)
  })
  const seconds = (performance.now() - started) / 1000
  server.close()
  return blob.length / 1e6 / seconds
}

async function waitUntil(condition: () => Promise<boolean>): Promise<void> {
  for (let attempt = 0; attempt < 300; attempt += 1) {
    if (await condition().catch(() => false)) return
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  throw new Error('condition not reached within 30 s')
}

