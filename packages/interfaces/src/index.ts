/**
 * The small interfaces Ferry's components are built from. No runtime code lives here: each
 * interface has a memory implementation beside its real one, and both pass one conformance suite.
 *
 * Digests are always canonical `sha256:<64 lowercase hex>` strings that `@ferry/oci` validated.
 */
import type { Readable } from 'node:stream'

/** What is known of committed content. */
export interface BlobInfo {
  digest: string
  size: number
}

/** A byte range of a blob: `start` inclusive, `end` exclusive. */
export interface ByteRange {
  start: number
  end: number
}

/**
 * Content-addressed bytes on this node. Content becomes visible under its digest only after
 * `BlobWriter.commit()` has checked every byte against it.
 */
export interface BlobStore {
  stat(digest: string): Promise<BlobInfo | undefined>
  /** A stream of committed content, or undefined when the blob is not here. */
  open(digest: string, range?: ByteRange): Promise<Readable | undefined>
  /** Starts writing content expected to hash to `digest`. Concurrent ingests of one digest are allowed. */
  ingest(digest: string, expectedSize?: number): Promise<BlobWriter>
  delete(digest: string): Promise<boolean>
  list(): AsyncIterable<BlobInfo>
  /** Bytes held by committed content. */
  usage(): Promise<number>
}

/** A blob being written. It hashes what it is given and commits only when the digest matches. */
export interface BlobWriter {
  readonly digest: string
  /** Bytes accepted so far; every one of them can be read back through `openReader`. */
  readonly written: number
  write(chunk: Uint8Array): Promise<void>
  /**
   * Opens a reader of the bytes written so far, so that followers of an in-progress download can
   * stream it before it is committed. The reader stays valid after commit (and reads the committed
   * content), so a follower never has to switch files.
   */
  openReader(): Promise<PartialReader>
  /**
   * Checks size and digest of everything written, without making anything durable or visible.
   * Throws SizeMismatchError or DigestMismatchError; afterwards nothing more can be written.
   */
  verify(): void
  /** Verifies (if not yet done), makes the content durable and visible; on failure discards it and throws. */
  commit(): Promise<BlobInfo>
  /** Discards everything written. Safe to call more than once and after a failed commit. */
  abort(): Promise<void>
}

/** Positional reads of a blob being written. */
export interface PartialReader {
  /** Reads up to `length` bytes at `position`; `position + length` must not exceed what was written. */
  read(position: number, length: number): Promise<Buffer>
  close(): Promise<void>
}

/** Last confirmed answer of an upstream for `registry/repository:tag`. */
export interface TagRecord {
  digest: string
  mediaType: string
  size: number
  /** Epoch milliseconds when an upstream last confirmed this digest. */
  confirmedAt: number
}

/** What Ferry remembers of committed content beyond its bytes. */
export interface BlobRecord {
  size: number
  /** Set for manifests and indexes: the media type to serve them with. */
  mediaType?: string
  /** Epoch milliseconds. */
  storedAt: number
  lastAccess: number
}

export interface TagKey {
  registry: string
  repository: string
  tag: string
}

export interface MetadataStore {
  getTag(key: TagKey): Promise<TagRecord | undefined>
  putTag(key: TagKey, record: TagRecord): Promise<void>
  getBlob(digest: string): Promise<BlobRecord | undefined>
  putBlob(digest: string, record: BlobRecord): Promise<void>
  deleteBlob(digest: string): Promise<void>
  listBlobs(): AsyncIterable<[string, BlobRecord]>
  close(): Promise<void>
}

export type ContentKind = 'blob' | 'manifest'

/** A request for content by digest, possibly resuming at `offset`. */
export interface FetchRequest {
  kind: ContentKind
  /** Registry host as named in image references, e.g. `harbor.example.com` or `docker.io`. */
  registry: string
  repository: string
  digest: string
  /** First byte wanted; a source that cannot start there must throw. */
  offset: number
  signal: AbortSignal
  /**
   * Set when a region peer forwarded this request to this node (fetch-through): this node fetches
   * it itself, so its sources must not forward it to another peer again (copying a peer's
   * committed blob is still fine).
   */
  forwarded?: boolean
}

/** Bytes a source answered with, starting at `offset` of a blob of `size` bytes. */
export interface FetchedContent {
  size: number
  offset: number
  mediaType?: string
  body: Readable
  /**
   * Pass none of these bytes on before the whole blob is verified. For sources where a wrong copy
   * is a real possibility and another source is at hand (region peers): a client that received a
   * corrupt prefix cannot be made whole by a resume, so it must receive nothing unverified.
   */
  holdUntilVerified?: boolean
}

/**
 * One place content by digest can come from: a region peer or an upstream registry.
 * `fetch` resolves to undefined when the source does not have the content, and throws when it failed.
 */
export interface BlobSource {
  /** Metric label: `peer` or `upstream:<name>`. */
  readonly name: string
  fetch(request: FetchRequest): Promise<FetchedContent | undefined>
  /** Tells the source that content it served failed verification, so it can penalise where it came from. */
  reportCorrupt?(request: FetchRequest): void
}

/** Where peers that hold a blob are found. */
export interface ContentRouter {
  provide(digest: string): Promise<void>
  withdraw(digest: string): Promise<void>
  findProviders(digest: string, options: { signal: AbortSignal }): AsyncIterable<ProviderRecord>
}

export interface ProviderRecord {
  peerId: string
  /** Addresses the provider's blob transfer service answers on, e.g. `https://10.0.0.5:5053`. */
  addresses: string[]
}

/** A clock tests can control. */
export interface Clock {
  now(): number
}

/** The logging calls libraries make; pino's logger satisfies it. */
export interface Logger {
  debug(object: object, message?: string): void
  info(object: object, message?: string): void
  warn(object: object, message?: string): void
  error(object: object, message?: string): void
  child(bindings: Record<string, unknown>): Logger
}

/** What an upstream registry tells of a manifest without its bytes. */
export interface ManifestDescriptor {
  digest: string
  mediaType: string
  size: number
}

/** A registry Ferry pulls from: content by digest like any source, plus tags and manifests. */
export interface UpstreamSource extends BlobSource {
  /** undefined when the upstream says the tag does not exist; throws when it could not answer. */
  resolveTag(repository: string, tag: string, options: { signal: AbortSignal }): Promise<ManifestDescriptor | undefined>
  fetchManifest(
    repository: string,
    reference: string,
    options: { signal: AbortSignal },
  ): Promise<{ bytes: Buffer; mediaType: string; digest: string } | undefined>
  /** Tags of a repository (distribution's content discovery); undefined when the repository is unknown. */
  listTags?(repository: string, page: { n?: number; last?: string }, options: { signal: AbortSignal }): Promise<TagList | undefined>
}

/** One page of a repository's tags, as an upstream answered it. */
export interface TagList {
  name: string
  tags: string[]
  /** The upstream's `Link` to the next page, reduced to its path and query (`/v2/<name>/tags/list?...`). */
  next: string | undefined
}

/** Region peers' last-known answers for tags: only ever used, by explicit choice, when no upstream can answer. */
export interface PeerTagSource {
  lastKnownTag(key: TagKey, options: { signal: AbortSignal }): Promise<TagRecord | undefined>
}

/** Tells the region that this node holds content (DHT provide); failures are logged, never fatal. */
export interface ContentAnnouncer {
  announce(digest: string): void
  withdraw(digest: string): void
}
