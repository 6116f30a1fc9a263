import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { mkdir, readFile, copyFile } from 'node:fs/promises'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { runCommand, startFerry, type Ferry, type FerryConfigDocument } from '../harness/index.js'
import { ROBOT, buildAndPush, upstreamSource, useTopology } from './topology.js'

/**
 * Proxy mode, with skopeo as the Docker-like client: it talks to `harbor.test` (a name that does
 * not resolve here) through HTTPS_PROXY, trusting only Ferry's node CA. Every answer must come
 * from Ferry terminating the CONNECT and serving the pull path from central.
 */
const MIRRORED = 'harbor.test'

describe('proxy mode (HTTPS_PROXY + node CA)', () => {
  const topology = useTopology('proxy-mode', { regional: false, containerd: false })
  let ferry: Ferry | undefined
  let proxyUrl = ''
  let certDir = ''

  async function proxyFerry(): Promise<Ferry> {
    if (ferry) return ferry
    const { scope, central } = topology()
    const config = {
      registries: { [MIRRORED]: { upstreams: [{ url: central.url, auth: { username: ROBOT.username, passwordFile: 'robot.pass' } }] } },
      proxy: { listen: '127.0.0.1:0' },
    } as FerryConfigDocument
    ferry = await startFerry({ dir: scope.dir.path, name: 'proxy', files: { 'robot.pass': ROBOT.password }, config })
    scope.defer(() => ferry!.stop())
    const serving = (await ferry.readLog()).find((line) => line.msg === 'ferry is serving') as { proxyUrl?: string } | undefined
    assert.ok(serving?.proxyUrl, 'the daemon logs its proxy URL')
    proxyUrl = serving.proxyUrl
    // containers/image reads every *.crt of --cert-dir as a CA, like /etc/docker/certs.d/<host>/.
    certDir = scope.dir.join('certs.d', MIRRORED)
    await mkdir(certDir, { recursive: true })
    await copyFile(join(ferry.dataDir, 'proxy-ca', 'ca.crt'), join(certDir, 'ca.crt'))
    return ferry
  }

  function skopeoThroughProxy(args: string[]) {
    return runCommand('skopeo', ['--insecure-policy', '--registries-conf', '/dev/null', ...args], {
      env: { ...process.env, HTTPS_PROXY: proxyUrl, HTTP_PROXY: proxyUrl, NO_PROXY: '' },
      timeoutMs: 120_000,
    })
  }

  it('serves manifests and blobs to a client that trusts the node CA', async () => {
    const node = await proxyFerry()
    const image = await buildAndPush(topology(), 'proxied/app', [{ randomBytes: 300_000, seed: 'proxy-1' }, { files: { 'etc/motd': 'via proxy\n' } }], {
      seed: 'proxy-image',
    })
    const { stdout } = await skopeoThroughProxy(['inspect', '--raw', '--cert-dir', certDir, '--no-creds', `docker://${MIRRORED}/proxied/app:v1`])
    assert.equal(`sha256:${createHash('sha256').update(stdout).digest('hex')}`, image.pushedDigest)

    const destination = topology().scope.dir.join('proxy-copy')
    await skopeoThroughProxy(['copy', '--src-cert-dir', certDir, '--src-no-creds', `docker://${MIRRORED}/proxied/app:v1`, `dir:${destination}`])
    for (const blob of image.blobs) {
      const copied = await readFile(join(destination, blob.digest.slice('sha256:'.length)))
      assert.equal(`sha256:${createHash('sha256').update(copied).digest('hex')}`, blob.digest)
    }
    const metrics = await node.scrapeMetrics()
    assert.equal(
      metrics.sum('ferry_fetched_bytes_total', { kind: 'blob', source: upstreamSource(topology().central) }),
      image.blobs.reduce((sum, blob) => sum + blob.size, 0),
      'every blob came through the pull path, fetched once from central',
    )
  })

  it('is refused by a client that does not trust the node CA', async () => {
    await proxyFerry()
    await assert.rejects(
      skopeoThroughProxy(['inspect', '--raw', '--no-creds', `docker://${MIRRORED}/proxied/app:v1`]),
      /certificate|x509/,
    )
  })

  it('forwards requests for registries it does not mirror, untouched', async () => {
    await proxyFerry()
    const { central } = topology()
    // Plain http:// proxy request to a host Ferry does not mirror: forwarded as is, so central's
    // own answer (a 401 challenge to an anonymous client) comes back.
    const forwarded = await runCommand('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', '-x', proxyUrl, `${central.url}/v2/`])
    assert.equal(forwarded.stdout, '401')
    // CONNECT tunnel to the same host: bytes pass untouched.
    const tunnelled = await runCommand('curl', ['-s', '-p', '-o', '/dev/null', '-w', '%{http_code}', '-x', proxyUrl, `${central.url}/v2/`])
    assert.equal(tunnelled.stdout, '401')
  })
})
