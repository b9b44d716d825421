/**
 * The ephemeral-token signing keys: Ed25519, one PKCS#8 file per key (0600) in keysDir,
 * listed in keys.json. Replicas share the folder.
 *
 * Rotation adds a key that activates after a delay: it is published in the JWKS at once,
 * so verifiers have it before the first token it signs; the previous key stays published
 * until every token it signed has expired.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, type KeyObject, type JsonWebKey } from 'node:crypto'
import { chmodSync, existsSync, linkSync, mkdirSync, readFileSync, renameSync, statSync, unlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

interface KeyEntry {
  kid: string
  /** When the key starts signing (ISO time). */
  activates: string
}
interface KeysFile { keys: KeyEntry[] }

export interface SigningKey {
  readonly kid: string
  readonly privateKeyPem: string
  readonly privateKey: KeyObject
}

/** How long after the next key activates the previous one stays published. */
export function retentionSeconds (ttlSeconds: number): number {
  return ttlSeconds + 60
}

const FILE = 'keys.json'

function newKid (): string {
  return `${new Date().toISOString().slice(0, 10)}-${randomBytes(5).toString('hex')}`
}

function writeKey (dir: string, kid: string): void {
  const { privateKey } = generateKeyPairSync('ed25519')
  const file = join(dir, `${kid}.key.pem`)
  writeFileSync(file, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600, flag: 'wx' })
  chmodSync(file, 0o600)
}

function writeList (dir: string, list: KeysFile): void {
  const tmp = join(dir, `${FILE}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`)
  writeFileSync(tmp, JSON.stringify(list, null, 2) + '\n', { mode: 0o600 })
  renameSync(tmp, join(dir, FILE))
}

function readList (dir: string): KeysFile {
  const list = JSON.parse(readFileSync(join(dir, FILE), 'utf8')) as KeysFile
  if (!Array.isArray(list.keys) || list.keys.some(k => typeof k.kid !== 'string' || typeof k.activates !== 'string' || !/^[\w.-]+$/.test(k.kid))) {
    throw new Error(`${join(dir, FILE)} is not a valid key list`)
  }
  return list
}

/** Creates the folder and a first key when there is none; safe when replicas start together. */
export function ensureKeys (dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 })
  if (existsSync(join(dir, FILE))) return
  const kid = newKid()
  writeKey(dir, kid)
  const tmp = join(dir, `${FILE}.${process.pid}.first.tmp`)
  writeFileSync(tmp, JSON.stringify({ keys: [{ kid, activates: new Date(0).toISOString() }] }, null, 2) + '\n', { mode: 0o600 })
  try {
    linkSync(tmp, join(dir, FILE)) // fails with EEXIST when another process won the race
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
    unlinkSync(join(dir, `${kid}.key.pem`))
  } finally {
    unlinkSync(tmp)
  }
}

/**
 * Adds a new key that activates `activateInSeconds` from now, and drops keys whose
 * publication window has ended. Returns the new kid.
 */
export function rotateKeys (dir: string, ttlSeconds: number, activateInSeconds = 60, now = Date.now()): { kid: string, activates: string, removed: string[] } {
  ensureKeys(dir)
  const list = readList(dir)
  const kid = newKid()
  writeKey(dir, kid)
  const activates = new Date(now + activateInSeconds * 1000).toISOString()
  const keys = [...list.keys, { kid, activates }].sort((a, b) => Date.parse(a.activates) - Date.parse(b.activates))
  const keep: KeyEntry[] = []
  const removed: string[] = []
  keys.forEach((k, i) => {
    const next = keys[i + 1]
    // A key is needed while it signs, and for the retention after its successor activates.
    if (next === undefined || Date.parse(next.activates) + retentionSeconds(ttlSeconds) * 1000 > now) keep.push(k)
    else removed.push(k.kid)
  })
  writeList(dir, { keys: keep })
  for (const old of removed) {
    try { unlinkSync(join(dir, `${old}.key.pem`)) } catch { /* already gone */ }
  }
  return { kid, activates, removed }
}

/** The keys of a folder, as loaded: which signs now, which are published. */
export class KeyRing {
  #keys: Array<{ kid: string, activates: number, privateKey: KeyObject, privateKeyPem: string, jwk: JsonWebKey }> = []
  #stamp = ''
  readonly dir: string
  readonly ttlSeconds: number

  constructor (dir: string, ttlSeconds: number) {
    this.dir = dir
    this.ttlSeconds = ttlSeconds
    ensureKeys(dir)
    this.reload()
  }

  /** Re-reads keys.json when it changed; returns true when it did. Throws when the folder is unreadable. */
  reload (): boolean {
    const st = statSync(join(this.dir, FILE))
    // keys.json is replaced by rename, so a new inode means a new list.
    const stamp = `${st.ino}:${st.mtimeMs}:${st.size}`
    if (stamp === this.#stamp) return false
    const list = readList(this.dir)
    this.#keys = list.keys.map(k => {
      const privateKeyPem = readFileSync(join(this.dir, `${k.kid}.key.pem`), 'utf8')
      const privateKey = createPrivateKey(privateKeyPem)
      if (privateKey.asymmetricKeyType !== 'ed25519') throw new Error(`${k.kid}.key.pem is not an Ed25519 key`)
      return {
        kid: k.kid,
        activates: Date.parse(k.activates),
        privateKey,
        privateKeyPem,
        jwk: { ...createPublicKey(privateKey).export({ format: 'jwk' }), kid: k.kid, alg: 'EdDSA', use: 'sig' }
      }
    }).sort((a, b) => a.activates - b.activates)
    if (this.#keys.length === 0) throw new Error(`${join(this.dir, FILE)} lists no key`)
    this.#stamp = stamp
    return true
  }

  /** The keys as listed, oldest first. */
  list (): Array<{ kid: string, activates: string }> {
    return this.#keys.map(k => ({ kid: k.kid, activates: new Date(k.activates).toISOString() }))
  }

  /** The key that signs at `now`: the newest one already active. */
  current (now = Date.now()): SigningKey {
    let signing = this.#keys[0]!
    for (const k of this.#keys) if (k.activates <= now) signing = k
    return signing
  }

  /** The public keys a verifier needs at `now`: the current one, pending ones, and retired ones still in their window. */
  jwks (now = Date.now()): { keys: JsonWebKey[] } {
    const keys = this.#keys.filter((_k, i) => {
      const next = this.#keys[i + 1]
      return next === undefined || next.activates > now || next.activates + retentionSeconds(this.ttlSeconds) * 1000 > now
    })
    return { keys: keys.map(k => k.jwk) }
  }
}
