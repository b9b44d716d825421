/**
 * The public keys `mcp-warden audit verify` checks checkpoint signatures with: PEM files, JWKS
 * documents (a file, or the gateway's `/.well-known/jwks.json`), or a gateway's keys folder.
 */
import { createPublicKey, type KeyObject } from 'node:crypto'
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'

export interface CheckpointKeys {
  /** Keys with a kid: a checkpoint names the one that signed it. */
  readonly byKid: ReadonlyMap<string, readonly KeyObject[]>
  /** Keys without a kid (PEM files): tried for every checkpoint. */
  readonly any: readonly KeyObject[]
}

/** A key source that cannot be used: the message says which and why. */
export class KeySourceError extends Error {}

function ed25519 (key: KeyObject, source: string): KeyObject {
  if (key.asymmetricKeyType !== 'ed25519') throw new KeySourceError(`${source}: not an Ed25519 key (checkpoints are signed with the gateway's Ed25519 token key)`)
  return key
}

/** The public key of a PEM file (a public key, or a private key whose public half is taken). */
export function pemKey (file: string): KeyObject {
  let pem: string
  try { pem = readFileSync(file, 'utf8') } catch (err) { throw new KeySourceError(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`) }
  let key: KeyObject
  try { key = createPublicKey(pem) } catch { throw new KeySourceError(`${file}: not a PEM public or private key`) }
  return ed25519(key, file)
}

/** The Ed25519 keys of a JWKS document (other keys are left out). */
export function jwksKeys (text: string, source: string): Array<{ kid: string | undefined, key: KeyObject }> {
  let doc: unknown
  try { doc = JSON.parse(text) } catch { throw new KeySourceError(`${source}: not JSON`) }
  const keys = (doc as { keys?: unknown } | null)?.keys
  if (!Array.isArray(keys)) throw new KeySourceError(`${source}: not a JWKS document (no "keys" list)`)
  const out: Array<{ kid: string | undefined, key: KeyObject }> = []
  for (const jwk of keys as Array<Record<string, unknown>>) {
    if (typeof jwk !== 'object' || jwk === null || jwk.kty !== 'OKP' || jwk.crv !== 'Ed25519' || typeof jwk.x !== 'string') continue
    try {
      out.push({ kid: typeof jwk.kid === 'string' ? jwk.kid : undefined, key: createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: jwk.x }, format: 'jwk' }) })
    } catch { /* not a usable key: left out */ }
  }
  if (out.length === 0) throw new KeySourceError(`${source}: no Ed25519 key in this JWKS`)
  return out
}

/** Reads a JWKS from a file or an http(s) URL. */
export async function fetchJwks (source: string, timeoutMs = 10_000): Promise<Array<{ kid: string | undefined, key: KeyObject }>> {
  if (/^https?:\/\//i.test(source)) {
    let res: Response
    try {
      res = await fetch(source, { signal: AbortSignal.timeout(timeoutMs), headers: { accept: 'application/json' } })
    } catch (err) {
      throw new KeySourceError(`cannot fetch ${source}: ${(err as Error).message}`)
    }
    if (!res.ok) throw new KeySourceError(`cannot fetch ${source}: HTTP ${res.status}`)
    return jwksKeys(await res.text(), source)
  }
  let text: string
  try { text = readFileSync(source, 'utf8') } catch (err) { throw new KeySourceError(`cannot read ${source}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`) }
  return jwksKeys(text, source)
}

/** The keys of a gateway's keys folder (tokens.keysDir): every `<kid>.key.pem` in it. */
export function keysDirKeys (dir: string): Array<{ kid: string, key: KeyObject }> {
  let names: string[]
  try { names = readdirSync(dir) } catch (err) { throw new KeySourceError(`cannot read the keys folder ${dir}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`) }
  const out = names.filter(n => n.endsWith('.key.pem')).sort().map(n => ({ kid: n.slice(0, -'.key.pem'.length), key: pemKey(join(dir, n)) }))
  if (out.length === 0) throw new KeySourceError(`${dir}: no <kid>.key.pem file (is it the gateway's tokens.keysDir?)`)
  return out
}

/** Gathers the keys of every source given. */
export async function loadCheckpointKeys (sources: { pem?: readonly string[], jwks?: readonly string[], keysDirs?: readonly string[] }): Promise<CheckpointKeys> {
  const byKid = new Map<string, KeyObject[]>()
  const any: KeyObject[] = []
  const add = (kid: string | undefined, key: KeyObject): void => {
    if (kid === undefined) any.push(key)
    else byKid.set(kid, [...(byKid.get(kid) ?? []), key])
  }
  for (const file of sources.pem ?? []) any.push(pemKey(file))
  for (const source of sources.jwks ?? []) for (const k of await fetchJwks(source)) add(k.kid, k.key)
  for (const dir of sources.keysDirs ?? []) for (const k of keysDirKeys(dir)) add(k.kid, k.key)
  return { byKid, any }
}
