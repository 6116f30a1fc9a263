import { mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify'
import { pino, type Logger as PinoLogger } from 'pino'
import { Gauge, Registry, collectDefaultMetrics } from 'prom-client'
import type { Clock } from '@ferry/interfaces'
import { UpstreamUnavailableError } from '@ferry/oci'
import { Mirror, createMirrorMetrics } from '@ferry/mirror'
import { MAX_PATH_LENGTH, ociErrorHandler, ociFrameworkErrorHandler, ociNotFoundHandler, registerRegistryApi } from '@ferry/registry-api'
import { DiskBlobStore, LevelMetadataStore, LruEvictor } from '@ferry/store'
import { RegionNode } from '@ferry/p2p'
import { ForwardProxy, forwardRequest, loadOrCreateNodeCa } from '@ferry/proxy'
import { TLSSocket } from 'node:tls'
import { UpstreamRegistry, createUpstreamMetrics } from '@ferry/upstream'
import type { FerryConfig } from './config.js'

export const FERRY_VERSION = '0.1.0'

export interface DaemonOptions {
  logger?: PinoLogger
  clock?: Clock
}

export interface RunningDaemon {
  /** Base URL of the mirror API, e.g. http://127.0.0.1:5050. */
  url: string
  port: number
  /** Proxy mode's URL, when it is on. */
  proxyUrl: string | undefined
  app: FastifyInstance
  metrics: Registry
  close(): Promise<void>
}

/** Wires the components from the validated config and starts serving. */
export async function startDaemon(config: FerryConfig, options: DaemonOptions = {}): Promise<RunningDaemon> {
  const logger = options.logger ?? pino({ level: config.log.level, base: { service: 'ferry' } })
  const clock = options.clock ?? { now: () => Date.now() }
  await mkdir(config.dataDir, { recursive: true })
  const blobStore = await DiskBlobStore.open(config.dataDir)
  const metadata = await LevelMetadataStore.open(join(config.dataDir, 'metadata'))

  const metrics = new Registry()
  collectDefaultMetrics({ register: metrics, prefix: 'ferry_' })
  const mirrorMetrics = createMirrorMetrics(metrics)
  const upstreamMetrics = createUpstreamMetrics(metrics)

  const upstreams: UpstreamRegistry[] = []
  const routes = config.registries.map((registry) => ({
    registry: registry.registry,
    peers: registry.peers,
    upstreams: registry.upstreams.map((settings) => {
      const upstream = new UpstreamRegistry(
        { logger: logger.child({ upstream: settings.name }), clock, metrics: upstreamMetrics },
        {
          name: settings.name,
          url: settings.url,
          ...(settings.credentials ? { credentials: settings.credentials } : {}),
          timeouts: settings.timeouts,
          breaker: settings.breaker,
          ...(settings.tls ? { tls: { ...(settings.tls.ca ? { ca: settings.tls.ca } : {}), insecureSkipVerify: settings.tls.insecureSkipVerify } } : {}),
          ...(settings.repositoryPrefix ? { repositoryPrefix: settings.repositoryPrefix } : {}),
        },
      )
      upstreams.push(upstream)
      return upstream
    }),
  }))

  // The region node needs the mirror (fetch-through for peers) and the mirror the region node (its
  // peer source): the mirror is bound once built; until then peers are told this node cannot help.
  let mirrorForPeers: Mirror | undefined
  const region = config.p2p
    ? await RegionNode.start(
        {
          logger,
          clock,
          blobStore,
          metrics,
          mediaTypeOf: async (digest) => (await metadata.getBlob(digest))?.mediaType,
          tagOf: (key) => metadata.getTag(key),
          fetchThrough: async (request) => {
            if (!mirrorForPeers) throw new UpstreamUnavailableError('ferry is starting')
            return mirrorForPeers.fetchThrough(request)
          },
        },
        {
          region: config.p2p.region,
          secret: config.p2p.secret,
          listen: [...config.p2p.listen],
          bootstrap: [...config.p2p.bootstrap],
          transfer: {
            host: config.p2p.transfer.host,
            port: config.p2p.transfer.port,
            ...(config.p2p.transfer.advertiseHost ? { advertiseHost: config.p2p.transfer.advertiseHost } : {}),
          },
          identityDir: join(config.dataDir, 'p2p'),
          lookupTimeoutMs: config.p2p.lookupTimeoutMs,
          maxProviders: config.p2p.maxProviders,
          negativeCacheMs: config.p2p.negativeCacheMs,
          penaltyMs: config.p2p.penaltyMs,
          reprovideIntervalMs: config.p2p.reprovideIntervalMs,
          maxTransfersPerPeer: config.p2p.maxTransfersPerPeer,
          transferTimeouts: { ...config.p2p.transferTimeouts },
        },
      )
    : undefined

  const evictor =
    config.store.maxBytes === undefined
      ? undefined
      : new LruEvictor(
          { blobStore, metadata, logger: logger.child({ component: 'eviction' }), onEvicted: (digest) => region?.announcer.withdraw(digest) },
          { maxBytes: config.store.maxBytes, lowWaterRatio: config.store.lowWaterRatio },
        )
  const runEviction = () => void evictor?.run().catch((error) => logger.error({ err: error }, 'eviction failed'))
  const evictionTimer = evictor ? setInterval(runEviction, config.store.evictionIntervalMs).unref() : undefined
  runEviction()

  const mirror = new Mirror(
    {
      blobStore,
      metadata,
      logger,
      clock,
      metrics: mirrorMetrics,
      onCommitted: runEviction,
      ...(region ? { peerSource: region.peerSource, announcer: region.announcer } : {}),
      ...(region && config.p2p?.offlineTags ? { peerTags: region } : {}),
    },
    { routes, tagTimeoutMs: config.tagTimeoutMs, orphanTimeoutMs: config.orphanTimeoutMs },
  )
  mirrorForPeers = mirror
  new Gauge({
    name: 'ferry_active_downloads',
    help: 'Downloads in progress',
    registers: [metrics],
    collect() {
      this.set(mirror.activeDownloads)
    },
  })
  // Measuring the store walks it: at most every 30 s, for /metrics and /status alike.
  let storeBytes = { value: 0, measuredAt: -Infinity }
  const storeUsage = async () => {
    if (clock.now() - storeBytes.measuredAt > 30_000) storeBytes = { value: await blobStore.usage(), measuredAt: clock.now() }
    return storeBytes.value
  }
  new Gauge({
    name: 'ferry_store_bytes',
    help: 'Bytes of committed content in the local store (measured at most every 30 s)',
    registers: [metrics],
    async collect() {
      this.set(await storeUsage())
    },
  })
  if (config.store.maxBytes !== undefined) {
    new Gauge({ name: 'ferry_store_max_bytes', help: 'Quota of the local store', registers: [metrics] }).set(config.store.maxBytes)
  }

  let url = ''
  const app = Fastify({
    loggerInstance: logger as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }),
    routerOptions: { maxParamLength: MAX_PATH_LENGTH * 2 },
    bodyLimit: 1024 * 1024,
    return503OnClosing: true,
    forceCloseConnections: 'idle',
    requestIdHeader: 'x-request-id',
    frameworkErrors: ociFrameworkErrorHandler(logger),
  })
  app.setErrorHandler(ociErrorHandler(logger))
  app.setNotFoundHandler(ociNotFoundHandler)
  app.get('/healthz', async () => ({ status: 'ok' }))
  app.get('/readyz', async () => ({ status: 'ready' }))
  app.get('/status', async () => ({
    version: FERRY_VERSION,
    listen: url,
    dataDir: config.dataDir,
    registries: config.registries.map((registry) => ({
      registry: registry.registry,
      peers: registry.peers && region !== undefined,
      upstreams: registry.upstreams.map((upstream) => ({ name: upstream.name, url: upstream.url })),
    })),
    store: { usageBytes: await storeUsage(), maxBytes: config.store.maxBytes ?? null },
    downloads: mirror.activeDownloads,
    p2p: region ? region.status() : null,
  }))
  app.get('/metrics', async (_request, reply) => {
    reply.header('content-type', metrics.contentType)
    return metrics.metrics()
  })
  await app.register(async (scope) => registerRegistryApi(scope, { mirror, logger }, { defaultRegistry: config.defaultRegistry }))

  await app.listen({ host: config.listen.host, port: config.listen.port })
  const proxy = config.proxy ? await startProxy(config, { mirror, logger }) : undefined
  const address = app.server.address()
  const port = typeof address === 'object' && address ? address.port : config.listen.port
  const host = config.listen.host.includes(':') ? `[${config.listen.host}]` : config.listen.host
  url = `http://${host}:${port}`
  logger.info(
    { url, proxyUrl: proxy?.url, dataDir: config.dataDir, registries: config.registries.map((registry) => registry.registry), defaultRegistry: config.defaultRegistry },
    'ferry is serving',
  )

  let closing: Promise<void> | undefined
  return {
    url,
    port,
    proxyUrl: proxy?.url,
    app,
    metrics,
    close() {
      closing ??= (async () => {
        const bound = setTimeout(() => {
          logger.warn({ timeoutMs: config.shutdownTimeoutMs }, 'shutdown bound reached; closing remaining connections')
          app.server.closeAllConnections()
        }, config.shutdownTimeoutMs)
        bound.unref()
        try {
          await app.close()
        } finally {
          clearTimeout(bound)
          clearInterval(evictionTimer)
          await proxy?.close()
          mirror.close()
          await region?.stop().catch((error) => logger.warn({ err: error }, 'p2p did not stop cleanly'))
          await Promise.allSettled(upstreams.map((upstream) => upstream.close()))
          await metadata.close()
        }
      })()
      return closing
    },
  }
}

/**
 * Proxy mode: a forward proxy whose terminated CONNECT tunnels (and plain proxy requests) to
 * mirrored registries are served by a second instance of the registry API that takes the registry
 * from the Host header and forwards what it does not serve to the real registry.
 */
async function startProxy(config: FerryConfig, components: { mirror: Mirror; logger: PinoLogger }): Promise<ForwardProxy> {
  const { mirror, logger } = components
  const settings = config.proxy!
  const ca = await loadOrCreateNodeCa(settings.caDir)
  const inner = Fastify({ loggerInstance: logger as FastifyBaseLogger, logController: new LogController({ disableRequestLogging: true }), routerOptions: { maxParamLength: MAX_PATH_LENGTH * 2 } })
  const passthrough = async (request: FastifyRequest, reply: FastifyReply) => {
    reply.hijack()
    const scheme = request.raw.socket instanceof TLSSocket ? 'https' : 'http'
    const target = new URL(`${scheme}://${request.headers.host ?? ''}${request.raw.url ?? '/'}`)
    const isPing = target.pathname === '/v2/' || target.pathname === '/v2'
    await forwardRequest(request.raw, reply.raw, target, {
      logger,
      connectTimeoutMs: settings.connectTimeoutMs,
      // With the real registry out of reach, cached images must still pull: answer the ping here.
      ...(isPing ? { whenUnreachable: (response) => response.writeHead(200, { 'content-type': 'application/json', 'docker-distribution-api-version': 'registry/2.0' }).end('{}') } : {}),
    })
  }
  inner.setErrorHandler(ociErrorHandler(logger))
  inner.setNotFoundHandler(passthrough)
  await inner.register(async (scope) => registerRegistryApi(scope, { mirror, logger }, { defaultRegistry: undefined, registryFrom: 'host', passthrough }))
  await inner.ready()
  const mirrored = new Set(config.registries.map((registry) => registry.registry))
  return ForwardProxy.start(
    { logger, ca, mirrorServer: inner.server },
    { host: settings.listen.host, port: settings.listen.port, isMirrored: (registry) => mirrored.has(registry), connectTimeoutMs: settings.connectTimeoutMs },
  )
}
