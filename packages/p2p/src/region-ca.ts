// @peculiar/x509 2 resolves its dependencies through tsyringe, which needs the Reflect metadata API.
import 'reflect-metadata'
import { createECDH, randomBytes, webcrypto } from 'node:crypto'
import * as x509 from '@peculiar/x509'
import { deriveRegionKey } from './region-secret.js'

/**
 * Trust between a region's blob transfer endpoints, rooted in the region secret.
 *
 * - The region CA's P-256 private scalar is derived from the secret (HKDF label
 *   `region-ca-p256/<n>`, the first `n` that yields a scalar in [1, order)), so every member derives
 *   the same CA key and no CA file has to be distributed. Its self-signed certificate has a fixed
 *   subject, serial and validity; members' copies differ only in their (randomised) ECDSA
 *   signatures, which no verifier looks at: a trust anchor is matched by subject and key.
 * - Each node makes a fresh leaf key at every start and has the CA sign a leaf certificate for
 *   both server and client authentication whose subject CN (and URI SAN `urn:ferry:peer:<id>`) is
 *   the node's libp2p peer id.
 * - Both sides of a transfer present their leaf and accept only leaves that chain to the region CA
 *   (mutual TLS 1.3). The client then checks that the server's CN is the peer id the DHT named as
 *   the provider, instead of a hostname: providers are reached by the IP addresses in their
 *   records, which a leaf made at start cannot list reliably (wildcard listeners, NAT'd host
 *   networks, addresses that change), while the peer id is what the provider record is about.
 *
 * Every member holds the CA key, so a member could mint a leaf for any peer id: the CN check keeps
 * honest nodes from confusing one another, while the CA keeps out everyone without the secret.
 */
export interface RegionCertificateAuthority {
  /** PEM of the CA certificate, the only trust anchor of transfer connections. */
  readonly certificatePem: string
  /** SHA-256 of the CA's public key, hex: equal on every member of a region. */
  readonly keyFingerprint: string
  issue(peerId: string, options?: { now?: Date }): Promise<NodeCertificate>
}

export interface NodeCertificate {
  certificatePem: string
  privateKeyPem: string
}

const P256_ORDER = BigInt('0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551')
const EC_ALGORITHM = { name: 'ECDSA', namedCurve: 'P-256' } as const
const SIGNING_ALGORITHM = { name: 'ECDSA', hash: 'SHA-256' } as const
const CA_NOT_BEFORE = new Date('2024-01-01T00:00:00Z')
const CA_NOT_AFTER = new Date('2124-01-01T00:00:00Z')
const LEAF_BACKDATE_MS = 60 * 60 * 1000
const LEAF_LIFETIME_MS = 10 * 365 * 24 * 60 * 60 * 1000

const crypto = webcrypto
// @peculiar/x509 is typed against the DOM's WebCrypto, Node's differs only in details it does not use.
const x509Crypto = webcrypto as unknown as Parameters<typeof x509.X509CertificateGenerator.create>[1]

export async function createRegionCertificateAuthority(secret: Uint8Array, region: string): Promise<RegionCertificateAuthority> {
  const scalar = deriveScalar(secret, region)
  const ecdh = createECDH('prime256v1')
  ecdh.setPrivateKey(scalar)
  const point = ecdh.getPublicKey()
  const publicJwk = {
    kty: 'EC',
    crv: 'P-256',
    x: point.subarray(1, 33).toString('base64url'),
    y: point.subarray(33, 65).toString('base64url'),
  }
  const privateKey = await crypto.subtle.importKey('jwk', { ...publicJwk, d: scalar.toString('base64url') }, EC_ALGORITHM, false, ['sign'])
  const publicKey = await crypto.subtle.importKey('jwk', publicJwk, EC_ALGORITHM, true, ['verify'])
  const certificate = await x509.X509CertificateGenerator.createSelfSigned(
    {
      serialNumber: '01',
      name: `CN=Ferry region ${region} CA, O=Ferry`,
      notBefore: CA_NOT_BEFORE,
      notAfter: CA_NOT_AFTER,
      keys: { privateKey, publicKey },
      signingAlgorithm: SIGNING_ALGORITHM,
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        await x509.SubjectKeyIdentifierExtension.create(publicKey, false, x509Crypto),
      ],
    },
    x509Crypto,
  )
  const keyFingerprint = Buffer.from(await certificate.publicKey.getThumbprint('SHA-256', x509Crypto)).toString('hex')
  return {
    certificatePem: certificate.toString('pem'),
    keyFingerprint,
    async issue(peerId: string, options: { now?: Date } = {}): Promise<NodeCertificate> {
      const now = (options.now ?? new Date()).getTime()
      const keys = await crypto.subtle.generateKey(EC_ALGORITHM, true, ['sign', 'verify'])
      const leaf = await x509.X509CertificateGenerator.create(
        {
          // Positive, non-zero, 16 bytes.
          serialNumber: `01${randomBytes(15).toString('hex')}`,
          subject: `CN=${peerId}, O=Ferry`,
          issuer: certificate.subject,
          notBefore: new Date(now - LEAF_BACKDATE_MS),
          notAfter: new Date(now + LEAF_LIFETIME_MS),
          publicKey: keys.publicKey,
          signingKey: privateKey,
          signingAlgorithm: SIGNING_ALGORITHM,
          extensions: [
            new x509.BasicConstraintsExtension(false, undefined, true),
            new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
            new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
            new x509.SubjectAlternativeNameExtension([{ type: 'url', value: `urn:ferry:peer:${peerId}` }]),
            await x509.AuthorityKeyIdentifierExtension.create(publicKey, false, x509Crypto),
          ],
        },
        x509Crypto,
      )
      const pkcs8 = Buffer.from(await crypto.subtle.exportKey('pkcs8', keys.privateKey))
      return { certificatePem: leaf.toString('pem'), privateKeyPem: toPem('PRIVATE KEY', pkcs8) }
    },
  }
}

function deriveScalar(secret: Uint8Array, region: string): Buffer {
  for (let attempt = 0; attempt < 16; attempt += 1) {
    const candidate = deriveRegionKey(secret, region, `region-ca-p256/${attempt}`)
    const value = BigInt(`0x${candidate.toString('hex')}`)
    if (value > 0n && value < P256_ORDER) return candidate
  }
  // Each attempt fails with probability below 2^-32.
  throw new Error('could not derive a P-256 scalar from the region secret')
}

function toPem(label: string, der: Buffer): string {
  const lines = der.toString('base64').match(/.{1,64}/g) ?? []
  return `-----BEGIN ${label}-----\n${lines.join('\n')}\n-----END ${label}-----\n`
}
