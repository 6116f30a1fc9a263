import { randomBytes } from 'node:crypto'
import { runCommand } from './process.js'

/**
 * A network namespace joined to the host by a veth pair: a "remote site" on this machine, whose
 * link can be shaped with tc (tbf rate limits both ways) and made lossy with iptables (random
 * drops). netem is not in this kernel, so there is no added delay. Needs root.
 */
export interface NetworkNamespace {
  readonly name: string
  /** The host's end of the link, e.g. 10.201.7.1. */
  readonly hostAddress: string
  /** The namespace's end, where servers inside listen, e.g. 10.201.7.2. */
  readonly innerAddress: string
  /** Prefix to run a command inside: `ip netns exec <name>`. */
  readonly execPrefix: readonly string[]
  /** Rate-limits both directions of the link (Mbit/s), replacing any earlier limit. */
  limitRate(mbit: number): Promise<void>
  /** Drops this share (0..1) of packets leaving the namespace; 0 removes the rule. */
  dropPackets(probability: number): Promise<void>
  /** Cuts the link entirely (both ends down), or restores it. */
  setLinkUp(up: boolean): Promise<void>
  remove(): Promise<void>
}

export interface NetworkNamespaceOptions {
  rateMbit?: number
  lossProbability?: number
}

export async function createNetworkNamespace(options: NetworkNamespaceOptions = {}): Promise<NetworkNamespace> {
  const id = randomBytes(3).toString('hex')
  const name = `ferry-${id}`
  const hostLink = `fh${id}`
  const innerLink = `fn${id}`
  // A /30 from 10.200.0.0/14 picked from the id, so parallel namespaces rarely collide.
  const n = parseInt(id, 16) % (1 << 16)
  const base = `10.${200 + ((n >> 14) & 3)}.${(n >> 6) & 255}.${(n & 63) * 4}`
  const [a, b, c, d] = base.split('.').map(Number) as [number, number, number, number]
  const hostAddress = `${a}.${b}.${c}.${d + 1}`
  const innerAddress = `${a}.${b}.${c}.${d + 2}`
  const inside = ['netns', 'exec', name]
  const ip = (...args: string[]) => runCommand('ip', args)
  await ip('netns', 'add', name)
  let lossRule: string | undefined
  const namespace: NetworkNamespace = {
    name,
    hostAddress,
    innerAddress,
    execPrefix: ['ip', ...inside],
    async limitRate(mbit) {
      for (const [prefix, link] of [[[], hostLink], [inside, innerLink]] as const) {
        const tc = prefix.length ? ['ip', [...prefix, 'tc']] as const : ['tc', []] as const
        await runCommand(tc[0], [...tc[1], 'qdisc', 'del', 'dev', link, 'root']).catch(() => undefined)
        // burst must hold at least rate/HZ; 1 Mbit of burst per 100 Mbit/s is ample.
        const burstKbit = Math.max(64, Math.ceil(mbit * 10))
        await runCommand(tc[0], [...tc[1], 'qdisc', 'add', 'dev', link, 'root', 'tbf', 'rate', `${mbit}mbit`, 'burst', `${burstKbit}kbit`, 'latency', '100ms'])
      }
    },
    async dropPackets(probability) {
      if (lossRule) {
        await runCommand('ip', [...inside, 'iptables', '-D', 'OUTPUT', ...lossRule.split(' ')]).catch(() => undefined)
        lossRule = undefined
      }
      if (probability <= 0) return
      lossRule = `-m statistic --mode random --probability ${probability} -j DROP`
      await runCommand('ip', [...inside, 'iptables', '-A', 'OUTPUT', ...lossRule.split(' ')])
    },
    async setLinkUp(up) {
      await ip('link', 'set', hostLink, up ? 'up' : 'down')
      await ip(...inside, 'ip', 'link', 'set', innerLink, up ? 'up' : 'down')
    },
    async remove() {
      await ip('link', 'del', hostLink).catch(() => undefined)
      await ip('netns', 'del', name).catch(() => undefined)
    },
  }
  try {
    await ip('link', 'add', hostLink, 'type', 'veth', 'peer', 'name', innerLink)
    await ip('link', 'set', innerLink, 'netns', name)
    await ip('addr', 'add', `${hostAddress}/30`, 'dev', hostLink)
    await ip('link', 'set', hostLink, 'up')
    await ip(...inside, 'ip', 'addr', 'add', `${innerAddress}/30`, 'dev', innerLink)
    await ip(...inside, 'ip', 'link', 'set', innerLink, 'up')
    await ip(...inside, 'ip', 'link', 'set', 'lo', 'up')
    if (options.rateMbit !== undefined) await namespace.limitRate(options.rateMbit)
    if (options.lossProbability !== undefined) await namespace.dropPackets(options.lossProbability)
  } catch (error) {
    await namespace.remove()
    throw error
  }
  return namespace
}
