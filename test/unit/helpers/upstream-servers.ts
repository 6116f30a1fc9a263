import { execFile } from 'node:child_process'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { createServer as createHttpServer, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { createServer as createHttpsServer } from 'node:https'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Readable } from 'node:stream'
import type { TestContext } from 'node:test'
import { promisify } from 'node:util'
import type { Clock, Logger } from '@ferry/interfaces'

/** A request as a test server saw it, body included. */
export interface RecordedRequest {
  method: string
  url: URL
  headers: IncomingHttpHeaders
  body: string
}

export type Handler = (request: RecordedRequest, response: ServerResponse) => void | Promise<void>

export interface TestServer {
  /** `http://127.0.0.1:<port>` (or https). */
  origin: string
  port: number
  /** Every request received, in order. */
  requests: RecordedRequest[]
  /** Requests whose path starts with `prefix`. */
  requestsTo(prefix: string): RecordedRequest[]
}

/**
 * A real HTTP(S) server on 127.0.0.1, port 0, closed (connections and all) after the test.
 * The handler may leave a response unanswered: those sockets are destroyed at close.
 */
export async function startServer(t: TestContext, handler: Handler, options: { tls?: TestCertificate } = {}): Promise<TestServer> {
  const requests: RecordedRequest[] = []
  const listener = (incoming: IncomingMessage, response: ServerResponse) => {
    const chunks: Buffer[] = []
    incoming.on('data', (chunk: Buffer) => chunks.push(chunk))
    incoming.on('end', () => {
      const protocol = options.tls === undefined ? 'http' : 'https'
      const request: RecordedRequest = {
        method: incoming.method ?? 'GET',
        url: new URL(incoming.url ?? '/', `${protocol}://${incoming.headers.host ?? '127.0.0.1'}`),
        headers: incoming.headers,
        body: Buffer.concat(chunks).toString('utf8'),
      }
      requests.push(request)
      Promise.resolve(handler(request, response)).catch((error: unknown) => {
        response.destroy(error as Error)
      })
    })
  }
  const server: Server =
    options.tls === undefined ? createHttpServer(listener) : createHttpsServer({ key: options.tls.key, cert: options.tls.cert }, listener)
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen({ host: '127.0.0.1', port: 0 }, resolve)
  })
  t.after(async () => {
    server.closeAllConnections()
    await new Promise<void>((resolve) => server.close(() => resolve()))
  })
  const { port } = server.address() as AddressInfo
  return {
    origin: `${options.tls === undefined ? 'http' : 'https'}://127.0.0.1:${port}`,
    port,
    requests,
    requestsTo: (prefix) => requests.filter((request) => request.url.pathname.startsWith(prefix)),
  }
}

/** A port nothing listens on any more. */
export async function closedPort(): Promise<number> {
  const server = createHttpServer()
  await new Promise<void>((resolve) => server.listen({ host: '127.0.0.1', port: 0 }, resolve))
  const { port } = server.address() as AddressInfo
  await new Promise<void>((resolve) => server.close(() => resolve()))
  return port
}

export interface TestCertificate {
  key: string
  cert: string
}

/** A self-signed certificate for 127.0.0.1, made by the openssl CLI (Node cannot create certificates). */
export async function selfSignedCertificate(): Promise<TestCertificate> {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-upstream-tls-'))
  try {
    await promisify(execFile)('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
      '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1',
      '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'),
    ])
    return { key: await readFile(join(dir, 'key.pem'), 'utf8'), cert: await readFile(join(dir, 'cert.pem'), 'utf8') }
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

/** Answers with a registry's JSON error body. */
export function sendRegistryError(response: ServerResponse, status: number, code: string, headers: Record<string, string> = {}): void {
  const body = JSON.stringify({ errors: [{ code, message: code.toLowerCase() }] })
  response.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...headers })
  response.end(body)
}

export function decodeBasic(header: string | undefined): { username: string; password: string } | undefined {
  if (header === undefined || !header.startsWith('Basic ')) return undefined
  const decoded = Buffer.from(header.slice('Basic '.length), 'base64').toString('utf8')
  const colon = decoded.indexOf(':')
  return colon === -1 ? undefined : { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) }
}

export async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = []
  for await (const chunk of stream) chunks.push(chunk as Buffer)
  return Buffer.concat(chunks)
}

export class ManualClock implements Clock {
  constructor(public time = 1_700_000_000_000) {}

  now(): number {
    return this.time
  }

  advance(milliseconds: number): void {
    this.time += milliseconds
  }
}

export interface LogEntry {
  level: 'debug' | 'info' | 'warn' | 'error'
  bindings: Record<string, unknown>
  object: object
  message: string | undefined
}

/** A Logger that keeps every entry, so tests can look at what was (not) logged. */
export class RecordingLogger implements Logger {
  constructor(
    readonly entries: LogEntry[] = [],
    private readonly bindings: Record<string, unknown> = {},
  ) {}

  debug(object: object, message?: string): void {
    this.entries.push({ level: 'debug', bindings: this.bindings, object, message })
  }

  info(object: object, message?: string): void {
    this.entries.push({ level: 'info', bindings: this.bindings, object, message })
  }

  warn(object: object, message?: string): void {
    this.entries.push({ level: 'warn', bindings: this.bindings, object, message })
  }

  error(object: object, message?: string): void {
    this.entries.push({ level: 'error', bindings: this.bindings, object, message })
  }

  child(bindings: Record<string, unknown>): Logger {
    return new RecordingLogger(this.entries, { ...this.bindings, ...bindings })
  }

  /** Everything logged, as one string to search for secrets. */
  text(): string {
    return this.entries.map((entry) => JSON.stringify({ ...entry, object: serialise(entry.object) })).join('\n')
  }
}

function serialise(value: object): unknown {
  return JSON.parse(JSON.stringify(value, (_key, item: unknown) => (item instanceof Error ? { name: item.name, message: item.message } : item)))
}
