import { Readable } from 'node:stream'
import type {
  BlobInfo,
  BlobSource,
  BlobStore,
  Clock,
  ContentAnnouncer,
  ContentKind,
  FetchedContent,
  FetchRequest,
  Logger,
  ManifestDescriptor,
  MetadataStore,
  PeerTagSource,
  TagKey,
  TagList,
  TagRecord,
  UpstreamSource,
} from '@ferry/interfaces'
import {
  DigestMismatchError,
  FerryError,
  InvalidManifestError,
  MAX_MANIFEST_BYTES,
  ManifestNotFoundError,
  NotMirroredError,
  RepositoryNotFoundError,
  UpstreamUnavailableError,
  parseManifest,
  resolveRange,
  sha256Digest,
  type ResolvedRange,
} from '@ferry/oci'
import { Download } from './download.js'
import type { MirrorMetrics } from './metrics.js'

/** How one registry host is mirrored. */
export interface RegistryRoute {
  /** As named in image references: `harbor.example.com`, `docker.io`. */
  registry: string
  /** Tried in order after the local store and the peers. */
  upstreams: UpstreamSource[]
  /** Whether region peers are asked for this registry's content. */
  peers: boolean
}

/** How long a committed download still takes followers (see `download()`). */
const COMMITTED_GRACE_MS = 5_000

export interface MirrorInit {
  routes: RegistryRoute[]
  /** Deadline for each upstream's answer to a tag before the next upstream, then the last-known digest. */
  tagTimeoutMs: number
  /** How long a download goes on with no client reading it. */
  orphanTimeoutMs: number
}

export interface MirrorComponents {
  blobStore: BlobStore
  metadata: MetadataStore
  logger: Logger
  clock: Clock
  metrics: MirrorMetrics
  /** Region peers, when P2P is on. */
  peerSource?: BlobSource
  announcer?: ContentAnnouncer
  /**
   * Offline mode: region peers' last-known tags, asked only when every upstream failed and this
   * node has no record of its own (`p2p.offlineTags`). Unset: tags never come from peers.
   */
  peerTags?: PeerTagSource
  /** Called after content was committed, e.g. to enforce the store's quota. */
  onCommitted?: (info: BlobInfo) => void
}

export interface ResolvedTag extends ManifestDescriptor {
  /** `upstream:<name>`, or `stale` when no upstream answered and the last-known digest was used. */
  source: string
}

export interface ManifestContent extends ManifestDescriptor {
  bytes: Buffer
  source: string
}

/** How a request reached this node. */
export interface MirrorRequestOptions {
  /**
   * A region peer forwarded it (fetch-through): this node fetches the content itself, and the
   * download it starts never forwards to a peer again (it may still copy a peer's committed blob).
   */
  forwarded?: boolean
}

export interface BlobContent {
  size: number
  /** Set when a Range was asked for and is being answered. */
  range: ResolvedRange | undefined
  source: string
  body: Readable
}

/**
 * The pull path: resolves tags with the upstreams, and serves content by digest from the local
 * store, else from region peers, else from the upstreams in order, verifying every byte before it
 * is committed and announced. One download per digest per node, shared by every request for it.
 */
export class Mirror {
  private readonly components: MirrorComponents
  private readonly init: MirrorInit
  private readonly routes: Map<string, RegistryRoute>
  private readonly downloads = new Map<string, Download>()
  private readonly manifestFetches = new Map<string, Promise<ManifestContent>>()

  constructor(components: MirrorComponents, init: MirrorInit) {
    this.components = components
    this.init = init
    this.routes = new Map(init.routes.map((route) => [route.registry, route]))
  }

  route(registry: string): RegistryRoute {
    const route = this.routes.get(registry)
    if (!route || route.upstreams.length === 0) {
      throw new NotMirroredError(`registry ${registry} is not mirrored by this node`, { detail: { registry } })
    }
    return route
  }

  get activeDownloads(): number {
    let running = 0
    for (const download of this.downloads.values()) if (download.state === 'running') running += 1
    return running
  }

  /**
   * Asks the upstreams in order, each with a short deadline, and records the answer. When none can
   * answer, serves the last-known digest (stale-if-error), logged and counted.
   */
  async resolveTag(registry: string, repository: string, tag: string): Promise<ResolvedTag> {
    const { metadata, clock, logger, metrics } = this.components
    const route = this.route(registry)
    const started = clock.now()
    const failures: Error[] = []
    for (const upstream of route.upstreams) {
      try {
        const found = await upstream.resolveTag(repository, tag, { signal: AbortSignal.timeout(this.init.tagTimeoutMs) })
        if (!found) continue
        await metadata.putTag({ registry, repository, tag }, { ...found, confirmedAt: clock.now() })
        metrics.tagResolveSeconds.observe({ result: 'found' }, (clock.now() - started) / 1000)
        return { ...found, source: upstream.name }
      } catch (error) {
        failures.push(error as Error)
        logger.warn({ err: error, registry, repository, tag, upstream: upstream.name }, 'upstream could not resolve tag')
      }
    }
    metrics.tagResolveSeconds.observe({ result: failures.length > 0 ? 'failed' : 'not_found' }, (clock.now() - started) / 1000)
    if (failures.length > 0) {
      const known = await metadata.getTag({ registry, repository, tag })
      if (known) {
        metrics.staleTags.inc({ registry })
        logger.warn(
          { registry, repository, tag, digest: known.digest, confirmedAt: new Date(known.confirmedAt).toISOString() },
          'no upstream answered; serving the last-known digest',
        )
        return { digest: known.digest, mediaType: known.mediaType, size: known.size, source: 'stale' }
      }
      const fromPeers = route.peers ? await this.peerTag({ registry, repository, tag }) : undefined
      if (fromPeers) {
        metrics.staleTags.inc({ registry })
        logger.warn(
          { registry, repository, tag, digest: fromPeers.digest, confirmedAt: new Date(fromPeers.confirmedAt).toISOString() },
          'no upstream answered; serving the digest a region peer last confirmed (offline tags)',
        )
        await metadata.putTag({ registry, repository, tag }, fromPeers)
        return { digest: fromPeers.digest, mediaType: fromPeers.mediaType, size: fromPeers.size, source: 'peer-stale' }
      }
      throw new UpstreamUnavailableError(`no upstream of ${registry} could resolve ${repository}:${tag}`, {
        cause: new AggregateError(failures),
        detail: { registry, repository, tag },
      })
    }
    throw new ManifestNotFoundError(`manifest ${repository}:${tag} not found`, { detail: { registry, repository, tag } })
  }

  /**
   * A page of a repository's tags from the first upstream that answers: tags change, so they are
   * neither cached nor taken from peers.
   */
  async listTags(registry: string, repository: string, page: { n?: number; last?: string }): Promise<TagList> {
    const route = this.route(registry)
    const failures: Error[] = []
    let asked = 0
    for (const upstream of route.upstreams) {
      if (!upstream.listTags) continue
      asked += 1
      try {
        const list = await upstream.listTags(repository, page, { signal: AbortSignal.timeout(this.init.tagTimeoutMs) })
        if (list) return list
      } catch (error) {
        failures.push(error as Error)
        this.components.logger.warn({ err: error, registry, repository, upstream: upstream.name }, 'upstream could not list tags')
      }
    }
    if (failures.length > 0 || asked === 0) {
      throw new UpstreamUnavailableError(`no upstream of ${registry} could list the tags of ${repository}`, {
        ...(failures.length > 0 ? { cause: new AggregateError(failures) } : {}),
        detail: { registry, repository },
      })
    }
    throw new RepositoryNotFoundError(`repository ${repository} not found`, { detail: { registry, repository } })
  }

  private async peerTag(key: TagKey): Promise<TagRecord | undefined> {
    const { peerTags, logger } = this.components
    if (!peerTags) return undefined
    try {
      return await peerTags.lastKnownTag(key, { signal: AbortSignal.timeout(this.init.tagTimeoutMs) })
    } catch (error) {
      logger.warn({ err: error, ...key }, 'region peers could not be asked for the tag')
      return undefined
    }
  }

  /** A manifest by digest: local store, then peers, then upstreams; verified and kept. */
  async manifest(registry: string, repository: string, digest: string, options: MirrorRequestOptions = {}): Promise<ManifestContent> {
    const route = this.route(registry)
    const local = await this.localManifest(digest)
    if (local) {
      this.countRequest('manifest', 'local', 'hit')
      return local
    }
    let fetch = this.manifestFetches.get(digest)
    if (!fetch) {
      fetch = this.fetchManifest(route, repository, digest, options.forwarded === true).finally(() => this.manifestFetches.delete(digest))
      this.manifestFetches.set(digest, fetch)
    }
    try {
      const content = await fetch
      this.countRequest('manifest', content.source, 'fetched')
      return content
    } catch (error) {
      this.countRequest('manifest', 'none', errorResult(error))
      throw error
    }
  }

  /** Size and source of a blob, starting its download when it is not here (a HEAD precedes a GET). */
  async statBlob(
    registry: string,
    repository: string,
    digest: string,
    options: MirrorRequestOptions = {},
  ): Promise<{ size: number; source: string }> {
    const route = this.route(registry)
    const local = await this.components.blobStore.stat(digest)
    if (local) {
      this.countRequest('blob', 'local', 'hit')
      return { size: local.size, source: 'local' }
    }
    const download = await this.readyDownload(route, repository, digest, options)
    this.countRequest('blob', download.source ?? 'none', 'fetching')
    return { size: download.size!, source: download.source ?? 'none' }
  }

  /** A blob, whole or a range of it, from the local store or from the one download of it. */
  async blob(
    registry: string,
    repository: string,
    digest: string,
    rangeHeader: string | undefined,
    options: MirrorRequestOptions = {},
  ): Promise<BlobContent> {
    const route = this.route(registry)
    const { blobStore } = this.components
    const local = await blobStore.stat(digest)
    if (local) {
      const range = resolveRange(rangeHeader, local.size)
      const body = await blobStore.open(digest, range)
      if (body) {
        this.countRequest('blob', 'local', 'hit')
        this.touch(digest)
        return { size: local.size, range, source: 'local', body }
      }
    }
    const download = await this.readyDownload(route, repository, digest, options)
    const size = download.size!
    const range = resolveRange(rangeHeader, size)
    const source = download.source ?? 'none'
    const body = download.follow(range ?? { start: 0, end: size })
    this.countRequest('blob', source, 'fetched')
    return { size, range, source, body }
  }

  /**
   * Content for a region peer that forwarded `request` to this node (fetch-through): from the local
   * store, or from the one download of the digest, started here if none runs. Only mirrored
   * registries are served (NotMirroredError otherwise: no open proxy). The body runs from
   * `request.offset` to the end, and a blob's last byte comes only after its digest was verified.
   */
  async fetchThrough(request: FetchRequest): Promise<FetchedContent> {
    const { kind, registry, repository, digest, offset } = request
    const options = { forwarded: true }
    if (kind === 'manifest') {
      const manifest = await this.manifest(registry, repository, digest, options)
      const range = offset > 0 ? resolveRange(`bytes=${offset}-`, manifest.size) : undefined
      const bytes = range ? manifest.bytes.subarray(range.start) : manifest.bytes
      return { size: manifest.size, offset, mediaType: manifest.mediaType, body: Readable.from([bytes]) }
    }
    const blob = await this.blob(registry, repository, digest, offset > 0 ? `bytes=${offset}-` : undefined, options)
    return { size: blob.size, offset: blob.range?.start ?? 0, body: blob.body }
  }

  /** Counts bytes sent to a client; the API layer calls it when a response ends. */
  recordServed(kind: ContentKind, source: string, bytes: number): void {
    this.components.metrics.servedBytes.inc({ kind, source }, bytes)
  }

  /** Stops every download; their followers error. */
  close(): void {
    for (const download of this.downloads.values()) download.abort(new UpstreamUnavailableError('ferry is shutting down'))
  }

  private sourcesOf(route: RegistryRoute): BlobSource[] {
    const { peerSource } = this.components
    return route.peers && peerSource ? [peerSource, ...route.upstreams] : [...route.upstreams]
  }

  /** The one download of `digest`; a forwarded request that starts it makes it a forwarded one. */
  private download(route: RegistryRoute, repository: string, digest: string, kind: ContentKind, forwarded: boolean): Download {
    const existing = this.downloads.get(digest)
    if (existing) return existing
    const { blobStore, logger, metrics, metadata, clock, announcer } = this.components
    const download = new Download(
      { blobStore, logger, metrics },
      {
        kind,
        registry: route.registry,
        repository,
        digest,
        sources: this.sourcesOf(route),
        orphanTimeoutMs: this.init.orphanTimeoutMs,
        forwarded,
      },
    )
    this.downloads.set(digest, download)
    download.done
      .then(async (info) => {
        const now = clock.now()
        await metadata.putBlob(digest, { size: info.size, storedAt: now, lastAccess: now })
        announcer?.announce(digest)
        this.components.onCommitted?.(info)
        logger.info({ digest, size: info.size, source: download.source }, 'blob committed')
      })
      .then(
        // A committed download stays joinable a little longer: a request that found the store
        // empty a moment before the commit joins it instead of starting a second download.
        () => setTimeout(() => this.forget(digest, download), COMMITTED_GRACE_MS).unref(),
        (error) => {
          logger.warn({ err: error, digest }, 'download failed')
          this.forget(digest, download)
        },
      )
    return download
  }

  /** The one download of a blob, once its size is known; a failure before that is counted and thrown. */
  private async readyDownload(route: RegistryRoute, repository: string, digest: string, options: MirrorRequestOptions): Promise<Download> {
    const download = this.download(route, repository, digest, 'blob', options.forwarded === true)
    try {
      await download.ready
    } catch (error) {
      this.countRequest('blob', 'none', errorResult(error))
      throw error
    }
    return download
  }

  private forget(digest: string, download: Download): void {
    if (this.downloads.get(digest) === download) this.downloads.delete(digest)
  }

  private async localManifest(digest: string): Promise<ManifestContent | undefined> {
    const { blobStore, metadata } = this.components
    const stream = await blobStore.open(digest)
    if (!stream) return undefined
    const bytes = await readLimited(stream, MAX_MANIFEST_BYTES)
    const record = await metadata.getBlob(digest)
    const mediaType = record?.mediaType ?? parseManifest(bytes).mediaType
    this.touch(digest)
    return { digest, mediaType, size: bytes.byteLength, bytes, source: 'local' }
  }

  private async fetchManifest(route: RegistryRoute, repository: string, digest: string, forwarded: boolean): Promise<ManifestContent> {
    const { logger, metrics } = this.components
    const failures: Error[] = []
    const peerSource = route.peers ? this.components.peerSource : undefined
    if (peerSource) {
      try {
        const content = await peerSource.fetch({
          kind: 'manifest',
          registry: route.registry,
          repository,
          digest,
          offset: 0,
          signal: AbortSignal.timeout(this.init.tagTimeoutMs),
          forwarded,
        })
        if (content) {
          const bytes = await readLimited(content.body, MAX_MANIFEST_BYTES)
          metrics.fetchedBytes.inc({ kind: 'manifest', source: peerSource.name }, bytes.byteLength)
          const mediaType = content.mediaType ?? parseManifest(bytes).mediaType
          return await this.keepManifest(digest, bytes, mediaType, peerSource)
        }
      } catch (error) {
        failures.push(error as Error)
        logger.warn({ err: error, digest, source: peerSource.name }, 'peer could not serve manifest')
      }
    }
    for (const upstream of route.upstreams) {
      try {
        const fetched = await upstream.fetchManifest(repository, digest, { signal: AbortSignal.timeout(this.init.tagTimeoutMs * 4) })
        if (!fetched) continue
        metrics.fetchedBytes.inc({ kind: 'manifest', source: upstream.name }, fetched.bytes.byteLength)
        return await this.keepManifest(digest, fetched.bytes, fetched.mediaType, upstream)
      } catch (error) {
        failures.push(error as Error)
        logger.warn({ err: error, registry: route.registry, repository, digest, upstream: upstream.name }, 'upstream could not serve manifest')
      }
    }
    if (failures.length > 0 && !failures.every((error) => error instanceof DigestMismatchError)) {
      throw new UpstreamUnavailableError(`no source could serve manifest ${digest}`, {
        cause: new AggregateError(failures),
        detail: { registry: route.registry, repository, digest },
      })
    }
    throw new ManifestNotFoundError(`manifest ${digest} not found`, { detail: { registry: route.registry, repository, digest } })
  }

  /** Verifies a manifest against its digest, then commits it with its media type and announces it. */
  private async keepManifest(digest: string, bytes: Buffer, mediaType: string, source: BlobSource): Promise<ManifestContent> {
    const { blobStore, metadata, clock, announcer, metrics } = this.components
    if (sha256Digest(bytes) !== digest) {
      metrics.corruptContent.inc({ source: source.name })
      source.reportCorrupt?.({ kind: 'manifest', registry: '', repository: '', digest, offset: 0, signal: AbortSignal.abort() })
      throw new DigestMismatchError(`${source.name} sent a manifest that does not match ${digest}`, { detail: { digest } })
    }
    parseManifest(bytes, mediaType)
    const writer = await blobStore.ingest(digest, bytes.byteLength)
    try {
      await writer.write(bytes)
      await writer.commit()
    } catch (error) {
      await writer.abort()
      throw error
    }
    const now = clock.now()
    await metadata.putBlob(digest, { size: bytes.byteLength, mediaType, storedAt: now, lastAccess: now })
    announcer?.announce(digest)
    this.components.onCommitted?.({ digest, size: bytes.byteLength })
    return { digest, mediaType, size: bytes.byteLength, bytes, source: source.name }
  }

  private touch(digest: string): void {
    const { metadata, clock, logger } = this.components
    void metadata
      .getBlob(digest)
      .then((record) => (record ? metadata.putBlob(digest, { ...record, lastAccess: clock.now() }) : undefined))
      .catch((error) => logger.debug({ err: error, digest }, 'could not record access'))
  }

  private countRequest(kind: ContentKind, source: string, result: string): void {
    this.components.metrics.requests.inc({ kind, source, result })
  }
}

function errorResult(error: unknown): string {
  return error instanceof FerryError ? error.code : 'error'
}


async function readLimited(stream: Readable, limit: number): Promise<Buffer> {
  const chunks: Buffer[] = []
  let total = 0
  for await (const chunk of stream) {
    total += (chunk as Buffer).byteLength
    if (total > limit) {
      stream.destroy()
      throw new InvalidManifestError(`manifest exceeds the ${limit} byte limit`)
    }
    chunks.push(chunk as Buffer)
  }
  return Buffer.concat(chunks)
}
