import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { ociErrorFor, parseV2Path } from '@ferry/registry-api'
import { BlobNotFoundError, FerryError, NotMirroredError, UpstreamUnavailableError } from '@ferry/oci'

const digest = `sha256:${'e'.repeat(64)}`

describe('v2 paths', () => {
  it('parses manifests and blobs, with names that contain the words', () => {
    assert.deepEqual(parseV2Path('/v2/'), { kind: 'base' })
    assert.deepEqual(parseV2Path('/v2/team/app/manifests/v1'), { kind: 'manifest', repository: 'team/app', reference: { kind: 'tag', tag: 'v1' } })
    assert.deepEqual(parseV2Path(`/v2/blobs/manifests/manifests/${digest}`), {
      kind: 'manifest',
      repository: 'blobs/manifests',
      reference: { kind: 'digest', digest },
    })
    assert.deepEqual(parseV2Path(`/v2/a/blobs/${encodeURIComponent(digest)}`), { kind: 'blob', repository: 'a', digest })
  })
  it('refuses bad paths with the right error', () => {
    assert.throws(() => parseV2Path('/v2/a/blobs/uploads/'), { name: 'UnsupportedError' })
    assert.throws(() => parseV2Path('/v2/a/blobs/uploads/123'), { name: 'UnsupportedError' })
    assert.deepEqual(parseV2Path('/v2/team/app/tags/list'), { kind: 'tags', repository: 'team/app' })
    assert.throws(() => parseV2Path('/v2/a'), { name: 'InvalidNameError' })
    assert.throws(() => parseV2Path(`/v2/${'a'.repeat(2000)}/blobs/${digest}`), { name: 'InvalidNameError' })
    assert.throws(() => parseV2Path('/v2/a/manifests/%E0%A4%A'), { name: 'InvalidNameError' })
    assert.throws(() => parseV2Path('/v2/a/other/x'), { name: 'InvalidNameError' })
  })
})

describe('OCI error table', () => {
  it('maps client mistakes to 4xx and source failures to 5xx', () => {
    assert.deepEqual(ociErrorFor(new BlobNotFoundError('gone')), { status: 404, body: { errors: [{ code: 'BLOB_UNKNOWN', message: 'gone' }] } })
    assert.equal(ociErrorFor(new NotMirroredError('x')).body.errors[0]?.code, 'NAME_UNKNOWN')
    assert.equal(ociErrorFor(new UpstreamUnavailableError('x')).status, 503)
    assert.equal(ociErrorFor(new FerryError('ERR_DIGEST_MISMATCH', 'x')).status, 502)
  })
  it('never leaks the message of an unexpected error', () => {
    const answer = ociErrorFor(new Error('secret internals'))
    assert.equal(answer.status, 500)
    assert.equal(answer.body.errors[0]?.message, 'internal error')
  })
})
