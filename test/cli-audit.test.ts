/**
 * `mcp-warden audit verify`: what an operator runs and reads — the OK line, the first broken
 * link of a tampered log, the exit codes, the key sources for checkpoint signatures, and clear
 * usage errors.
 */
import { createHash, createPublicKey, generateKeyPairSync } from 'node:crypto'
import { createServer } from 'node:http'
import { mkdirSync, mkdtempSync, rmSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { AuditLog } from '../lib/audit/log.js'
import { KeyRing } from '../lib/tokens/keys.js'
import { main } from '../lib/cli.js'

const made: string[] = []
const tmp = (): string => { const d = mkdtempSync(join(tmpdir(), 'mcpw-cli-audit-')); made.push(d); return d }
t.teardown(() => { for (const d of made) rmSync(d, { recursive: true, force: true }) })

async function run (...args: string[]): Promise<{ code: number, out: string, err: string }> {
  const out: string[] = []
  const err: string[] = []
  const code = await main(args, { out: l => { out.push(l) }, err: l => { err.push(l) } })
  return { code, out: out.join('\n'), err: err.join('\n') }
}

const dir = tmp()
const ring = new KeyRing(join(dir, 'keys'), 60)
const file = join(dir, 'audit.log')
const log = new AuditLog({ destination: file, replica: 'gw-1', checkpointEvery: 4, signer: () => ring.current() })
for (let i = 0; i < 10; i++) {
  log.write({ time: new Date(1_750_000_000_000 + i).toISOString(), requestId: `req-${i}`, agentId: 'bot', tool: 'database_query', outcome: i === 3 ? 'deny' : 'allow', reason: 'policy', status: i === 3 ? 403 : 200 })
}
t.before(async () => { await log.close() })

const kid = ring.current().kid
const publicPem = join(dir, 'gateway.pub.pem')
writeFileSync(publicPem, createPublicKey(ring.current().privateKey).export({ type: 'spki', format: 'pem' }))
const jwksFile = join(dir, 'jwks.json')
writeFileSync(jwksFile, JSON.stringify(ring.jwks()))

t.test('an untampered log: one OK line with records, seq range, last hash and checkpoints; exit 0', async t => {
  const r = await run('audit', 'verify', file)
  t.equal(r.code, 0)
  t.match(r.out, /^OK 14 records in 1 file; replica gw-1 seq 1-14 last [0-9a-f]{64}; 4 checkpoints unchecked\n {2}note: 4 checkpoints not checked/)
  t.equal(r.err, '')
  for (const keyArgs of [['--key', publicPem], ['--key', join(ring.dir, `${kid}.key.pem`)], ['--jwks', jwksFile], ['--keys-dir', ring.dir]]) {
    const checked = await run('audit', 'verify', file, ...keyArgs)
    t.equal(checked.code, 0, keyArgs.join(' '))
    t.match(checked.out, /^OK 14 records .*; 4 checkpoints verified$/m, `${keyArgs[0]!}: the signatures are checked`)
  }
  const json = await run('audit', 'verify', '--json', file, '--keys-dir', ring.dir)
  t.equal(json.code, 0)
  t.match(JSON.parse(json.out), { ok: true, records: 14, replicas: [{ replica: 'gw-1', firstSeq: 1, lastSeq: 14, chains: 1, anchoredAt: null }], checkpoints: { verified: 4, keysGiven: true }, break: null })
})

t.test('the JWKS from a URL (the gateway\'s /.well-known/jwks.json)', async t => {
  const server = createServer((req, res) => {
    if (req.url === '/.well-known/jwks.json') { res.setHeader('content-type', 'application/json'); res.end(JSON.stringify(ring.jwks())); return }
    res.statusCode = 404
    res.end()
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { server.close() })
  const base = `http://127.0.0.1:${(server.address() as { port: number }).port}`
  const r = await run('audit', 'verify', file, '--jwks', `${base}/.well-known/jwks.json`)
  t.equal(r.code, 0)
  t.match(r.out, /4 checkpoints verified/)
  const missing = await run('audit', 'verify', file, '--jwks', `${base}/nothing`)
  t.equal(missing.code, 2)
  t.match(missing.err, /cannot fetch http:\/\/127\.0\.0\.1:\d+\/nothing: HTTP 404/)
  server.close()
  const down = await run('audit', 'verify', file, '--jwks', `${base}/.well-known/jwks.json`)
  t.equal(down.code, 2)
  t.match(down.err, /cannot fetch http:\/\/127\.0\.0\.1:\d+\/\.well-known\/jwks\.json/)
})

t.test('a tampered log: the first broken link, file:line, replica, seq and what was done; exit 1', async t => {
  const lines = readFileSync(file, 'utf8').split('\n').filter(l => l !== '')
  const edited = join(tmp(), 'audit.log')
  writeFileSync(edited, lines.map(l => l.includes('"requestId":"req-3"') ? l.replace('"outcome":"deny"', '"outcome":"allow"') : l).join('\n') + '\n')
  const r = await run('audit', 'verify', edited)
  t.equal(r.code, 1)
  t.match(r.out, /^FAIL .*audit\.log:5: replica gw-1, seq 5: edited: replica gw-1's seq 5 was changed after it was written/)
  const json = await run('audit', 'verify', edited, '--json')
  t.equal(json.code, 1)
  t.match(JSON.parse(json.out), { ok: false, break: { line: 5, replica: 'gw-1', seq: 5, kind: 'edited' } })
  // A checkpoint forged with another key, under the gateway's kid.
  const other = new KeyRing(join(tmp(), 'keys'), 60)
  const forgedDir = tmp()
  const forged = join(forgedDir, 'audit.log')
  const flog = new AuditLog({ destination: forged, replica: 'gw-1', checkpointEvery: 4, signer: () => ({ kid, privateKey: other.current().privateKey }) })
  flog.write({ requestId: 'x' })
  await flog.close()
  const bad = await run('audit', 'verify', forged, '--keys-dir', ring.dir)
  t.equal(bad.code, 1)
  t.match(bad.out, /audit\.log:1: replica gw-1, seq 1: bad-signature: the checkpoint's signature \(key ".*"\) does not verify/)
  t.equal((await run('audit', 'verify', forged)).code, 0, 'without keys the checkpoint is not checked')
})

t.test('forged records after the close checkpoint, a forged chain-resume, and a line over the cap: FAIL, exit 1', async t => {
  const lines = readFileSync(file, 'utf8').split('\n').filter(l => l !== '')
  const sha = (s: string): string => createHash('sha256').update(s).digest('hex')
  const append = (fields: Record<string, unknown>): string[] => {
    const last = lines[lines.length - 1]!
    return [...lines, JSON.stringify({ replica: 'gw-1', seq: JSON.parse(last).seq + 1, prev: sha(last), time: new Date().toISOString(), ...fields })]
  }
  const forged = join(tmp(), 'audit.log')
  writeFileSync(forged, append({ requestId: 'evil', tool: 'database_drop', outcome: 'allow', status: 200 }).join('\n') + '\n')
  const afterClose = await run('audit', 'verify', forged, '--keys-dir', ring.dir)
  t.equal(afterClose.code, 1)
  t.match(afterClose.out, /^FAIL .*audit\.log:15: replica gw-1, seq 15: inserted: a record after replica gw-1's closing checkpoint \(.*audit\.log:14\) that no signed checkpoint follows/)
  writeFileSync(forged, append({ event: 'chain-resume', cutOff: { bytes: 1, sha256: sha('x') }, tool: 'database_drop', outcome: 'allow' }).join('\n') + '\n')
  const resume = await run('audit', 'verify', forged)
  t.equal(resume.code, 1)
  t.match(resume.out, /^FAIL .*audit\.log:15: replica gw-1, seq 15: inserted: a chain-resume record, but the line before it is not the cut-off line it names/)
  // A record longer than the cap given: too-long; under the default cap it verifies.
  const longDir = tmp()
  const long = join(longDir, 'audit.log')
  const llog = new AuditLog({ destination: long, replica: 'gw-1' })
  llog.write({ requestId: 'long', reason: 'r'.repeat(3000) })
  await llog.close()
  t.equal((await run('audit', 'verify', long)).code, 0)
  const capped = await run('audit', 'verify', long, '--max-line-bytes', '2048')
  t.equal(capped.code, 1)
  t.match(capped.out, /^FAIL .*audit\.log:1: replica gw-1, seq 1: too-long: a line of more than 2048 bytes: the gateway writes none that long/)
})

t.test('usage errors exit 2 with a message that says what to do', async t => {
  const notPem = join(dir, 'not.pem')
  writeFileSync(notPem, 'hello')
  const rsa = join(dir, 'rsa.pem')
  writeFileSync(rsa, generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey.export({ type: 'spki', format: 'pem' }))
  const badJson = join(dir, 'bad.json')
  writeFileSync(badJson, '{')
  const noList = join(dir, 'nolist.json')
  writeFileSync(noList, '{"kty":"OKP"}')
  const rsaJwks = join(dir, 'rsa-jwks.json')
  writeFileSync(rsaJwks, JSON.stringify({ keys: [{ kty: 'RSA', n: 'x', e: 'AQAB' }, { kty: 'OKP', crv: 'Ed25519', x: 5 }, null] }))
  const emptyDir = join(dir, 'empty')
  mkdirSync(emptyDir)
  const cases: Array<[string[], RegExp]> = [
    [['audit'], /a command is required/],
    [['audit', 'check', file], /unknown audit command "check"/],
    [['audit', 'verify'], /verify needs the audit files, oldest first/],
    [['audit', 'verify', join(dir, 'missing.log')], /cannot read .*missing\.log: ENOENT/],
    [['audit', 'verify', dir], /cannot read .*: EISDIR/],
    [['audit', 'verify', file, '--bogus'], /Unknown option '--bogus'/],
    [['audit', 'verify', file, '--key', join(dir, 'missing.pem')], /cannot read .*missing\.pem: ENOENT/],
    [['audit', 'verify', file, '--key', notPem], /not\.pem: not a PEM public or private key/],
    [['audit', 'verify', file, '--key', rsa], /rsa\.pem: not an Ed25519 key/],
    [['audit', 'verify', file, '--jwks', badJson], /bad\.json: not JSON/],
    [['audit', 'verify', file, '--jwks', noList], /nolist\.json: not a JWKS document/],
    [['audit', 'verify', file, '--jwks', rsaJwks], /rsa-jwks\.json: no Ed25519 key in this JWKS/],
    [['audit', 'verify', file, '--jwks', join(dir, 'missing.json')], /cannot read .*missing\.json: ENOENT/],
    [['audit', 'verify', file, '--keys-dir', emptyDir], /no <kid>\.key\.pem file/],
    [['audit', 'verify', file, '--keys-dir', join(dir, 'nope')], /cannot read the keys folder .*nope: ENOENT/],
    [['audit', 'verify', file, '--max-line-bytes', '12'], /--max-line-bytes: a whole number of bytes from 1024 to 268435456, not "12"/],
    [['audit', 'verify', file, '--max-line-bytes', 'lots'], /--max-line-bytes: a whole number of bytes from 1024 to 268435456, not "lots"/]
  ]
  for (const [args, message] of cases) {
    const r = await run(...args)
    t.equal(r.code, 2, args.join(' '))
    t.match(r.err, message, args.join(' '))
    t.equal(r.out, '', 'nothing on stdout')
  }
  const help = await run('audit', '--help')
  t.equal(help.code, 0)
  t.match(help.out, /^Usage: mcp-warden audit verify FILE/)
  t.match((await run('audit', 'verify', '--help')).out, /--keys-dir DIR[\s\S]*--max-line-bytes N {3}a longer line is a broken link \(too-long\); default 67108864 \(64 MiB\)/)
  t.match((await run('--help')).out, /audit {5}the tamper-evident audit log: verify/)
})
