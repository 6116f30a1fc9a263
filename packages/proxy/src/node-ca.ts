// @peculiar/x509 2 resolves its dependencies through tsyringe, which needs the Reflect metadata API.
import 'reflect-metadata'
import { randomBytes, webcrypto } from 'node:crypto'
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { isIP } from 'node:net'
import { join } from 'node:path'
import { createSecureContext, type SecureContext } from 'node:tls'
import * as x509 from '@peculiar/x509'

/**
 * The node CA of proxy mode: Docker (or any client behind HTTPS_PROXY) trusts it for the registry
 * hosts Ferry serves, so Ferry can terminate their TLS and answer from the pull path.
 *
 *   <dir>/ca.crt   the CA certificate (give it to clients: /etc/docker/certs.d/<host>/ca.crt)
 *   <dir>/ca.key   its private key, mode 0600, never leaves the node
 *
 * Created once and kept: a new CA at every start would make clients distrust the node after a
 * restart. Leaf certificates are issued per host in memory and cached for the process's life.
 */
export interface NodeCertificateAuthority {
  readonly certificatePem: string
  /** A TLS context presenting a leaf for `host` (a DNS name or an IP), issued on first use. */
  contextFor(host: string): Promise<SecureContext>
}

const crypto = webcrypto
// @peculiar/x509 is typed against the DOM's WebCrypto; Node's differs only in details it does not use.
const x509Crypto = webcrypto as unknown as Parameters<typeof x509.X509CertificateGenerator.create>[1]
const EC_ALGORITHM = { name: 'ECDSA', namedCurve: 'P-256' } as const
const SIGNING_ALGORITHM = { name: 'ECDSA', hash: 'SHA-256' } as const
const DAY_MS = 24 * 60 * 60 * 1000

export async function loadOrCreateNodeCa(dir: string, options: { now?: () => Date } = {}): Promise<NodeCertificateAuthority> {
  const now = options.now ?? (() => new Date())
  const certPath = join(dir, 'ca.crt')
  const keyPath = join(dir, 'ca.key')
  let certificatePem: string
  let keyPem: string
  try {
    certificatePem = await readFile(certPath, 'utf8')
    keyPem = await readFile(keyPath, 'utf8')
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error
    ;({ certificatePem, keyPem } = await createCa(now()))
    await mkdir(dir, { recursive: true, mode: 0o700 })
    await writeFile(`${keyPath}.tmp`, keyPem, { mode: 0o600 })
    await writeFile(`${certPath}.tmp`, certificatePem, { mode: 0o644 })
    await rename(`${keyPath}.tmp`, keyPath)
    await rename(`${certPath}.tmp`, certPath)
  }
  const certificate = new x509.X509Certificate(certificatePem)
  const signingKey = await crypto.subtle.importKey('pkcs8', pemBody(keyPem), EC_ALGORITHM, false, ['sign'])
  const caPublicKey = await certificate.publicKey.export(EC_ALGORITHM, ['verify'], x509Crypto)
  const contexts = new Map<string, Promise<SecureContext>>()

  async function issue(host: string): Promise<SecureContext> {
    const keys = await crypto.subtle.generateKey(EC_ALGORITHM, true, ['sign', 'verify'])
    const issuedAt = now().getTime()
    const leaf = await x509.X509CertificateGenerator.create(
      {
        serialNumber: `01${randomBytes(15).toString('hex')}`,
        subject: `CN=${host}`,
        issuer: certificate.subject,
        notBefore: new Date(issuedAt - DAY_MS),
        notAfter: new Date(issuedAt + 365 * DAY_MS),
        publicKey: keys.publicKey,
        signingKey,
        signingAlgorithm: SIGNING_ALGORITHM,
        extensions: [
          new x509.BasicConstraintsExtension(false, undefined, true),
          new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
          new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
          new x509.SubjectAlternativeNameExtension([isIP(host) ? { type: 'ip', value: host } : { type: 'dns', value: host }]),
          await x509.AuthorityKeyIdentifierExtension.create(caPublicKey, false, x509Crypto),
        ],
      },
      x509Crypto,
    )
    const keyDer = Buffer.from(await crypto.subtle.exportKey('pkcs8', keys.privateKey))
    return createSecureContext({ cert: `${leaf.toString('pem')}\n${certificatePem}`, key: toPem('PRIVATE KEY', keyDer), minVersion: 'TLSv1.2' })
  }

  return {
    certificatePem,
    contextFor(host: string) {
      let context = contexts.get(host)
      if (!context) {
        context = issue(host)
        context.catch(() => contexts.delete(host))
        contexts.set(host, context)
      }
      return context
    },
  }
}

async function createCa(now: Date): Promise<{ certificatePem: string; keyPem: string }> {
  const keys = await crypto.subtle.generateKey(EC_ALGORITHM, true, ['sign', 'verify'])
  const certificate = await x509.X509CertificateGenerator.createSelfSigned(
    {
      serialNumber: `01${randomBytes(15).toString('hex')}`,
      name: `CN=Ferry node proxy CA ${randomBytes(4).toString('hex')}, O=Ferry`,
      notBefore: new Date(now.getTime() - DAY_MS),
      notAfter: new Date(now.getTime() + 20 * 365 * DAY_MS),
      keys,
      signingAlgorithm: SIGNING_ALGORITHM,
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey, false, x509Crypto),
      ],
    },
    x509Crypto,
  )
  const keyDer = Buffer.from(await crypto.subtle.exportKey('pkcs8', keys.privateKey))
  return { certificatePem: certificate.toString('pem'), keyPem: toPem('PRIVATE KEY', keyDer) }
}

function pemBody(pem: string): Buffer {
  return Buffer.from(pem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64')
}

function toPem(label: string, der: Buffer): string {
  const lines = der.toString('base64').match(/.{1,64}/g) ?? []
  return `-----BEGIN ${label}-----\n${lines.join('\n')}\n-----END ${label}-----\n`
}
