import assert from 'node:assert/strict'
import { test } from 'node:test'
import { parseWwwAuthenticate, redactUrl } from '@ferry/upstream'

test('parses a Bearer challenge whose quoted scope contains commas', () => {
  const [challenge, ...rest] = parseWwwAuthenticate(
    'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull,push"',
  )
  assert.equal(rest.length, 0)
  assert.equal(challenge?.scheme, 'bearer')
  assert.deepEqual({ ...challenge?.params }, {
    realm: 'https://auth.docker.io/token',
    service: 'registry.docker.io',
    scope: 'repository:library/alpine:pull,push',
  })
})

test('parses several challenges in one header and across header lines', () => {
  const challenges = parseWwwAuthenticate([
    'Basic realm="Harbor, the registry", Bearer realm="https://harbor.example.com/service/token", service="harbor-registry"',
    'Negotiate',
  ])
  assert.deepEqual(
    challenges.map((challenge) => [challenge.scheme, { ...challenge.params }]),
    [
      ['basic', { realm: 'Harbor, the registry' }],
      ['bearer', { realm: 'https://harbor.example.com/service/token', service: 'harbor-registry' }],
      ['negotiate', {}],
    ],
  )
})

test('scheme and parameter names are case-insensitive; values may be tokens; escapes are honoured', () => {
  const [challenge] = parseWwwAuthenticate('BEARER Realm = "https://a.example/t\\"x" , Service=registry , error=insufficient_scope')
  assert.equal(challenge?.scheme, 'bearer')
  assert.deepEqual({ ...challenge?.params }, { realm: 'https://a.example/t"x', service: 'registry', error: 'insufficient_scope' })
})

test('token68 challenges and garbage do not derail the parser', () => {
  const challenges = parseWwwAuthenticate('Negotiate abc+/def==, ,, Basic realm="x" @@ Bearer realm="y"')
  assert.deepEqual(
    challenges.map((challenge) => challenge.scheme),
    ['negotiate', 'basic', 'bearer'],
  )
  assert.equal(challenges[0]?.token68, 'abc+/def==')
  assert.equal(challenges[2]?.params.realm, 'y')
  assert.deepEqual(parseWwwAuthenticate(undefined), [])
  assert.deepEqual(parseWwwAuthenticate('Bearer realm="unterminated'), [{ scheme: 'bearer', params: Object.assign(Object.create(null), { realm: 'unterminated' }) }])
})

test('redactUrl drops user info and every query value', () => {
  assert.equal(
    redactUrl('https://user:secret@bucket.s3.example.com/blobs/abc?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA#frag'),
    'https://bucket.s3.example.com/blobs/abc?X-Amz-Signature=REDACTED&X-Amz-Credential=REDACTED',
  )
  assert.equal(redactUrl('http://registry.local:5000/v2/'), 'http://registry.local:5000/v2/')
  assert.equal(redactUrl('not a url'), '<invalid url>')
})
