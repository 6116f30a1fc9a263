import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { ConfigError, hostsToml, loadConfig } from '@ferry/daemon'

const MINIMAL = `
listen: 127.0.0.1:5050
dataDir: /var/lib/ferry
registries:
  harbor.example.com:
    upstreams:
      - url: http://regional-registry.internal:5000
      - url: https://harbor.example.com
        auth: { username: "robot$pull", passwordFile: /etc/ferry/harbor.pass }
`

const secrets = (files: Record<string, string>) => (path: string) => {
  const content = files[path]
  if (content === undefined) throw new Error(`ENOENT: no such file ${path}`)
  return content
}

describe('config', () => {
  it('loads the minimal config of the issue, reading the password file', () => {
    const config = loadConfig({ fileText: MINIMAL, filePath: '/etc/ferry/config.yaml', cwd: '/', readFile: secrets({ '/etc/ferry/harbor.pass': 's3cret\n' }) })
    assert.deepEqual(config.listen, { host: '127.0.0.1', port: 5050 })
    assert.equal(config.defaultRegistry, 'harbor.example.com')
    const [regional, central] = config.registries[0]!.upstreams
    assert.equal(regional!.name, 'regional-registry.internal:5000')
    assert.equal(regional!.credentials, undefined)
    assert.deepEqual(central!.credentials, { username: 'robot$pull', password: 's3cret' })
    assert.equal(central!.timeouts.connectMs, 3000)
    assert.ok(Object.isFrozen(config) && Object.isFrozen(config.registries[0]))
  })

  it('runs on the embedded default with no file', () => {
    const config = loadConfig({ cwd: '/work' })
    assert.equal(config.listen.port, 5050)
    assert.equal(config.dataDir, '/work/.ferry')
    assert.equal(config.registries[0]?.registry, 'docker.io')
  })

  it('applies FERRY_* variables, then --set overrides', () => {
    const config = loadConfig({
      fileText: MINIMAL,
      cwd: '/',
      readFile: secrets({ '/etc/ferry/harbor.pass': 'x' }),
      env: { FERRY_LISTEN: '0.0.0.0:6000', FERRY_LOG__LEVEL: 'debug', FERRY_TAG_TIMEOUT: '750ms', HOME: '/root' },
      overrides: ['listen=127.0.0.1:7000'],
    })
    assert.deepEqual(config.listen, { host: '127.0.0.1', port: 7000 })
    assert.equal(config.log.level, 'debug')
    assert.equal(config.tagTimeoutMs, 750)
  })

  it('names the key of every problem', () => {
    const cases: Array<[string, RegExp]> = [
      ['listen: nowhere', /listen: expected host:port/],
      ['registries: { r.example: { upstreams: [] } }', /registries\.r\.example\.upstreams: a mirrored registry needs at least one upstream|registries."r.example".upstreams/],
      ['registries: { r.example: { upstreams: [{ url: "ftp://x" }] } }', /registries."r.example".upstreams\[0\]\.url: expected an http/],
      ['registries: { r.example: { upstreams: [{ url: "http://x", timeout: { connect: soon } }] } }', /upstreams\[0\]\.timeout\.connect: expected a duration/],
      ['registries: { r.example: { upstreams: [{ url: "http://x", auth: { username: u } }] } }', /upstreams\[0\]\.auth: set exactly one of password or passwordFile/],
      ['registries: { r.example: { upstreams: [{ url: "http://x", auth: { username: u, passwordFile: /missing } }] } }', /upstreams\[0\]\.auth\.passwordFile: cannot read/],
      ['listn: 127.0.0.1:1', /unknown key "listn"/],
      ['registries: { "bad host!": { upstreams: [{ url: "http://x" }] } }', /registries."bad host!": invalid registry host/],
      ['defaultRegistry: other.example\nregistries: { r.example: { upstreams: [{ url: "http://x" }] } }', /defaultRegistry: other.example is not one of/],
      ['listen: [', /not valid YAML/],
      ['registries: { r.example: { upstreams: [{ url: "http://x", repositoryPrefix: "Bad/" }] } }', /upstreams\[0\]\.repositoryPrefix: expected a repository path/],
      ['proxy: { listen: 0.0.0.0:5051 }', /proxy\.listen: 0\.0\.0\.0 is not a loopback address/],
      ['p2p: { region: r1, pskFile: /missing }', /p2p\.pskFile: cannot read/],
      ['store: { maxSize: lots }', /store\.maxSize: expected a size/],
    ]
    for (const [text, expected] of cases) {
      assert.throws(() => loadConfig({ fileText: text, cwd: '/', readFile: secrets({}) }), (error: unknown) => {
        assert.ok(error instanceof ConfigError, text)
        assert.match(error.message, expected, `${text}\n=> ${error.message}`)
        return true
      })
    }
  })
})

describe('hosts.toml', () => {
  it('writes a [host] table for the mirror and the registry as server', () => {
    const text = hostsToml({ registry: 'harbor.example.com' }, 'http://127.0.0.1:5050/')
    assert.match(text, /^server = "https:\/\/harbor\.example\.com"$/m)
    assert.match(text, /^\[host\."http:\/\/127\.0\.0\.1:5050"\]$/m)
    assert.match(text, /capabilities = \["pull", "resolve"\]/)
    assert.match(hostsToml({ registry: 'docker.io' }, 'http://127.0.0.1:5050'), /server = "https:\/\/registry-1\.docker\.io"/)
    assert.throws(() => hostsToml({ registry: 'bad host' }, 'http://x'), { name: 'InvalidNameError' })
  })
})
