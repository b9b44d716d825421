/**
 * Development agent tokens: the demo issuer and `mcp-warden token` sign agent JWTs
 * with a private key so that a person can try the gateway without an identity provider.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, randomUUID, type KeyObject } from 'node:crypto'
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { createSigner } from 'fast-jwt'

export interface AgentTokenOptions {
  issuer: string
  audience: string | string[]
  agentId: string
  userId?: string
  roles?: string[]
  department?: string
  scope?: string
  /** Lifetime in seconds (default 3600). */
  ttlSeconds?: number
  /** A `kid` header, to match a JWKS entry. */
  kid?: string
  /** Extra claims; they win over the ones above. */
  claims?: Record<string, unknown>
}

/** The JWS algorithm that fits a private key. */
export function algorithmFor (key: KeyObject): 'RS256' | 'ES256' | 'EdDSA' {
  switch (key.asymmetricKeyType) {
    case 'rsa': return 'RS256'
    case 'ec': return 'ES256'
    case 'ed25519': return 'EdDSA'
    default: throw new Error(`unsupported key type ${String(key.asymmetricKeyType)}: use an RSA, P-256 or Ed25519 key`)
  }
}

/** Signs an agent JWT with a PEM private key. */
export function signAgentToken (privateKeyPem: string, o: AgentTokenOptions): string {
  const key = createPrivateKey(privateKeyPem)
  const now = Math.floor(Date.now() / 1000)
  const payload: Record<string, unknown> = {
    iss: o.issuer,
    sub: o.agentId,
    aud: o.audience,
    agentId: o.agentId,
    ...(o.userId !== undefined ? { userId: o.userId } : {}),
    ...(o.roles !== undefined && o.roles.length > 0 ? { roles: o.roles } : {}),
    ...(o.department !== undefined ? { department: o.department } : {}),
    ...(o.scope !== undefined ? { scope: o.scope } : {}),
    iat: now,
    nbf: now,
    exp: now + (o.ttlSeconds ?? 3600),
    jti: randomUUID(),
    ...o.claims
  }
  const sign = createSigner({ key: privateKeyPem, algorithm: algorithmFor(key), ...(o.kid !== undefined ? { kid: o.kid } : {}) })
  return sign(payload)
}

/** The demo issuer's key pair in `dir`, created (0600) on first use. */
export function loadOrCreateIssuerKey (dir: string): { privateKeyPem: string, publicKeyPem: string, publicKeyFile: string } {
  const priv = join(dir, 'demo-issuer.key.pem')
  const pub = join(dir, 'demo-issuer.pub.pem')
  if (!existsSync(priv) || !existsSync(pub)) {
    mkdirSync(dir, { recursive: true, mode: 0o700 })
    const { privateKey, publicKey } = generateKeyPairSync('ed25519')
    writeFileSync(priv, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 })
    chmodSync(priv, 0o600)
    writeFileSync(pub, publicKey.export({ type: 'spki', format: 'pem' }))
  }
  const privateKeyPem = readFileSync(priv, 'utf8')
  const publicKeyPem = createPublicKey(privateKeyPem).export({ type: 'spki', format: 'pem' }).toString()
  return { privateKeyPem, publicKeyPem, publicKeyFile: pub }
}
