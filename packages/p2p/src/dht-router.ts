import type { ContentRouter, ProviderRecord } from '@ferry/interfaces'
import type { KadDHT } from '@libp2p/kad-dht'
import { contentKey } from './content-key.js'
import { transferUrls } from './transfer-endpoint.js'

/**
 * Content routing over the region's kad-dht: a digest's provider records live under its
 * `contentKey`, and each record carries the provider's addresses, its transfer endpoints among
 * them (`transfer-endpoint.ts`).
 */
export class DhtContentRouter implements ContentRouter {
  private readonly dht: KadDHT

  constructor(dht: KadDHT) {
    this.dht = dht
  }

  /** Stores a record naming this node on the peers closest to the key (and locally). */
  async provide(digest: string, options: { signal?: AbortSignal } = {}): Promise<void> {
    for await (const event of this.dht.provide(contentKey(digest), options)) void event
  }

  /**
   * Stops this node's own re-provide of the key (kad-dht re-provides its local records as they near
   * expiry) and drops its local record; records stored elsewhere expire on their own.
   */
  async withdraw(digest: string): Promise<void> {
    await this.dht.cancelReprovide(contentKey(digest))
  }

  /**
   * Providers as the look-up finds them, local records first. A provider may be yielded more than
   * once (several peers hold its record). Ends quietly when `signal` aborts: a bounded look-up that
   * ran out of time simply found nothing more.
   */
  async *findProviders(digest: string, options: { signal: AbortSignal }): AsyncIterable<ProviderRecord> {
    const key = contentKey(digest)
    try {
      for await (const event of this.dht.findProviders(key, { signal: options.signal })) {
        if (event.name !== 'PROVIDER') continue
        for (const provider of event.providers) {
          yield { peerId: provider.id.toString(), addresses: transferUrls(provider.multiaddrs) }
        }
      }
    } catch (error) {
      if (options.signal.aborted) return
      throw error
    }
  }
}
