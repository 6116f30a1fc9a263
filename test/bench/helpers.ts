import { createHash } from 'node:crypto'
import { open, rm } from 'node:fs/promises'
import { request } from 'undici'
import { runCommand, type Registry } from '../harness/index.js'

/** Monolithic upload through the distribution API: POST a session, PUT the bytes with their digest. */
export async function uploadBlob(registry: Registry, repository: string, blob: Buffer): Promise<string> {
  const digest = `sha256:${createHash('sha256').update(blob).digest('hex')}`
  const start = await request(`${registry.url}/v2/${repository}/blobs/uploads/`, { method: 'POST' })
  await start.body.dump()
  const location = new URL(String(start.headers.location), registry.url)
  location.searchParams.set('digest', digest)
  const put = await request(location, { method: 'PUT', body: blob, headers: { 'content-type': 'application/octet-stream' } })
  await put.body.dump()
  if (put.statusCode !== 201) throw new Error(`blob upload answered ${put.statusCode}`)
  return digest
}

/**
 * curl as the client (the same for every side measured): seconds for the whole body, checked for
 * length. With `saveTo`, the body is written to that file and fsynced before the clock stops, as
 * containerd writes a pulled layer into its content store; without, it is discarded.
 */
export async function curlSeconds(url: string, expectedBytes: number, saveTo?: string): Promise<number> {
  if (saveTo !== undefined) {
    const started = performance.now()
    await runCommand('curl', ['-sf', '-o', saveTo, url], { timeoutMs: 600_000 })
    const handle = await open(saveTo, 'r+')
    try {
      await handle.sync()
      const { size } = await handle.stat()
      if (size !== expectedBytes) throw new Error(`curl got ${size} bytes from ${url}, expected ${expectedBytes}`)
    } finally {
      await handle.close()
    }
    const seconds = (performance.now() - started) / 1000
    await rm(saveTo, { force: true })
    return seconds
  }
  const { stdout } = await runCommand('curl', ['-sf', '-o', '/dev/null', '-w', '%{time_total} %{size_download}', url], { timeoutMs: 600_000 })
  const [seconds, size] = stdout.trim().split(' ').map(Number)
  if (size !== expectedBytes) throw new Error(`curl got ${size} bytes from ${url}, expected ${expectedBytes}`)
  return seconds!
}

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)]!
}
