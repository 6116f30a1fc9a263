import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { runCommand } from '../harness/index.js'
import { buildAndPush, httpRequest, useTopology } from './topology.js'

describe('tag listing through Ferry', () => {
  const topology = useTopology('tags-list', { containerd: false })

  it("skopeo list-tags through Ferry sees the upstream's tags; pages link back to Ferry; unknown repositories are NAME_UNKNOWN", async () => {
    const env = topology()
    for (const tag of ['v1', 'v2', 'v3']) {
      await buildAndPush(env, 'listed/app', [{ files: { 'etc/tag': `${tag}\n` } }], { seed: `tags-${tag}`, tag })
    }
    // containers/image does not use mirrors to list tags, so skopeo asks Ferry as the registry
    // itself (no ?ns=: Ferry's default registry, the only one it mirrors).
    const { stdout } = await runCommand('skopeo', ['--insecure-policy', 'list-tags', '--tls-verify=false', '--no-creds', `docker://${env.ferry.host}/listed/app`])
    const listed = JSON.parse(stdout) as { Tags: string[] }
    assert.deepEqual([...listed.Tags].sort(), ['v1', 'v2', 'v3'])

    // Paginated: Ferry passes n and last on and turns the upstream's Link into one back to itself
    // (keeping ?ns=). A registry in proxy mode ignores n, so follow links until there are none.
    const seen: string[] = []
    let path: string | undefined = `/v2/listed/app/tags/list?n=2&ns=${encodeURIComponent(env.registry)}`
    for (let pages = 0; path !== undefined && pages < 5; pages += 1) {
      const page = await httpRequest(env.ferry.url, path)
      assert.equal(page.status, 200)
      seen.push(...(JSON.parse(page.body.toString()) as { tags: string[] }).tags)
      const link = page.headers.link === undefined ? undefined : String(page.headers.link)
      if (link !== undefined) assert.match(link, /^<\/v2\/listed\/app\/tags\/list\?[^>]*ns=[^>]*>; rel="next"$/, 'the next page is Ferry, with ?ns= kept')
      path = link?.slice(1, link.indexOf('>'))
    }
    assert.deepEqual(seen.sort(), ['v1', 'v2', 'v3'])

    const unknown = await httpRequest(env.ferry.url, `/v2/never/pushed/tags/list?ns=${encodeURIComponent(env.registry)}`)
    assert.equal(unknown.status, 404)
    assert.equal(JSON.parse(unknown.body.toString()).errors[0].code, 'NAME_UNKNOWN')
  })
})
