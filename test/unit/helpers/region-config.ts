import type { RegionConfig } from '@ferry/p2p'

/** A RegionConfig for a node on loopback (ports 0) with timings short enough for tests. */
export function loopbackRegionConfig(region: string, secret: Uint8Array, identityDir: string, bootstrap: string[]): RegionConfig {
  return {
    region,
    secret,
    listen: ['/ip4/127.0.0.1/tcp/0'],
    bootstrap,
    transfer: { host: '127.0.0.1', port: 0 },
    identityDir,
    lookupTimeoutMs: 300,
    maxProviders: 5,
    negativeCacheMs: 2_000,
    penaltyMs: 60_000,
    reprovideIntervalMs: 60_000,
    maxTransfersPerPeer: 4,
    bootstrapIntervalMs: 1_000,
  }
}
