import type { IncomingMessage, ServerResponse } from 'node:http'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { request as undiciRequest } from 'undici'
import type { Logger } from '@ferry/interfaces'

/** Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection and are never forwarded. */
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-authenticate',
  'proxy-authorization',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'host',
])

export interface ForwardOptions {
  logger: Logger
  connectTimeoutMs: number
  /** Answers instead of a 502 when the target cannot be reached at all. */
  whenUnreachable?: (response: ServerResponse) => void
}

/**
 * Forwards a client's request to `target` unchanged, its credentials included, and streams the
 * answer back: what proxy mode does with everything Ferry does not serve itself (pushes, token
 * endpoints, other hosts). Resolves once the response finished or failed.
 */
export async function forwardRequest(request: IncomingMessage, response: ServerResponse, target: URL, options: ForwardOptions): Promise<void> {
  const headers: Record<string, string | string[]> = {}
  const hopByHop = withConnectionTokens(request.headers.connection)
  for (const [name, value] of Object.entries(request.headers)) {
    if (value === undefined || hopByHop.has(name)) continue
    headers[name] = value
  }
  const hasBody = request.method !== 'GET' && request.method !== 'HEAD' && (request.headers['content-length'] !== undefined || request.headers['transfer-encoding'] !== undefined)
  try {
    const answer = await undiciRequest(target, {
      method: (request.method ?? 'GET') as 'GET',
      headers,
      body: hasBody ? Readable.from(request) : null,
      // Idle bounds only: a push of a large layer may take as long as it takes while bytes flow.
      headersTimeout: options.connectTimeoutMs + 60_000,
      bodyTimeout: 300_000,
    })
    const responseHeaders: Record<string, string | string[]> = {}
    const answerHopByHop = withConnectionTokens(answer.headers.connection)
    for (const [name, value] of Object.entries(answer.headers)) {
      if (value === undefined || answerHopByHop.has(name)) continue
      responseHeaders[name] = value
    }
    response.writeHead(answer.statusCode, responseHeaders)
    await pipeline(answer.body, response)
  } catch (error) {
    options.logger.info({ err: error, method: request.method, target: `${target.origin}${target.pathname}` }, 'proxied request failed')
    if (!response.headersSent && options.whenUnreachable) {
      options.whenUnreachable(response)
    } else if (!response.headersSent) {
      response.writeHead(502, { 'content-type': 'text/plain' }).end('Ferry proxy: the target did not answer\n')
    } else {
      response.destroy()
    }
  }
}

/** The fixed hop-by-hop headers plus those a Connection header names (RFC 9110 §7.6.1). */
function withConnectionTokens(connection: string | string[] | undefined): Set<string> {
  const names = new Set(HOP_BY_HOP)
  for (const value of [connection ?? []].flat()) {
    for (const token of value.split(',')) if (token.trim()) names.add(token.trim().toLowerCase())
  }
  return names
}
