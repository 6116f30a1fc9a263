import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { connect, type Socket } from 'node:net'
import { TLSSocket } from 'node:tls'
import type { Logger } from '@ferry/interfaces'
import { normalizeRegistryHost } from '@ferry/oci'
import type { NodeCertificateAuthority } from './node-ca.js'
import { forwardRequest } from './passthrough.js'

export interface ForwardProxyComponents {
  logger: Logger
  ca: NodeCertificateAuthority
  /**
   * Serves requests to mirrored registries: the registry API with the registry taken from the
   * Host header. Terminated CONNECT tunnels and plain proxy requests are handed to it.
   */
  mirrorServer: Server
}

export interface ForwardProxyInit {
  host: string
  port: number
  /** Whether Ferry serves this registry (as named in image references, e.g. `docker.io`). */
  isMirrored(registry: string): boolean
  /** Bound on connecting to a host for a tunnel or a forwarded request. */
  connectTimeoutMs: number
}

/**
 * Proxy mode for Docker hosts (`HTTPS_PROXY=http://127.0.0.1:5051` plus the node CA):
 * - `CONNECT <mirrored registry>:443` is answered by Ferry itself: TLS is terminated with a leaf
 *   for that host from the node CA, and the requests inside go to `mirrorServer`, which answers
 *   pulls from the pull path and forwards everything else to the real registry.
 * - `CONNECT` to any other host is a plain tunnel: bytes pass untouched.
 * - Plain `http://` proxy requests for a mirrored registry are served the same way; others are
 *   forwarded.
 * Listen on loopback only: to the node's own clients this is an open forward proxy.
 */
export class ForwardProxy {
  readonly url: string
  private readonly server: Server
  private readonly sockets = new Set<Socket>()

  private constructor(server: Server, url: string) {
    this.server = server
    this.url = url
  }

  static async start(components: ForwardProxyComponents, init: ForwardProxyInit): Promise<ForwardProxy> {
    const { logger, ca, mirrorServer } = components
    const server = createServer()
    const sockets = new Set<Socket>()
    server.on('connection', (socket: Socket) => {
      sockets.add(socket)
      socket.once('close', () => sockets.delete(socket))
    })

    server.on('connect', (request: IncomingMessage, clientSocket: Socket, head: Buffer) => {
      const target = parseAuthority(request.url ?? '')
      if (!target) {
        clientSocket.end('HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n')
        return
      }
      const registry = registryName(target.host, target.port)
      if (registry !== undefined && init.isMirrored(registry)) {
        void ca.contextFor(target.host).then(
          (secureContext) => {
            clientSocket.write('HTTP/1.1 200 Connection Established\r\n\r\n')
            if (head.length > 0) clientSocket.unshift(head)
            const tlsSocket = new TLSSocket(clientSocket, { isServer: true, secureContext, ALPNProtocols: ['http/1.1'] })
            tlsSocket.on('error', (error) => logger.debug({ err: error, host: target.host }, 'proxy TLS connection failed'))
            mirrorServer.emit('connection', tlsSocket)
          },
          (error) => {
            logger.error({ err: error, host: target.host }, 'could not issue a proxy certificate')
            clientSocket.end('HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n')
          },
        )
        return
      }
      tunnel(clientSocket, head, target, init.connectTimeoutMs, logger)
    })

    server.on('request', (request: IncomingMessage, response: ServerResponse) => {
      const url = absoluteUrl(request.url)
      if (!url) {
        response.writeHead(400, { 'content-type': 'text/plain' }).end('Ferry proxy: expected an absolute-form proxy request\n')
        return
      }
      const registry = registryName(url.hostname, Number(url.port || (url.protocol === 'https:' ? 443 : 80)))
      if (registry !== undefined && init.isMirrored(registry) && url.pathname.startsWith('/v2')) {
        // The mirror server reads the registry from Host and the route from the path.
        request.url = `${url.pathname}${url.search}`
        request.headers.host = url.host
        mirrorServer.emit('request', request, response)
        return
      }
      void forwardRequest(request, response, url, { logger, connectTimeoutMs: init.connectTimeoutMs })
    })

    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(init.port, init.host, () => {
        server.off('error', reject)
        resolve()
      })
    })
    const address = server.address()
    const port = typeof address === 'object' && address ? address.port : init.port
    const host = init.host.includes(':') ? `[${init.host}]` : init.host
    const proxy = new ForwardProxy(server, `http://${host}:${port}`)
    for (const socket of sockets) proxy.sockets.add(socket)
    server.on('connection', (socket: Socket) => {
      proxy.sockets.add(socket)
      socket.once('close', () => proxy.sockets.delete(socket))
    })
    return proxy
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve())
      // Tunnels are long-lived by nature; a shutdown ends them.
      for (const socket of this.sockets) socket.destroy()
      this.server.closeAllConnections()
    })
  }
}

/** `host:port` of a CONNECT request; IPv6 in brackets. */
function parseAuthority(authority: string): { host: string; port: number } | undefined {
  const match = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(authority)
  if (!match) return undefined
  const port = Number(match[2])
  if (port < 1 || port > 65535) return undefined
  return { host: match[1]!.replace(/^\[|\]$/g, ''), port }
}

/** The registry an image reference would name: the host, with the port unless it is 443 (or 80). */
function registryName(host: string, port: number): string | undefined {
  try {
    const bracketed = host.includes(':') ? `[${host}]` : host
    return normalizeRegistryHost(port === 443 || port === 80 ? bracketed : `${bracketed}:${port}`)
  } catch {
    return undefined
  }
}

function absoluteUrl(raw: string | undefined): URL | undefined {
  if (!raw || !/^https?:\/\//i.test(raw)) return undefined
  try {
    return new URL(raw)
  } catch {
    return undefined
  }
}

function tunnel(clientSocket: Socket, head: Buffer, target: { host: string; port: number }, connectTimeoutMs: number, logger: Logger): void {
  const upstream = connect({ host: target.host, port: target.port })
  const timer = setTimeout(() => upstream.destroy(new Error(`connect to ${target.host}:${target.port} timed out`)), connectTimeoutMs)
  upstream.once('connect', () => {
    clearTimeout(timer)
    clientSocket.write('HTTP/1.1 200 Connection Established\r\n\r\n')
    if (head.length > 0) upstream.write(head)
    upstream.pipe(clientSocket)
    clientSocket.pipe(upstream)
  })
  upstream.on('error', (error) => {
    clearTimeout(timer)
    logger.debug({ err: error, host: target.host, port: target.port }, 'proxy tunnel failed')
    if (!clientSocket.destroyed && clientSocket.bytesWritten === 0) {
      clientSocket.end('HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n')
    } else {
      clientSocket.destroy()
    }
  })
  clientSocket.on('error', () => upstream.destroy())
  clientSocket.on('close', () => upstream.destroy())
  upstream.on('close', () => clientSocket.destroy())
}
