/**
 * `npm run bench`: every benchmark, side by side ratios printed and written to bench-results/.
 * Not a test: figures vary with the machine; ratios measured in one run are what to compare.
 */
import { mkdir } from 'node:fs/promises'
import { benchPullPath, writeResult } from './pull-path.js'

const log = (line: string) => process.stdout.write(`${line}\n`)
await mkdir('bench-results', { recursive: true })
const started = new Date().toISOString()

log('== pull path: 256 MiB blob, cache hit and cold pull (curl as the client)')
const pullPath = await benchPullPath(log)
log(`cache hit: Ferry ${pullPath.hitMBps.ferry.toFixed(0)} MB/s vs registry ${pullPath.hitMBps.registry.toFixed(0)} MB/s = ${pullPath.hitMBps.ratio.toFixed(2)}x (target >= 1.0x)`)
log(`cold pull: Ferry ${pullPath.coldSeconds.ferry.toFixed(3)} s vs direct ${pullPath.coldSeconds.direct.toFixed(3)} s = ${pullPath.coldSeconds.ratio.toFixed(2)}x (target <= 1.05x)`)
await writeResult('bench-results/pull-path.json', { started, ...pullPath })
log('results written to bench-results/')
