/**
 * Pull-path benchmark (issue 2), side by side in one run on this machine:
 * - cache hit: a 256 MiB blob served by Ferry from its store vs by the CNCF registry from its disk;
 * - cold pull: the same blob through a Ferry with an empty store vs directly from the registry.
 * The client is curl in both cases, so client cost is the same; each figure is the median of runs
 * taken alternately, so drift of the machine hits both sides alike.
 */
import { randomBytes } from 'node:crypto'
import { writeFile } from 'node:fs/promises'
import { createTempDir, startRegistry, type TempDir } from '../harness/index.js'
import { curlSeconds, median, uploadBlob } from './helpers.js'
import { createNetworkNamespace } from '../harness/netns.js'
import { startFerryProcess } from './ferry-process.js'

const BLOB_BYTES = 256 * 1024 * 1024
const RUNS = 5

export interface PullPathResult {
  blobBytes: number
  runs: number
  hitMBps: { ferry: number; registry: number; ratio: number }
  coldSeconds: { ferry: number; direct: number; ratio: number }
  /** Cold pull where the registry sits behind a rate-limited link, as a regional or central registry does. */
  shapedColdSeconds: { linkMbit: number; blobBytes: number; ferry: number; direct: number; ratio: number }
}

const SHAPED_LINK_MBIT = 200
const SHAPED_BLOB_BYTES = 64 * 1024 * 1024

export async function benchPullPath(log: (line: string) => void): Promise<PullPathResult> {
  const dir = await createTempDir('bench-pull')
  const stops: Array<() => Promise<unknown>> = []
  try {
    const registry = await startRegistry({ dir: dir.path, name: 'central', auth: 'none' })
    stops.push(() => registry.stop())
    const digest = await uploadBlob(registry, 'bench/big', randomBytes(BLOB_BYTES))
    const host = new URL(registry.url).host
    const blobPath = (base: string) => `${base}/v2/bench/big/blobs/${digest}?ns=${encodeURIComponent(host)}`

    const hitFerry = await startFerryProcess(dir.join('ferry-hit'), { [host]: [registry.url] })
    stops.push(() => hitFerry.stop())
    await curlSeconds(blobPath(hitFerry.url), BLOB_BYTES) // warm: the blob is now in Ferry's store

    // Cold pulls go through one long-running daemon (as on a node), each run a blob it never saw.
    const coldBlobs: string[] = []
    for (let run = 0; run < RUNS; run += 1) coldBlobs.push(await uploadBlob(registry, 'bench/big', randomBytes(BLOB_BYTES)))
    const coldPath = (base: string, run: number) => `${base}/v2/bench/big/blobs/${coldBlobs[run]}?ns=${encodeURIComponent(host)}`

    const hit = { ferry: [] as number[], registry: [] as number[] }
    const cold = { ferry: [] as number[], direct: [] as number[] }
    for (let run = 0; run < RUNS; run += 1) {
      hit.registry.push(BLOB_BYTES / 1e6 / (await curlSeconds(blobPath(registry.url), BLOB_BYTES)))
      hit.ferry.push(BLOB_BYTES / 1e6 / (await curlSeconds(blobPath(hitFerry.url), BLOB_BYTES)))
      // A pull writes the layer (containerd's content store): both sides save and fsync it.
      cold.direct.push(await curlSeconds(coldPath(registry.url, run), BLOB_BYTES, dir.join('pulled')))
      cold.ferry.push(await curlSeconds(coldPath(hitFerry.url, run), BLOB_BYTES, dir.join('pulled')))
      log(`run ${run + 1}/${RUNS}: hit ferry ${hit.ferry.at(-1)!.toFixed(0)} MB/s, registry ${hit.registry.at(-1)!.toFixed(0)} MB/s; cold ferry ${cold.ferry.at(-1)!.toFixed(3)} s, direct ${cold.direct.at(-1)!.toFixed(3)} s`)
    }
    const shaped = await benchShapedColdPull(dir, log)
    const hitFerryMBps = median(hit.ferry)
    const hitRegistryMBps = median(hit.registry)
    const coldFerrySeconds = median(cold.ferry)
    const coldDirectSeconds = median(cold.direct)
    return {
      blobBytes: BLOB_BYTES,
      runs: RUNS,
      hitMBps: { ferry: hitFerryMBps, registry: hitRegistryMBps, ratio: hitFerryMBps / hitRegistryMBps },
      coldSeconds: { ferry: coldFerrySeconds, direct: coldDirectSeconds, ratio: coldFerrySeconds / coldDirectSeconds },
      shapedColdSeconds: shaped,
    }
  } finally {
    for (const stop of stops.reverse()) await stop().catch(() => undefined)
    await dir.remove()
  }
}

/**
 * The registry in a network namespace behind a tbf-limited veth link: what a pull across a real
 * link looks like, where the link and not the loopback copy speed is the limit.
 */
async function benchShapedColdPull(dir: TempDir, log: (line: string) => void): Promise<PullPathResult['shapedColdSeconds']> {
  const namespace = await createNetworkNamespace({ rateMbit: SHAPED_LINK_MBIT })
  const stops: Array<() => Promise<unknown>> = [() => namespace.remove()]
  try {
    const registry = await startRegistry({ dir: dir.path, name: 'shaped', auth: 'none', namespace })
    stops.push(() => registry.stop())
    const digest = await uploadBlob(registry, 'bench/shaped', randomBytes(SHAPED_BLOB_BYTES))
    const host = new URL(registry.url).host
    const blobPath = (base: string) => `${base}/v2/bench/shaped/blobs/${digest}?ns=${encodeURIComponent(host)}`
    const ferry: number[] = []
    const direct: number[] = []
    for (let run = 0; run < 3; run += 1) {
      direct.push(await curlSeconds(blobPath(registry.url), SHAPED_BLOB_BYTES, dir.join('pulled')))
      const cold = await startFerryProcess(dir.join(`ferry-shaped-${run}`), { [host]: [registry.url] })
      try {
        ferry.push(await curlSeconds(blobPath(cold.url), SHAPED_BLOB_BYTES, dir.join('pulled')))
      } finally {
        await cold.stop()
      }
      log(`shaped ${SHAPED_LINK_MBIT} Mbit/s run ${run + 1}/3: cold Ferry ${ferry.at(-1)!.toFixed(2)} s, direct ${direct.at(-1)!.toFixed(2)} s`)
    }
    return { linkMbit: SHAPED_LINK_MBIT, blobBytes: SHAPED_BLOB_BYTES, ferry: median(ferry), direct: median(direct), ratio: median(ferry) / median(direct) }
  } finally {
    for (const stop of stops.reverse()) await stop().catch(() => undefined)
  }
}

export async function writeResult(path: string, result: unknown): Promise<void> {
  await writeFile(path, `${JSON.stringify(result, null, 2)}\n`)
}
