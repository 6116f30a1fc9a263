import { createHash, createPrivateKey, randomUUID, sign, X509Certificate, type KeyObject } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { runCommand } from './process.js';

/**
 * A Docker-style Bearer token issuer, the auth flow Harbor and Docker Hub use, for the CNCF
 * registry's `auth.token` mode.
 *
 * Wire protocol (distribution's docs/spec/auth/token.md and oauth.md):
 *   registry: 401 + `WWW-Authenticate: Bearer realm="<url>",service="<svc>",scope="repository:<name>:pull"`
 *   client:   GET  <realm>?service=<svc>&scope=<scope>[&scope=...]      Authorization: Basic (optional)
 *             POST <realm>  form: grant_type=password&username&password&service&scope   (containerd)
 *   issuer:   200 {"token", "access_token", "expires_in", "issued_at"}; bad credentials: 401
 * The token is an RS256 JWT whose `kid` is the libtrust key id of our public key; the registry
 * finds the key by that id among the certificates in its `rootcertbundle`.
 */

export interface TokenIssuerOptions {
  /** Directory for the signing key and the certificate the registry trusts. */
  dir: string;
  /** Must equal the registry's `auth.token.service`; it is the JWT `aud`. */
  service: string;
  /** The JWT `iss`; must equal the registry's `auth.token.issuer`. */
  issuer?: string;
  /** username -> password. */
  users: Record<string, string>;
  /** Accounts granted push as well as pull. Everyone else who authenticates gets pull. */
  pushers?: readonly string[];
  /** Whether a request without credentials gets pull access (otherwise a token with no access). */
  allowAnonymous?: boolean;
  tokenLifetimeSeconds?: number;
}

export interface RepositoryAccess {
  type: string;
  name: string;
  actions: string[];
}

/** One request to the realm, as the tests may want to assert on it. */
export interface TokenRequestRecord {
  method: 'GET' | 'POST';
  /** The authenticated user, or undefined for an anonymous request. */
  account: string | undefined;
  service: string | undefined;
  requestedScopes: string[];
  granted: RepositoryAccess[];
  status: number;
}

export interface TokenIssuer {
  /** Base URL, e.g. http://127.0.0.1:41234 */
  readonly url: string;
  readonly port: number;
  /** The token endpoint to put in the registry's `auth.token.realm`. */
  readonly realm: string;
  readonly service: string;
  readonly issuer: string;
  /** PEM certificate for the registry's `auth.token.rootcertbundle`. */
  readonly rootCertBundlePath: string;
  /** The `kid` every token carries. */
  readonly keyId: string;
  /** Every request so far, oldest first. */
  readonly requests: readonly TokenRequestRecord[];
  /** Count of requests, optionally only one method and/or only successful ones. */
  countRequests(filter?: { method?: 'GET' | 'POST'; status?: number }): number;
  stop(): Promise<void>;
}

/**
 * The key id libtrust (and so distribution's token verifier) computes for a public key:
 * sha256 over the DER SubjectPublicKeyInfo, the first 240 bits in base32 without padding,
 * cut into 12 groups of 4 characters joined by ':'.
 */
export function libtrustKeyId(publicKey: KeyObject): string {
  const digest = createHash('sha256').update(publicKey.export({ format: 'der', type: 'spki' })).digest();
  const encoded = base32(digest.subarray(0, 30));
  return encoded.match(/.{4}/g)!.join(':');
}

const BASE32_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
function base32(bytes: Uint8Array): string {
  let output = '';
  let buffer = 0;
  let bitCount = 0;
  for (const byte of bytes) {
    buffer = (buffer << 8) | byte;
    bitCount += 8;
    while (bitCount >= 5) {
      output += BASE32_ALPHABET[(buffer >>> (bitCount - 5)) & 31];
      bitCount -= 5;
    }
    buffer &= (1 << bitCount) - 1;
  }
  if (bitCount > 0) output += BASE32_ALPHABET[(buffer << (5 - bitCount)) & 31];
  return output;
}

function base64Url(data: Buffer | string): string {
  return Buffer.from(data).toString('base64url');
}

/** Parses "repository:team/app:pull,push" (the name never holds ':'; the type may be "repository(plugin)"). */
export function parseScope(scope: string): RepositoryAccess | undefined {
  const firstColon = scope.indexOf(':');
  const lastColon = scope.lastIndexOf(':');
  if (firstColon <= 0 || lastColon === firstColon) return undefined;
  return {
    type: scope.slice(0, firstColon),
    name: scope.slice(firstColon + 1, lastColon),
    actions: scope.slice(lastColon + 1).split(',').filter(Boolean),
  };
}

async function readBody(request: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of request) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

interface Credentials {
  username: string;
  password: string;
}

function basicCredentials(request: IncomingMessage): Credentials | undefined {
  const header = request.headers.authorization;
  if (!header?.startsWith('Basic ')) return undefined;
  const decoded = Buffer.from(header.slice('Basic '.length), 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) return undefined;
  return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}

export async function startTokenIssuer(options: TokenIssuerOptions): Promise<TokenIssuer> {
  const issuerName = options.issuer ?? 'ferry-test-token-issuer';
  const lifetimeSeconds = options.tokenLifetimeSeconds ?? 300;
  const pushers = new Set(options.pushers ?? []);

  // Node's crypto cannot create certificates; the openssl CLI can, in one call.
  const keyPath = join(options.dir, 'token-signing.key');
  const certPath = join(options.dir, 'token-signing.crt');
  await runCommand('openssl', [
    'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-sha256', '-days', '2',
    '-subj', `/CN=${issuerName}`, '-keyout', keyPath, '-out', certPath,
  ]);
  const privateKey = createPrivateKey(await readFile(keyPath));
  const certificate = new X509Certificate(await readFile(certPath));
  const keyId = libtrustKeyId(certificate.publicKey);

  const requests: TokenRequestRecord[] = [];

  const authenticate = (credentials: Credentials | undefined): { ok: boolean; account: string | undefined } => {
    if (credentials === undefined) return { ok: true, account: undefined };
    const expected = options.users[credentials.username];
    return { ok: expected !== undefined && expected === credentials.password, account: credentials.username };
  };

  const grant = (account: string | undefined, scopes: string[]): RepositoryAccess[] => {
    const allowed =
      account === undefined ? (options.allowAnonymous ? ['pull'] : []) : pushers.has(account) ? ['pull', 'push'] : ['pull'];
    const granted: RepositoryAccess[] = [];
    for (const scope of scopes) {
      const access = parseScope(scope);
      if (access?.type !== 'repository') continue;
      const actions = access.actions.filter((action) => allowed.includes(action));
      if (actions.length > 0) granted.push({ ...access, actions });
    }
    return granted;
  };

  const issueToken = (account: string | undefined, access: RepositoryAccess[]): string => {
    const now = Math.floor(Date.now() / 1000);
    const header = { alg: 'RS256', typ: 'JWT', kid: keyId };
    const claims = {
      iss: issuerName,
      sub: account ?? '',
      aud: options.service,
      exp: now + lifetimeSeconds,
      nbf: now,
      iat: now,
      jti: randomUUID(),
      access,
    };
    const signingInput = `${base64Url(JSON.stringify(header))}.${base64Url(JSON.stringify(claims))}`;
    const signature = sign('sha256', Buffer.from(signingInput), privateKey);
    return `${signingInput}.${base64Url(signature)}`;
  };

  const reply = (response: ServerResponse, status: number, body: unknown): void => {
    const text = JSON.stringify(body);
    response.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
    response.end(text);
  };

  const handle = async (request: IncomingMessage, response: ServerResponse): Promise<void> => {
    const requestUrl = new URL(request.url ?? '/', 'http://token-issuer');
    if (requestUrl.pathname !== '/token' || (request.method !== 'GET' && request.method !== 'POST')) {
      reply(response, 404, { error: 'not_found' });
      return;
    }
    const method = request.method;
    let service: string | undefined;
    let scopes: string[];
    let credentials: Credentials | undefined;
    if (method === 'GET') {
      service = requestUrl.searchParams.get('service') ?? undefined;
      scopes = requestUrl.searchParams.getAll('scope');
      credentials = basicCredentials(request);
    } else {
      const form = new URLSearchParams(await readBody(request));
      service = form.get('service') ?? undefined;
      scopes = form.getAll('scope');
      if (form.get('grant_type') !== 'password') {
        // containerd only falls back to GET on 404/405; anything else we do not support is an error.
        requests.push({ method, account: undefined, service, requestedScopes: scopes, granted: [], status: 400 });
        reply(response, 400, { error: 'unsupported_grant_type' });
        return;
      }
      credentials = { username: form.get('username') ?? '', password: form.get('password') ?? '' };
    }
    // One request may carry several scopes, space-separated in one parameter (oauth.md).
    scopes = scopes.flatMap((scope) => scope.split(' ')).filter(Boolean);

    const { ok, account } = authenticate(credentials);
    if (!ok || service !== options.service) {
      const status = ok ? 400 : 401;
      requests.push({ method, account, service, requestedScopes: scopes, granted: [], status });
      reply(response, status, { error: ok ? 'invalid_service' : 'invalid_credentials' });
      return;
    }
    const granted = grant(account, scopes);
    requests.push({ method, account, service, requestedScopes: scopes, granted, status: 200 });
    const token = issueToken(account, granted);
    reply(response, 200, {
      token,
      access_token: token,
      expires_in: lifetimeSeconds,
      issued_at: new Date().toISOString(),
    });
  };

  const server = createServer((request, response) => {
    handle(request, response).catch((error: unknown) => {
      response.destroy(error as Error);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = server.address() as AddressInfo;
  const url = `http://127.0.0.1:${port}`;

  return {
    url,
    port,
    realm: `${url}/token`,
    service: options.service,
    issuer: issuerName,
    rootCertBundlePath: certPath,
    keyId,
    requests,
    countRequests: (filter = {}) =>
      requests.filter(
        (record) =>
          (filter.method === undefined || record.method === filter.method) &&
          (filter.status === undefined || record.status === filter.status),
      ).length,
    stop: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
