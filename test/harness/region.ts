import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { startFerry, type Ferry, type FerryConfigDocument } from './ferry.js';
import type { NetworkNamespace } from './netns.js';
import { waitFor } from './process.js';

/**
 * Ferry daemons as members of a region (the `p2p:` config section): a region secret file, one
 * daemon per node, its `/status`, and waiting for the region to form.
 *
 * A node runs either on the host (every listener on 127.0.0.1, port 0) or inside a network
 * namespace (netns.ts), started as `ip netns exec <name> daemon/bin/ferry.js daemon --config FILE`
 * (iproute2 execs the command in place, and the trampoline execs Node, so the pid we hold is the
 * daemon's). Inside a namespace every listener binds the namespace's address, so the host (the
 * test, the other nodes) reaches the node through the veth link and whatever limits it carries;
 * the namespace cannot reach the host's loopback, so such a node has no working upstream.
 */


/** `p2p` in Ferry's `/status`, as packages/p2p/src/region-node.ts `RegionStatus`. */
export interface RegionStatus {
  peerId: string;
  region: string;
  /** libp2p multiaddrs, each ending in `/p2p/<peerId>`. */
  listen: string[];
  transferUrl: string;
  connectedPeers: Array<{ peerId: string; addresses: string[] }>;
  routingTableSize: number;
  providing: number;
  penalised: string[];
}

/** The parts of Ferry's `GET /status` these tests read. */
export interface FerryStatus {
  version: string;
  listen: string;
  store: { usageBytes: number; maxBytes: number | null };
  downloads: number;
  p2p: RegionStatus | null;
}

export interface RegionFerry extends Ferry {
  readonly peerId: string;
  /** The node's libp2p address with `/p2p/<id>`, for the others' `p2p.bootstrap`. */
  readonly p2pAddress: string;
  /** GET /status. */
  status(): Promise<FerryStatus>;
  /** GET /status, its `p2p` part; throws if the node has no region. */
  region(): Promise<RegionStatus>;
  /** SIGKILL, no shutdown; resolves once the process is gone. */
  kill(): Promise<void>;
}

/**
 * Writes a region secret file as an operator would with `openssl rand -hex 32 > region.psk`:
 * 64 hex digits and a newline (the daemon uses the text itself as the secret).
 */
export async function writeRegionSecret(path: string): Promise<string> {
  await writeFile(path, `${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
  return path;
}

export interface RegionNodeOptions {
  /** The test's temp dir; the node lives in `<dir>/ferry-<name>`. */
  dir: string;
  name: string;
  region: string;
  /** Absolute path of the region secret file. */
  pskFile: string;
  bootstrap?: string[];
  registries: FerryConfigDocument['registries'];
  /** Files written into the node's directory first, e.g. an upstream's password file. */
  files?: Record<string, string>;
  /** More `p2p:` keys (lookupTimeout, penalty...), over the defaults here. */
  p2p?: Record<string, unknown>;
  /** More top-level keys (dataDir, log...). */
  config?: Partial<FerryConfigDocument>;
  /** Run the daemon inside this namespace, every listener on its inner address. */
  namespace?: NetworkNamespace;
}

/** The `p2p:` section for a node whose listeners all bind `host`, ports chosen by the kernel. */
export function regionConfig(options: Pick<RegionNodeOptions, 'region' | 'pskFile' | 'bootstrap' | 'p2p'>, host: string): Record<string, unknown> {
  return {
    region: options.region,
    pskFile: options.pskFile,
    listen: [`/ip4/${host}/tcp/0`],
    bootstrap: options.bootstrap ?? [],
    transfer: { listen: `${host}:0`, advertiseHost: host },
    ...options.p2p,
  };
}

/** Starts a region member and waits until it serves and has joined (its libp2p address is known). */
export async function startRegionNode(options: RegionNodeOptions): Promise<RegionFerry> {
  const host = options.namespace?.innerAddress ?? '127.0.0.1';
  const config: FerryConfigDocument = {
    listen: `${host}:0`,
    ...options.config,
    registries: options.registries,
    p2p: regionConfig(options, host),
  };
  const started = await startInstance(options.namespace, { dir: options.dir, name: options.name, config, files: options.files ?? {} });
  const { ferry, kill } = started;
  try {
    const status = await fetchStatus(ferry.url);
    const p2pAddress = status.p2p?.listen.find((address) => address.includes(`/ip4/${host}/`));
    if (!status.p2p || !p2pAddress) throw new Error(`ferry ${options.name} serves but has no libp2p address on ${host}: ${JSON.stringify(status.p2p)}`);
    const peerId = status.p2p.peerId;
    return {
      ...ferry,
      peerId,
      p2pAddress,
      status: () => fetchStatus(ferry.url),
      region: async () => {
        const region = (await fetchStatus(ferry.url)).p2p;
        if (!region) throw new Error(`ferry ${options.name} has no region`);
        return region;
      },
      kill,
    };
  } catch (error) {
    await ferry.stop();
    throw error;
  }
}

export async function fetchStatus(url: string): Promise<FerryStatus> {
  const response = await fetch(`${url}/status`, { signal: AbortSignal.timeout(5_000) });
  const text = await response.text();
  if (!response.ok) throw new Error(`GET ${url}/status answered ${response.status}: ${text.slice(0, 200)}`);
  return JSON.parse(text) as FerryStatus;
}

/**
 * Waits until the region is joined around its bootstrap node (the hub): every other node is
 * connected to the hub and has a peer in its routing table, and the hub has every other node in
 * its routing table. From then on every look-up and provide reaches the hub, which knows
 * everyone, so content routing works for any pair of nodes.
 *
 * Not a full mesh: a node learns peers other than its bootstrap node from its first kad-dht
 * self-query (1 s after start, then every 5 min) or when they contact it. Nodes started together
 * may self-query before the hub knows the others, and then two of them need not know each other
 * for minutes (seen here under load); that does not stop them from finding each other's content.
 */
export async function waitForRegion(hub: RegionFerry, others: readonly RegionFerry[], timeoutMs = 30_000): Promise<void> {
  const joined = async (): Promise<boolean> => {
    const hubRegion = await hub.region();
    if (hubRegion.routingTableSize < others.length) return false;
    for (const node of others) {
      if (!hubRegion.connectedPeers.some((peer) => peer.peerId === node.peerId)) return false;
      const region = await node.region();
      if (region.routingTableSize < 1 || !region.connectedPeers.some((peer) => peer.peerId === hub.peerId)) return false;
    }
    return true;
  };
  try {
    await waitFor(joined, { description: `the region to join around ${hub.name}`, timeoutMs, intervalMs: 100 });
  } catch (error) {
    const views = await Promise.all(
      [hub, ...others].map(async (node) => {
        const region = await node.region().catch(() => undefined);
        return `${node.name} ${node.peerId}: routing table ${region?.routingTableSize}, connected to ${region?.connectedPeers.map((peer) => peer.peerId).join(' ')}`;
      }),
    );
    throw new Error(`the region did not form:\n  ${views.join('\n  ')}`, { cause: error });
  }
}

/**
 * Waits until `node` has completed `count` more DHT provides than `before` (from
 * `ferry_p2p_provides_total{result="ok"}`). A completed provide has written the node's own
 * provider record, which answers any look-up that reaches the node, and sent it to its closest
 * peers: from then on, region peers find the content.
 */
export async function waitForProvides(node: Ferry, before: number, count: number, timeoutMs = 20_000): Promise<void> {
  await waitFor(async () => (await providesDone(node)) >= before + count, {
    description: `ferry ${node.name} to complete ${count} DHT provides`,
    timeoutMs,
    intervalMs: 50,
  });
}

export async function providesDone(node: Ferry): Promise<number> {
  return (await node.scrapeMetrics()).sum('ferry_p2p_provides_total', { result: 'ok' });
}

interface StartedFerry {
  ferry: Ferry;
  kill(): Promise<void>;
}

interface InstanceOptions {
  dir: string;
  name: string;
  config: FerryConfigDocument;
  files: Record<string, string>;
}

/** startFerry (ferry.ts), inside the namespace when one is given, plus a SIGKILL for crash tests. */
async function startInstance(namespace: NetworkNamespace | undefined, options: InstanceOptions): Promise<StartedFerry> {
  const ferry = await startFerry({ ...options, ...(namespace ? { execPrefix: namespace.execPrefix } : {}) });
  return {
    ferry,
    kill: async () => {
      try {
        process.kill(ferry.pid, 'SIGKILL');
      } catch {
        // Already gone.
      }
      // Idempotent: with the process dead, this only waits for its exit to be seen.
      await ferry.stop();
    },
  };
}
