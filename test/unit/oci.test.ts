import assert from 'node:assert/strict'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { describe, it } from 'node:test'
import {
  MediaTypes,
  normalizeRegistryHost,
  parseDigest,
  parseManifest,
  parseReference,
  resolveRange,
  sha256Digest,
  validateRepository,
  verifyingStream,
} from '@ferry/oci'

const hex = 'a'.repeat(64)

describe('digests', () => {
  it('accepts canonical sha256 digests', () => {
    assert.deepEqual(parseDigest(`sha256:${hex}`), { algorithm: 'sha256', hex, digest: `sha256:${hex}` })
  })
  it('rejects malformed digests as invalid', () => {
    for (const bad of ['', 'sha256', `sha256:${'A'.repeat(64)}`, `sha256:${hex}0`, 'sha256:abc', `:${hex}`, `sha256:${hex.slice(1)}g`, 'x'.repeat(300)]) {
      assert.throws(() => parseDigest(bad), { name: 'InvalidDigestError', code: 'ERR_DIGEST_INVALID' }, bad)
    }
  })
  it('rejects other algorithms as unsupported, clearly', () => {
    assert.throws(() => parseDigest(`sha512:${'b'.repeat(128)}`), { name: 'UnsupportedDigestError', message: /only sha256/ })
    assert.throws(() => parseDigest('md5:d41d8cd98f00b204e9800998ecf8427e'), { code: 'ERR_DIGEST_UNSUPPORTED' })
  })
  it('verifies streams: passes matching content, fails on a changed byte or length', async () => {
    const content = Buffer.from('hello ferry')
    const digest = sha256Digest(content)
    const sink = async (bytes: Buffer, size?: number) => {
      const chunks: Buffer[] = []
      await pipeline(Readable.from([bytes]), verifyingStream(digest, size), async function* (source) {
        for await (const chunk of source) chunks.push(chunk as Buffer)
      })
      return Buffer.concat(chunks)
    }
    assert.deepEqual(await sink(content, content.length), content)
    await assert.rejects(sink(Buffer.from('hello ferrY')), { name: 'DigestMismatchError' })
    await assert.rejects(sink(content, content.length - 1), { name: 'SizeMismatchError' })
  })
})

describe('names and references', () => {
  it('accepts repository names of the distribution grammar', () => {
    for (const name of ['library/alpine', 'a', 'team/app-x/sub.name', 'a__b', 'a--b/c_d', 'x'.repeat(255)]) {
      assert.equal(validateRepository(name), name)
    }
  })
  it('rejects invalid repository names', () => {
    for (const name of ['', 'Upper/case', '-lead', 'trail-', 'a//b', 'a/', '/a', 'a___b', 'a..b', 'x'.repeat(256), 'a b']) {
      assert.throws(() => validateRepository(name), { name: 'InvalidNameError' }, name)
    }
  })
  it('tells tags from digests and rejects invalid tags', () => {
    assert.deepEqual(parseReference('v1.2_3-rc'), { kind: 'tag', tag: 'v1.2_3-rc' })
    assert.deepEqual(parseReference(`sha256:${hex}`), { kind: 'digest', digest: `sha256:${hex}` })
    assert.throws(() => parseReference('.hidden'), { name: 'InvalidReferenceError' })
    assert.throws(() => parseReference('t'.repeat(129)), { name: 'InvalidReferenceError' })
    assert.throws(() => parseReference('sha256:short'), { name: 'InvalidDigestError' })
  })
  it('normalizes registry hosts, mapping Docker Hub API hosts to docker.io', () => {
    assert.equal(normalizeRegistryHost('Harbor.Example.com'), 'harbor.example.com')
    assert.equal(normalizeRegistryHost('127.0.0.1:5000'), '127.0.0.1:5000')
    assert.equal(normalizeRegistryHost('[::1]:5000'), '[::1]:5000')
    assert.equal(normalizeRegistryHost('registry-1.docker.io'), 'docker.io')
    assert.equal(normalizeRegistryHost('index.docker.io'), 'docker.io')
    for (const bad of ['', 'a/b', 'host:port', '-x.com', 'a b', 'h'.repeat(300), 'http://x']) {
      assert.throws(() => normalizeRegistryHost(bad), { name: 'InvalidNameError' }, bad)
    }
  })
})

describe('ranges', () => {
  it('resolves open, closed and suffix ranges', () => {
    assert.equal(resolveRange(undefined, 10), undefined)
    assert.deepEqual(resolveRange('bytes=0-', 10), { start: 0, end: 10 })
    assert.deepEqual(resolveRange('bytes=3-', 10), { start: 3, end: 10 })
    assert.deepEqual(resolveRange('bytes=3-5', 10), { start: 3, end: 6 })
    assert.deepEqual(resolveRange('bytes=3-500', 10), { start: 3, end: 10 })
    assert.deepEqual(resolveRange('bytes=-4', 10), { start: 6, end: 10 })
  })
  it('refuses unsatisfiable and malformed ranges', () => {
    for (const bad of ['bytes=10-', 'bytes=5-3', 'bytes=-0', 'bytes=-', 'items=0-1', 'bytes=0-1,3-4', 'bytes=x-']) {
      assert.throws(() => resolveRange(bad, 10), { name: 'RangeNotSatisfiableError' }, bad)
    }
  })
})

describe('manifests', () => {
  const layer = { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: `sha256:${hex}`, size: 42 }
  it('parses image manifests and their descriptors', () => {
    const manifest = parseManifest(
      Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaTypes.dockerManifest, config: layer, layers: [layer] })),
    )
    assert.equal(manifest.mediaType, MediaTypes.dockerManifest)
    assert.equal(manifest.layers[0]?.size, 42)
    assert.equal(manifest.config?.digest, `sha256:${hex}`)
  })
  it('takes the media type from Content-Type or the shape when the document has none', () => {
    const index = Buffer.from(JSON.stringify({ schemaVersion: 2, manifests: [{ ...layer, platform: { os: 'linux', architecture: 'arm64' } }] }))
    assert.equal(parseManifest(index).mediaType, MediaTypes.ociIndex)
    assert.equal(parseManifest(index, `${MediaTypes.dockerManifestList}; charset=utf-8`).mediaType, MediaTypes.dockerManifestList)
    assert.deepEqual(parseManifest(index).manifests[0]?.platform, { os: 'linux', architecture: 'arm64' })
  })
  it('rejects what is not a manifest', () => {
    for (const bad of ['nope', '[]', '{"schemaVersion":3}', JSON.stringify({ schemaVersion: 2, layers: [{ ...layer, digest: 'x' }] })]) {
      assert.throws(() => parseManifest(Buffer.from(bad)), { name: 'InvalidManifestError' }, bad)
    }
    assert.throws(() => parseManifest(Buffer.alloc(4 * 1024 * 1024 + 1)), { name: 'InvalidManifestError', message: /limit/ })
  })
})
