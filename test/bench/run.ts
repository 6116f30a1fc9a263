/**
 * `npm run bench`: every benchmark, side-by-side ratios printed and written to bench-results/.
 * Not a test: figures vary with the machine; ratios measured in one run are what to compare.
 * `npm run bench -- pull`, `-- region` or `-- memory` runs one of them.
 */
import { mkdir } from 'node:fs/promises'
import { benchPullPath, writeResult } from './pull-path.js'
import { benchRegion } from './region.js'
import { benchMemory } from './memory.js'

const log = (line: string) => process.stdout.write(`${line}\n`)
const only = process.argv[2]
await mkdir('bench-results', { recursive: true })
const started = new Date().toISOString()

if (only === undefined || only === 'pull') {
  log('== pull path: 256 MiB blob, cache hit and cold pull (curl as the client)')
  const pullPath = await benchPullPath(log)
  log(`cache hit: Ferry ${pullPath.hitMBps.ferry.toFixed(0)} MB/s vs registry ${pullPath.hitMBps.registry.toFixed(0)} MB/s = ${pullPath.hitMBps.ratio.toFixed(2)}x (target >= 1.0x)`)
  log(`cold pull: Ferry ${pullPath.coldSeconds.ferry.toFixed(3)} s vs direct ${pullPath.coldSeconds.direct.toFixed(3)} s = ${pullPath.coldSeconds.ratio.toFixed(2)}x (target <= 1.05x)`)
  const shaped = pullPath.shapedColdSeconds
  log(`cold pull over a ${shaped.linkMbit} Mbit/s link (${shaped.blobBytes / 1024 / 1024} MiB): Ferry ${shaped.ferry.toFixed(2)} s vs direct ${shaped.direct.toFixed(2)} s = ${shaped.ratio.toFixed(2)}x (target <= 1.05x)`)
  await writeResult('bench-results/pull-path.json', { started, ...pullPath })
}
if (only === undefined || only === 'region') {
  log('== region: peer path (256 MiB) and rollout')
  const region = await benchRegion(log)
  const { peerPath, rollout } = region
  log(`peer path: ${peerPath.ferryPeerMBps.toFixed(0)} MB/s vs registry direct ${peerPath.registryDirectMBps.toFixed(0)} MB/s = ${peerPath.ratioToRegistry.toFixed(2)}x (target >= 0.6x); vs raw TCP ${peerPath.rawTcpMBps.toFixed(0)} MB/s = ${peerPath.ratioToRawTcp.toFixed(2)}x`)
  log(`rollout: ${rollout.nodes} nodes at once: registry bytes / image size = ${rollout.ratio.toFixed(2)} (1.0 = each blob crossed once)`)
  const shaped = region.shapedRollout
  log(`rollout over a ${shaped.linkMbit} Mbit/s link: ${shaped.ferrySeconds.toFixed(1)} s through Ferry vs ${shaped.directSeconds.toFixed(1)} s direct = ${shaped.speedup.toFixed(1)}x faster; registry bytes / image = ${shaped.ratio.toFixed(2)}`)
  await writeResult('bench-results/region.json', { started, ...region })
}
if (only === undefined || only === 'memory') {
  log('== memory: 10 clients pulling one 512 MiB blob, cold then cached')
  const memory = await benchMemory(log)
  log(`peak RSS: cold ${(memory.peakColdRssBytes / 2 ** 20).toFixed(0)} MiB, cached ${(memory.peakHitRssBytes / 2 ** 20).toFixed(0)} MiB, for ${memory.clients} x ${(memory.blobBytes / 2 ** 20).toFixed(0)} MiB served`)
  await writeResult('bench-results/memory.json', { started, ...memory })
}
log('results written to bench-results/')
