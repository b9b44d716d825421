/**
 * The tamper-evident audit log (DESIGN §12), from the attacker's side: logs written by the sink
 * (lib/audit/log.ts) and by a real gateway, then edited the ways an attacker with write access
 * to the file would edit them; `verify` must name the first broken link, its line and what was
 * done, and must say OK for every untampered log (rotated, restarted, interleaved).
 */
import { execFile } from 'node:child_process'
import { createHash, generateKeyPairSync, randomUUID, sign, type KeyObject } from 'node:crypto'
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs'
import { promisify } from 'node:util'
import Fastify from 'fastify'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { AuditLog } from '../lib/audit/log.js'
import { GENESIS_PREV, checkpointPayload, type CheckpointAt } from '../lib/audit/chain.js'
import { readChainTail } from '../lib/audit/tail.js'
import { MAX_LINE_BYTES, MAX_LINE_BYTES_LIMIT, verifyAuditFiles, formatReport, type VerifyReport } from '../lib/audit/verify.js'
import { loadCheckpointKeys, type CheckpointKeys } from '../lib/audit/keys.js'
import { KeyRing } from '../lib/tokens/keys.js'
import { validateConfig } from '../lib/config.js'
import { buildGateway } from '../lib/gateway.js'
import auditPlugin from '../plugins/audit.js'
import { makeIssuer } from './fixtures/keys.js'
import { ALLOW_ALL, publicKeyFile } from './fixtures/gateway.js'
import { startRecordingUpstream } from './fixtures/upstream.js'

const sha = (s: string): string => createHash('sha256').update(s, 'utf8').digest('hex')
const made: string[] = []
const tmp = (): string => { const d = mkdtempSync(join(tmpdir(), 'mcpw-chain-')); made.push(d); return d }
t.teardown(() => { for (const d of made) rmSync(d, { recursive: true, force: true }) })
const lines = (file: string): string[] => readFileSync(file, 'utf8').split('\n').filter(l => l !== '')
const put = (file: string, ls: string[]): void => { writeFileSync(file, ls.map(l => l + '\n').join('')) }
const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }
/** Until the destination has opened the file (it opens asynchronously). */
async function opened (file: string): Promise<void> {
  for (let i = 0; i < 500 && !existsSync(file); i++) await sleep(5)
}

function record (i: number, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { time: new Date(1_750_000_000_000 + i * 1000).toISOString(), requestId: `req-${i}`, decisionId: null, agentId: 'agent-1', userId: null, server: 'db', httpMethod: 'POST', method: 'tools/call', rpcId: i, tool: 'database_query', outcome: 'allow', reason: 'permitted', policies: ['p'], policyVersion: 'v', status: 200, durationMs: 1.5, ...extra }
}

/** A line stream that keeps what it is given (the stdout case, as a log shipper collects it). */
function collector (): { stream: { write: (s: string) => boolean }, lines: () => string[] } {
  const chunks: string[] = []
  return { stream: { write (s: string) { chunks.push(s); return true } }, lines: () => chunks.join('').split('\n').filter(l => l !== '') }
}

/** The gateway's key folder, as the sink signs checkpoints with it. */
function keyring (): KeyRing {
  return new KeyRing(join(tmp(), 'keys'), 60)
}
async function keysOf (ring: KeyRing): Promise<CheckpointKeys> {
  return await loadCheckpointKeys({ keysDirs: [ring.dir] })
}

async function writeLog (file: string, n: number, opts: { replica?: string, every?: number, ring?: KeyRing, rotate?: { maxBytes: number, keep: number }, from?: number } = {}): Promise<void> {
  const ring = opts.ring
  const log = new AuditLog({
    destination: file,
    replica: opts.replica ?? 'gw-a',
    ...(opts.every !== undefined ? { checkpointEvery: opts.every } : {}),
    ...(ring !== undefined ? { signer: () => ring.current() } : {}),
    ...(opts.rotate !== undefined ? { rotate: opts.rotate } : {})
  })
  // With rotation, written over time as a gateway does (no rotation starts while the log closes).
  if (opts.rotate !== undefined) await opened(file)
  for (let i = 0; i < n; i++) {
    log.write(record((opts.from ?? 0) + i))
    if (opts.rotate !== undefined && i % 10 === 9) await sleep(1)
  }
  if (opts.rotate !== undefined) await sleep(50)
  await log.close()
}

/** Re-chains lines as an attacker who recomputes every hash would (without the gateway's key). */
function rechain (ls: string[], forgeKey?: { kid: string, privateKey: KeyObject }): string[] {
  let prev = GENESIS_PREV
  return ls.map((l, i) => {
    const r = JSON.parse(l) as Record<string, unknown>
    r.seq = i + 1
    r.prev = prev
    if (r.event === 'checkpoint' && forgeKey !== undefined) {
      r.kid = forgeKey.kid
      r.sig = sign(null, checkpointPayload({ replica: r.replica as string, seq: i + 1, prev, time: r.time as string, at: r.at as CheckpointAt, every: r.every as number }), forgeKey.privateKey).toString('base64url')
    }
    const { replica, seq, prev: p, ...rest } = r
    const line = JSON.stringify({ replica, seq, prev: p, ...rest })
    prev = sha(line)
    return line
  })
}

function fails (t: Test, report: VerifyReport, kind: string, where: string, msg: string): void {
  t.equal(report.ok, false, `${msg}: verify fails`)
  t.equal(report.break?.kind, kind, `${msg}: named ${kind} (${report.break?.message ?? 'no break'})`)
  t.equal(`${report.break?.file.split('/').pop()}:${report.break?.line}`, where, `${msg}: at ${where}`)
}

t.test('every line leads with replica, seq and prev; the genesis is seq 1 with 64 zeros; verify says OK', async t => {
  const file = join(tmp(), 'audit.log')
  await writeLog(file, 5)
  const ls = lines(file)
  t.equal(ls.length, 5)
  t.match(ls[0], /^\{"replica":"gw-a","seq":1,"prev":"0{64}","time":/, 'the first record of the chain')
  for (let i = 1; i < ls.length; i++) {
    const r = JSON.parse(ls[i]!)
    t.equal(r.seq, i + 1)
    t.equal(r.prev, sha(ls[i - 1]!), `prev of seq ${i + 1} is the SHA-256 of the previous line`)
    t.equal(r.requestId, `req-${i}`, 'the record is kept as it was')
  }
  const report = await verifyAuditFiles([file])
  t.ok(report.ok)
  t.same(report.replicas.map(r => [r.replica, r.firstSeq, r.lastSeq, r.lastHash]), [['gw-a', 1, 5, sha(ls[4]!)]])
  t.match(formatReport(report)[0], new RegExp(`^OK 5 records in 1 file; replica gw-a seq 1-5 last ${sha(ls[4]!)}; 0 checkpoints unchecked$`))
  t.match(formatReport(report).join('\n'), /removed from the very end of a chain leave no trace/, 'the limit is said')
})

t.test('the attacker edits the file: verify names the first broken link and what was done', async t => {
  const file = join(tmp(), 'audit.log')
  await writeLog(file, 10)
  const good = lines(file)
  const cases: Array<[string, (ls: string[]) => string[], string, string]> = [
    ['a field of one record edited', ls => { ls[3] = ls[3]!.replace('"outcome":"allow"', '"outcome":"deny"'); return ls }, 'edited', 'audit.log:4'],
    ['the last but one record edited', ls => { ls[8] = ls[8]!.replace('agent-1', 'agent-2'); return ls }, 'edited', 'audit.log:9'],
    ['one record deleted', ls => { ls.splice(4, 1); return ls }, 'deleted', 'audit.log:5'],
    ['three records deleted', ls => { ls.splice(4, 3); return ls }, 'deleted', 'audit.log:5'],
    ['two records swapped', ls => { [ls[4], ls[5]] = [ls[5]!, ls[4]!]; return ls }, 'reordered', 'audit.log:5'],
    ['a record moved to the end', ls => { const [m] = ls.splice(2, 1); ls.push(m!); return ls }, 'reordered', 'audit.log:3'],
    ['the last line cut in half', ls => { ls[9] = ls[9]!.slice(0, 60); return ls }, 'cut-off', 'audit.log:10'],
    ['a line in the middle cut in half', ls => { ls[5] = ls[5]!.slice(0, 100); return ls }, 'cut-off', 'audit.log:6'],
    ['a forged record that links to the one before it', ls => {
      const forged = JSON.stringify({ replica: 'gw-a', seq: 6, prev: sha(ls[4]!), ...record(99, { outcome: 'allow', tool: 'payment_process' }) })
      ls.splice(5, 0, forged); return ls
    }, 'inserted', 'audit.log:6'],
    ['a forged record after the genuine one with its seq', ls => {
      const forged = JSON.stringify({ replica: 'gw-a', seq: 6, prev: sha(ls[4]!), ...record(99) })
      ls.splice(6, 0, forged); return ls
    }, 'inserted', 'audit.log:7'],
    ['a forged record with a made-up prev', ls => {
      ls.splice(5, 0, JSON.stringify({ replica: 'gw-a', seq: 6, prev: 'ab'.repeat(32), ...record(99) })); return ls
    }, 'inserted', 'audit.log:6'],
    ['a record copied further down', ls => { ls.splice(7, 0, ls[2]!); return ls }, 'duplicate', 'audit.log:8'],
    ['a record repeated at once', ls => { ls.splice(3, 0, ls[2]!); return ls }, 'duplicate', 'audit.log:4'],
    ['a record without chain fields added', ls => { ls.splice(5, 0, JSON.stringify(record(99))); return ls }, 'inserted', 'audit.log:6'],
    ['a seq made a string', ls => { ls[5] = ls[5]!.replace('"seq":6', '"seq":"6"'); return ls }, 'malformed', 'audit.log:6'],
    ['a prev made upper case', ls => { ls[5] = ls[5]!.replace(/"prev":"([0-9a-f]{64})"/, (_m, h: string) => `"prev":"${h.toUpperCase()}"`); return ls }, 'malformed', 'audit.log:6'],
    ['the head replaced by a new genesis', ls => {
      const r = JSON.parse(ls[3]!); r.seq = 1; r.prev = GENESIS_PREV
      return [JSON.stringify(r), ...ls.slice(4)]
    }, 'deleted', 'audit.log:2'],
    ['a record that claims to start a chain mid-way', ls => { ls[5] = ls[5]!.replace(/"prev":"[0-9a-f]{64}"/, `"prev":"${GENESIS_PREV}"`); return ls }, 'forged-genesis', 'audit.log:6'],
    ['the genesis given another prev', ls => { ls[0] = ls[0]!.replace(GENESIS_PREV, '1'.repeat(64)); return ls }, 'forged-genesis', 'audit.log:1']
  ]
  for (const [name, tamper, kind, where] of cases) {
    put(file, tamper([...good]))
    fails(t, await verifyAuditFiles([file]), kind, where, name)
  }
  // The message says where and what, so that a person can act on it.
  put(file, cases[0]![1]([...good]))
  const [line] = formatReport(await verifyAuditFiles([file]))
  t.match(line, /^FAIL .*audit\.log:4: replica gw-a, seq 4: edited: replica gw-a's seq 4 was changed after it was written .* seq 5 \(.*audit\.log:5\)/)
  put(file, cases[2]![1]([...good]))
  t.match(formatReport(await verifyAuditFiles([file]))[0], /deleted: seq 5 of replica gw-a is missing: the record before this one is seq 4 at .*audit\.log:4/)
  put(file, cases[3]![1]([...good]))
  t.match(formatReport(await verifyAuditFiles([file]))[0], /seq 5–7 of replica gw-a \(3 records\) are missing/)
  put(file, cases[6]![1]([...good]))
  t.match(formatReport(await verifyAuditFiles([file]))[0], /audit\.log:10: replica gw-a, seq 10: cut-off: the last line is cut off: 60 bytes that are not a complete record \(it starts like replica gw-a's seq 10\)/)
  put(file, [...good.slice(0, 9), '{"garbage'])
  t.match(formatReport(await verifyAuditFiles([file]))[0], /audit\.log:10: replica \?, seq \?: cut-off: the last line is cut off: 9 bytes/)
  // Records removed from the start of the oldest file: it reads as a file that starts mid-chain, and verify says so.
  put(file, good.slice(2))
  const headless = await verifyAuditFiles([file])
  t.ok(headless.ok)
  t.match(formatReport(headless).join('\n'), /note: replica gw-a starts mid-chain at .*audit\.log:1 \(seq 3\)/)
  // Untampered again: OK.
  put(file, good)
  t.ok((await verifyAuditFiles([file])).ok)
})

t.test('checkpoints: signed with the gateway key at the start, every N records and at close; forgeries fail', async t => {
  const ring = keyring()
  const keys = await keysOf(ring)
  const file = join(tmp(), 'audit.log')
  await writeLog(file, 7, { every: 3, ring })
  const good = lines(file)
  const events = good.map(l => JSON.parse(l) as Record<string, unknown>).map(r => r.event === 'checkpoint' ? `cp:${String(r.at)}` : 'r')
  t.same(events, ['cp:start', 'r', 'r', 'r', 'cp:interval', 'r', 'r', 'r', 'cp:interval', 'r', 'cp:close'])
  const first = JSON.parse(good[0]!)
  t.match(first, { replica: 'gw-a', seq: 1, prev: GENESIS_PREV, event: 'checkpoint', every: 3, kid: ring.current().kid, sig: /^[\w-]{86}$/ })
  t.notOk(good.join('\n').includes(ring.current().privateKeyPem.split('\n')[1]!), 'no key material in the log')

  const ok = await verifyAuditFiles([file], { keys })
  t.ok(ok.ok, ok.break?.message ?? 'OK')
  t.equal(ok.checkpoints.verified, 4)
  t.match(formatReport(ok)[0], /; 4 checkpoints verified$/)
  const unchecked = await verifyAuditFiles([file])
  t.ok(unchecked.ok)
  t.match(formatReport(unchecked).join('\n'), /4 checkpoints unchecked[\s\S]*note: 4 checkpoints not checked: give --key, --jwks or --keys-dir/)

  const attacker = generateKeyPairSync('ed25519')
  // One checkpoint re-signed with another key under the gateway's kid.
  const forged = [...good]
  const cp = JSON.parse(forged[4]!)
  cp.sig = sign(null, checkpointPayload({ replica: cp.replica, seq: cp.seq, prev: cp.prev, time: cp.time, at: cp.at, every: cp.every }), attacker.privateKey).toString('base64url')
  forged[4] = JSON.stringify(cp)
  put(file, forged)
  fails(t, await verifyAuditFiles([file], { keys }), 'bad-signature', 'audit.log:5', 'a checkpoint signed with the wrong key')
  // The whole chain rewritten (a record dropped) and every checkpoint re-signed by the attacker.
  put(file, rechain(good.filter((_l, i) => i !== 2), { kid: ring.current().kid, privateKey: attacker.privateKey }))
  fails(t, await verifyAuditFiles([file], { keys }), 'bad-signature', 'audit.log:1', 'a rewritten chain re-signed under the gateway\'s kid')
  put(file, rechain(good.filter((_l, i) => i !== 2), { kid: 'attacker-key', privateKey: attacker.privateKey }))
  fails(t, await verifyAuditFiles([file], { keys }), 'unknown-key', 'audit.log:1', 'a rewritten chain signed with a key of its own')
  // The whole head replaced by a new chain without checkpoints: consistent, but not the gateway's.
  const rewritten = rechain(good.filter(l => !l.includes('"event":"checkpoint"')).slice(2))
  put(file, rewritten)
  t.ok((await verifyAuditFiles([file])).ok, 'without keys a rewritten chain cannot be told from the gateway\'s (docs/audit.md says so)')
  fails(t, await verifyAuditFiles([file], { keys }), 'no-checkpoint', 'audit.log:1', 'a new genesis without a signed checkpoint')
  // Checkpoints removed and the chain recomputed: the interval the checkpoint before promised is not kept.
  put(file, rechain([good[0]!, ...good.slice(1).filter(l => !l.includes('"event":"checkpoint"'))]))
  fails(t, await verifyAuditFiles([file], { keys }), 'missing-checkpoint', 'audit.log:5', 'every checkpoint but the first removed, the chain recomputed')
  const kept = [...good.slice(0, 5), ...rechainFrom(good.slice(0, 5), good.slice(5).filter(l => !l.includes('"event":"checkpoint"')))]
  put(file, kept)
  fails(t, await verifyAuditFiles([file], { keys }), 'missing-checkpoint', 'audit.log:9', 'later checkpoints removed, the rest re-chained')
  // A checkpoint whose fields were tampered with.
  put(file, rechainFrom([], [good[0]!.replace('"every":3', '"every":"3"')]))
  fails(t, await verifyAuditFiles([file], { keys }), 'bad-signature', 'audit.log:1', 'a checkpoint with malformed fields')
  // A key source without the signing kid.
  const other = generateKeyPairSync('ed25519')
  const jwks = join(tmp(), 'jwks.json')
  writeFileSync(jwks, JSON.stringify({ keys: [{ ...other.publicKey.export({ format: 'jwk' }), kid: 'other', alg: 'EdDSA' }] }))
  put(file, good)
  fails(t, await verifyAuditFiles([file], { keys: await loadCheckpointKeys({ jwks: [jwks] }) }), 'unknown-key', 'audit.log:1', 'a JWKS without the checkpoint\'s key')
  // Only part of a rotated log, without any checkpoint in it, given with keys.
  put(file, good.slice(5, 8))
  fails(t, await verifyAuditFiles([file], { keys }), 'no-checkpoint', 'audit.log:3', 'a part of the log without a checkpoint')
})

/** Lines after `head`, re-chained to continue from its last line. */
function rechainFrom (head: string[], rest: string[]): string[] {
  let prev = head.length > 0 ? sha(head[head.length - 1]!) : GENESIS_PREV
  let seq = head.length > 0 ? JSON.parse(head[head.length - 1]!).seq as number : 0
  return rest.map(l => {
    const { replica, seq: _s, prev: _p, ...r } = JSON.parse(l) as Record<string, unknown>
    const line = JSON.stringify({ replica, seq: ++seq, prev, ...r })
    prev = sha(line)
    return line
  })
}

t.test('a restart continues the chain from the tail of the file', async t => {
  const ring = keyring()
  const file = join(tmp(), 'audit.log')
  await writeLog(file, 3)
  await writeLog(file, 2, { from: 3 })
  let ls = lines(file)
  t.same(ls.map(l => JSON.parse(l).seq), [1, 2, 3, 4, 5], 'seq goes on')
  t.equal(JSON.parse(ls[3]!).prev, sha(ls[2]!), 'prev links to the record before the restart')
  let report = await verifyAuditFiles([file])
  t.ok(report.ok)
  t.equal(report.replicas[0]!.chains, 1, 'one chain')

  // With checkpoints: a restart is marked by a signed checkpoint (at: resume).
  await writeLog(file, 1, { every: 10, ring })
  ls = lines(file)
  t.match(JSON.parse(ls[5]!), { seq: 6, event: 'checkpoint', at: 'resume' })

  // A crash cut the last record: it keeps a line of its own, and the next record says so.
  appendFileSync(file, ls[6]!.replace('"seq":7', '"seq":9').slice(0, 80))
  await writeLog(file, 1, { from: 50 })
  ls = lines(file)
  t.equal(ls[8]!.length, 80, 'the cut-off bytes are not glued to the next record')
  const resume = JSON.parse(ls[9]!)
  t.match(resume, { seq: 9, prev: sha(ls[7]!), event: 'chain-resume', cutOff: { bytes: 80, sha256: sha(ls[8]!) } })
  t.equal(JSON.parse(ls[10]!).seq, 10)
  report = await verifyAuditFiles([file])
  t.ok(report.ok, report.break?.message ?? 'OK')
  t.match(formatReport(report).join('\n'), /audit\.log:9 is a record cut off when the gateway stopped while writing it \(80 bytes\); the chain-resume record at .*audit\.log:10 notes it/)
  // An attacker who cuts a record in the middle and adds a chain-resume for it: the chain breaks after it.
  const mid = [...ls.slice(0, 2), ls[2]!.slice(0, 50), JSON.stringify({ replica: 'gw-a', seq: 3, prev: sha(ls[1]!), event: 'chain-resume', cutOff: { bytes: 50, sha256: sha(ls[2]!.slice(0, 50)) } }), ...ls.slice(3)]
  put(file, mid)
  fails(t, await verifyAuditFiles([file]), 'edited', 'audit.log:4', 'a made-up chain-resume')

  // A crash while a checkpoint was written: the restart's chain-resume and checkpoint keep the interval.
  const file3 = join(tmp(), 'audit.log')
  await writeLog(file3, 3, { every: 3, ring })
  const withCheckpoint = lines(file3)
  t.match(JSON.parse(withCheckpoint[4]!), { event: 'checkpoint', at: 'interval' })
  writeFileSync(file3, withCheckpoint.slice(0, 4).map(l => l + '\n').join('') + withCheckpoint[4]!.slice(0, 90))
  await writeLog(file3, 1, { every: 3, ring })
  t.same(lines(file3).map(l => /"event":"([a-z-]+)"(?:,"at":"([a-z]+)")?/.exec(l)?.slice(1).filter(Boolean).join(':') ?? (l.length === 90 ? 'cut' : 'r')),
    ['checkpoint:start', 'r', 'r', 'r', 'cut', 'chain-resume', 'checkpoint:resume', 'r', 'checkpoint:close'])
  const resumed = await verifyAuditFiles([file3], { keys: await keysOf(ring) })
  t.ok(resumed.ok, resumed.break?.message ?? 'OK')

  // A complete last record without its newline: terminated, and the chain goes on from it.
  const file2 = join(tmp(), 'audit.log')
  await writeLog(file2, 2)
  writeFileSync(file2, readFileSync(file2, 'utf8').trimEnd())
  await writeLog(file2, 1)
  t.same(lines(file2).map(l => JSON.parse(l).seq), [1, 2, 3])
  t.ok((await verifyAuditFiles([file2])).ok)
})

t.test('the tail is read from the end only, and only this replica\'s records count', async t => {
  const dir = tmp()
  const file = join(dir, 'audit.log')
  await writeLog(file, 2, { replica: 'gw-a' })
  const a = lines(file)
  // Another replica's lines after ours (a shared file): skipped back over.
  await writeLog(file, 3, { replica: 'gw-b' })
  t.same(readChainTail(file, 'gw-a'), { size: readFileSync(file).length, head: { seq: 2, hash: sha(a[1]!) }, unterminated: false, cutOff: null })
  // Past the bound, nothing is found: a new chain, not a read of the whole file.
  t.equal(readChainTail(file, 'gw-a', 100)?.head, null)
  t.equal(readChainTail(join(dir, 'missing.log'), 'gw-a'), null)
  writeFileSync(join(dir, 'empty.log'), '')
  t.equal(readChainTail(join(dir, 'empty.log'), 'gw-a'), null)
  writeFileSync(join(dir, 'blank.log'), '\n\n')
  t.same(readChainTail(join(dir, 'blank.log'), 'gw-a'), { size: 2, head: null, unterminated: false, cutOff: null })
  writeFileSync(join(dir, 'fragment.log'), '{"replica":"gw-a","se')
  t.match(readChainTail(join(dir, 'fragment.log'), 'gw-a'), { head: null, unterminated: true, cutOff: { bytes: 21 } })
  // A long file: the record is found across chunk boundaries.
  const long = join(dir, 'long.log')
  const log = new AuditLog({ destination: long, replica: 'gw-a' })
  for (let i = 0; i < 2000; i++) log.write(record(i, { reason: 'x'.repeat(200) }))
  await log.close()
  const ll = lines(long)
  t.same(readChainTail(long, 'gw-a')?.head, { seq: 2000, hash: sha(ll[1999]!) })
  t.throws(() => readChainTail(dir, 'gw-a'), /is a folder, not a file/, 'a folder is not an audit file')
  t.equal(readChainTail('/dev/null', 'gw-a'), null, 'a device (like /dev/stdout) has no tail to read')
})

t.test('stdout: each start is a new chain; verify says so, and with keys a forged new chain fails', async t => {
  const ring = keyring()
  const keys = await keysOf(ring)
  const out = collector()
  for (let run = 0; run < 2; run++) {
    const log = new AuditLog({ destination: 'stdout', stream: out.stream, replica: 'gw-a', checkpointEvery: 5, signer: () => ring.current() })
    for (let i = 0; i < 3; i++) log.write(record(i))
    await log.close()
    await new Promise(resolve => setTimeout(resolve, 5))
  }
  const file = join(tmp(), 'shipped.log')
  const ls = out.lines()
  put(file, ls)
  const report = await verifyAuditFiles([file], { keys })
  t.ok(report.ok, report.break?.message ?? 'OK')
  t.equal(report.replicas[0]!.chains, 2)
  t.match(formatReport(report).join('\n'), /replica gw-a starts a new chain at .*shipped\.log:6, after seq 5/)
  // The tail cut and a made-up new chain appended: it has no signed checkpoint.
  const fake = rechain(ls.slice(6).filter(l => !l.includes('checkpoint')))
  put(file, [...ls.slice(0, 5), ...fake])
  fails(t, await verifyAuditFiles([file], { keys }), 'no-checkpoint', 'shipped.log:6', 'a forged new chain')
  t.ok((await verifyAuditFiles([file])).ok, 'without keys a new chain is only noted')
  // The gateway's own chain start replayed to front a forged chain.
  put(file, [...ls, ls[0]!])
  fails(t, await verifyAuditFiles([file], { keys }), 'duplicate', 'shipped.log:11', 'a replayed genesis checkpoint')
})

t.test('replicas interleaved in one file (log shipping) verify per replica', async t => {
  const a = collector()
  const b = collector()
  const la = new AuditLog({ destination: 'stdout', stream: a.stream, replica: 'gw-a' })
  const lb = new AuditLog({ destination: 'stdout', stream: b.stream, replica: 'gw-b' })
  for (let i = 0; i < 20; i++) { la.write(record(i)); if (i % 3 === 0) lb.write(record(100 + i)) }
  await la.close()
  await lb.close()
  const merged: string[] = []
  const [as, bs] = [a.lines(), b.lines()]
  while (as.length > 0 || bs.length > 0) merged.push((bs.length > 0 && (as.length === 0 || merged.length % 4 === 1) ? bs : as).shift()!)
  const file = join(tmp(), 'merged.log')
  put(file, merged)
  const report = await verifyAuditFiles([file])
  t.ok(report.ok, report.break?.message ?? 'OK')
  t.same(report.replicas.map(r => [r.replica, r.firstSeq, r.lastSeq]), [['gw-a', 1, 20], ['gw-b', 1, 7]])
  // A gw-b record deleted: the break names gw-b.
  const i = merged.findIndex(l => l.includes('"replica":"gw-b","seq":4,'))
  put(file, merged.filter((_l, j) => j !== i))
  const broken = await verifyAuditFiles([file])
  t.match(broken.break, { kind: 'deleted', replica: 'gw-b', seq: 5 })
})

t.test('rotation by size: nothing lost or reordered under concurrent writes; the chain runs across files', async t => {
  const dir = tmp()
  const file = join(dir, 'audit.log')
  const ring = keyring()
  const log = new AuditLog({ destination: file, replica: 'gw-a', rotate: { maxBytes: 16 * 1024, keep: 1000 }, checkpointEvery: 250, signer: () => ring.current() })
  let n = 0
  await opened(file)
  // Four writers, each pausing between bursts, so that rotations happen while writes are in flight.
  await Promise.all([0, 1, 2, 3].map(async w => {
    for (let burst = 0; burst < 40; burst++) {
      for (let i = 0; i < 25; i++) log.write(record(n++, { agentId: `writer-${w}` }))
      await sleep(burst % 2 === 0 ? 1 : 0)
    }
  }))
  await sleep(50)
  await log.close()
  const rotated = readdirSync(dir).filter(f => /^audit\.log\.\d+$/.test(f)).map(f => Number(f.split('.').pop())).sort((x, y) => y - x)
  t.ok(rotated.length >= 3, `the file was rotated while written (${rotated.length} times)`)
  const files = [...rotated.map(i => `${file}.${i}`), file]
  const all = files.flatMap(lines)
  const records = all.map(l => JSON.parse(l) as Record<string, unknown>)
  t.same(records.map(r => r.seq), records.map((_r, i) => i + 1), 'every seq once, in order, across the files')
  t.same(records.filter(r => r.event !== 'checkpoint').map(r => r.requestId), Array.from({ length: 4000 }, (_v, i) => `req-${i}`), 'every record written, in write order')
  for (let i = 1; i < files.length; i++) {
    const previous = lines(files[i - 1]!)
    t.equal(JSON.parse(lines(files[i]!)[0]!).prev, sha(previous[previous.length - 1]!), `${files[i]!.split('/').pop()} starts where the file before ended`)
  }
  for (const f of files.slice(0, -1)) t.ok(readFileSync(f).length >= 16 * 1024, 'a rotated file reached maxBytes')
  const report = await verifyAuditFiles(files, { keys: await keysOf(ring) })
  t.ok(report.ok, report.break?.message ?? 'OK')
  t.equal(report.records, all.length)
  // One rotated file alone: accepted from its first record's prev, and said so.
  const alone = await verifyAuditFiles([files[1]!])
  t.ok(alone.ok)
  t.match(formatReport(alone).join('\n'), /replica gw-a starts mid-chain at .*audit\.log\.\d+:1 \(seq \d+\): its prev [0-9a-f]{12}… is taken as the anchor/)
  // A rotated file missing from the middle, or the files out of order.
  const gap = await verifyAuditFiles([files[0]!, files[2]!])
  t.match(gap.break, { kind: 'deleted', line: 1, message: /is a rotated file missing between/ })
  const backwards = await verifyAuditFiles([files[2]!, files[1]!])
  t.match(backwards.break, { kind: 'reordered', line: 1, message: /not given oldest first/ })
})

t.test('rotation keeps `keep` files, and a restart after a rotation continues from the rotated file', async t => {
  const dir = tmp()
  const file = join(dir, 'audit.log')
  await writeLog(file, 300, { rotate: { maxBytes: 4096, keep: 2 } })
  t.same(readdirSync(dir).sort(), ['audit.log', 'audit.log.1', 'audit.log.2'])
  const report = await verifyAuditFiles([`${file}.2`, `${file}.1`, file])
  t.ok(report.ok)
  t.equal(report.replicas[0]!.lastSeq, 300)
  t.not(report.replicas[0]!.anchoredAt, null, 'the oldest kept file starts mid-chain')
  // Rotated (here, or by logrotate) and the gateway stopped before writing again.
  renameSync(`${file}.1`, `${file}.2`)
  renameSync(file, `${file}.1`)
  await writeLog(file, 1, { from: 300 })
  t.equal(JSON.parse(lines(file)[0]!).seq, 301)
  t.ok((await verifyAuditFiles([`${file}.1`, file])).ok)
})

t.test('external rotation: reopen() moves the writing to a new file; nothing lost, nothing out of order', async t => {
  const dir = tmp()
  const file = join(dir, 'audit.log')
  const log = new AuditLog({ destination: file, replica: 'gw-a' })
  for (let i = 0; i < 250; i++) log.write(record(i))
  await opened(file)
  for (let i = 250; i < 500; i++) log.write(record(i))
  renameSync(file, `${file}.1`) // logrotate's move, while writes are still in flight
  for (let i = 500; i < 1000; i++) log.write(record(i))
  log.reopen()
  for (let i = 1000; i < 1500; i++) log.write(record(i))
  await new Promise(resolve => setTimeout(resolve, 20))
  log.reopen() // a SIGHUP without a move: the same file, appended to
  for (let i = 1500; i < 1600; i++) log.write(record(i))
  await log.close()
  t.ok(existsSync(file))
  const all = [...lines(`${file}.1`), ...lines(file)].map(l => JSON.parse(l) as Record<string, unknown>)
  t.same(all.map(r => r.requestId), Array.from({ length: 1600 }, (_v, i) => `req-${i}`))
  t.ok((await verifyAuditFiles([`${file}.1`, file])).ok)
  // Written after close (a request that ended while the gateway stopped): still on the chain.
  log.write(record(2000))
  t.equal(JSON.parse(lines(file).pop()!).seq, 1601)
  t.ok((await verifyAuditFiles([`${file}.1`, file])).ok)
})

t.test('a real gateway: chained records with checkpoints, continued across a restart and a SIGHUP reopen, verified with its JWKS', async t => {
  const issuer = makeIssuer('EdDSA')
  const up = await startRecordingUpstream()
  t.teardown(async () => { await up.close() })
  const dir = tmp()
  const file = join(dir, 'audit.log')
  const config = validateConfig({
    publicUrl: 'http://gateway.test:8080',
    identity: { issuer: issuer.issuer, publicKeyFile: publicKeyFile(issuer), algorithms: ['EdDSA'] },
    authorization: ALLOW_ALL,
    tokens: { keysDir: join(dir, 'keys') },
    upstreams: { echo: { url: up.url } },
    audit: { destination: file, replica: 'gw-test', checkpoint: { every: 2 } }
  })
  const token = issuer.sign({ aud: 'http://gateway.test:8080/servers/echo/mcp' })
  const calls = async (app: Awaited<ReturnType<typeof buildGateway>>, n: number): Promise<void> => {
    const url = `http://127.0.0.1:${(app.server.address() as { port: number }).port}/servers/echo/mcp`
    for (let i = 0; i < n; i++) {
      const res = await request(url, {
        method: 'POST',
        headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream', ...(i % 2 === 0 ? { authorization: `Bearer ${token}` } : {}) },
        body: JSON.stringify({ jsonrpc: '2.0', id: i, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'a', version: '1' } } })
      })
      await res.body.dump()
    }
  }
  let app = await buildGateway(config, { logger: false })
  await app.listen({ port: 0, host: '127.0.0.1' })
  await calls(app, 3)
  const jwksUrl = `http://127.0.0.1:${(app.server.address() as { port: number }).port}/.well-known/jwks.json`
  const keys = await loadCheckpointKeys({ jwks: [jwksUrl] })
  await app.close()
  app = await buildGateway(config, { logger: false })
  await app.listen({ port: 0, host: '127.0.0.1' })
  await calls(app, 2)
  await new Promise(resolve => setTimeout(resolve, 50))
  renameSync(file, `${file}.1`)
  process.emit('SIGHUP')
  await calls(app, 2)
  await app.close()
  const all = [...lines(`${file}.1`), ...lines(file)].map(l => JSON.parse(l) as Record<string, unknown>)
  t.same(all.map(r => r.seq), all.map((_r, i) => i + 1), 'one chain across the restart and the reopened file')
  t.same(all.filter(r => r.event === undefined).map(r => r.status), [200, 401, 200, 200, 401, 200, 401], 'every call audited, in order')
  t.same(all.filter(r => r.event === 'checkpoint').map(r => r.at), ['start', 'interval', 'close', 'resume', 'interval', 'interval'])
  t.ok(all.every(r => r.replica === 'gw-test'))
  const report = await verifyAuditFiles([`${file}.1`, file], { keys })
  t.ok(report.ok, report.break?.message ?? 'OK')
  t.equal(report.checkpoints.verified, 6)
  // The attacker turns a refusal into an allow.
  const edited = lines(`${file}.1`)
  const i = edited.findIndex(l => l.includes('"status":401'))
  edited[i] = edited[i]!.replace('"outcome":"deny"', '"outcome":"allow"')
  put(`${file}.1`, edited)
  fails(t, await verifyAuditFiles([`${file}.1`, file], { keys }), 'edited', `audit.log.1:${i + 1}`, 'a refusal turned into an allow in a real gateway\'s log')
})

t.test('stdout for real: the chain on the process\'s stdout, and a record after close still goes out on it', async t => {
  const fixture = new URL('./fixtures/audit-stdout.ts', import.meta.url).pathname
  const { stdout } = await promisify(execFile)(process.execPath, [...process.execArgv, fixture, 'gw-out'])
  const file = join(tmp(), 'shipped.log')
  writeFileSync(file, stdout)
  t.same(lines(file).map(l => [JSON.parse(l).seq, JSON.parse(l).rpcId]), [[1, 0], [2, 1], [3, 2], [4, 'after-close']])
  const report = await verifyAuditFiles([file])
  t.ok(report.ok, report.break?.message ?? 'OK')
  t.match(report.replicas, [{ replica: 'gw-out', chains: 1, lastSeq: 4 }])
})

t.test('the audit plugin alone: checkpoints signed with tokens.keysDir; a keys folder or destination it cannot use refuses the boot', async t => {
  const issuer = makeIssuer('EdDSA')
  const dir = tmp()
  const base = {
    publicUrl: 'http://gateway.test:8080',
    identity: { issuer: issuer.issuer, publicKeyFile: publicKeyFile(issuer), algorithms: ['EdDSA'] },
    authorization: ALLOW_ALL,
    upstreams: { echo: { url: 'http://127.0.0.1:9/mcp' } }
  }
  const file = join(dir, 'audit.log')
  const app = Fastify()
  await app.register(auditPlugin, { config: validateConfig({ ...base, tokens: { keysDir: join(dir, 'keys') }, audit: { destination: file, replica: 'alone', checkpoint: { every: 2 } } }) })
  await app.ready()
  app.mcpWarden.audit.write({ time: new Date().toISOString(), requestId: 'r', decisionId: null, agentId: null, userId: null, server: null, httpMethod: 'POST', method: null, rpcId: null, outcome: 'allow', reason: 'x', policies: [], policyVersion: null, status: 200, durationMs: 1 })
  await app.close()
  t.same(lines(file).map(l => JSON.parse(l).event ?? 'record'), ['checkpoint', 'record', 'checkpoint'])
  const report = await verifyAuditFiles([file], { keys: await loadCheckpointKeys({ keysDirs: [join(dir, 'keys')] }) })
  t.ok(report.ok, report.break?.message ?? 'OK')

  const notAFolder = join(dir, 'keys-file')
  writeFileSync(notAFolder, 'x')
  const bad = Fastify()
  await t.rejects(async () => { await bad.register(auditPlugin, { config: validateConfig({ ...base, tokens: { keysDir: notAFolder }, audit: { destination: file, checkpoint: { every: 2 } } }) }) },
    /audit\.checkpoint: checkpoints are signed with the keys of tokens\.keysDir, which cannot be used/)
  const folder = join(dir, 'a-folder')
  mkdirSync(folder)
  const bad2 = Fastify()
  await t.rejects(async () => { await bad2.register(auditPlugin, { config: validateConfig({ ...base, audit: { destination: folder } }) }) },
    /audit\.destination: cannot continue the audit chain in .*a-folder/)
})

t.test('a rotation that cannot rename the file: said in the log, and the records go on to the same file', async t => {
  const dir = tmp()
  const file = join(dir, 'audit.log')
  const errors: string[] = []
  const log = new AuditLog({ destination: file, replica: 'gw-a', rotate: { maxBytes: 4096, keep: 1 }, log: { warn: () => {}, error: (_o, m) => { errors.push(m) } } })
  mkdirSync(join(dir, 'audit.log.1', 'in-the-way'), { recursive: true })
  await opened(file)
  for (let i = 0; i < 100; i++) {
    log.write(record(i))
    if (i % 10 === 9) await sleep(1)
  }
  for (let i = 0; i < 200 && errors.length === 0; i++) await sleep(10)
  await log.close()
  t.ok(errors.length > 0)
  t.match(errors[0], /could not be rotated; writing on to it/)
  t.equal(lines(file).length, 100, 'nothing lost')
  t.ok((await verifyAuditFiles([file])).ok)
  // reopen() on the host's stream: passed on when the stream has one; after close, nothing.
  let reopened = 0
  const hosted = new AuditLog({ destination: 'stdout', stream: { write: () => true, reopen: () => { reopened++ } } as never, replica: 'gw-a' })
  hosted.reopen()
  await hosted.close()
  hosted.reopen()
  t.equal(reopened, 1)
  const kept = collector()
  const afterClose = new AuditLog({ destination: 'stdout', stream: kept.stream, replica: 'gw-a' })
  afterClose.write(record(1))
  await afterClose.close()
  afterClose.write(record(2))
  t.same(kept.lines().map(l => JSON.parse(l).seq), [1, 2], 'the host\'s stream takes a record after close too, on the chain')
  t.throws(() => new AuditLog({ destination: file, replica: 'gw-a', checkpointEvery: 2 }), /checkpoints need a signer/)
  t.throws(() => new AuditLog({ destination: file, replica: 'gw-a', checkpointEvery: -1 }), /checkpointEvery/)
})

/** `ls` with `items` appended as an attacker writes them: records chained on from the last record of gw-a, text lines as they are. */
function appendForged (ls: string[], items: Array<Record<string, unknown> | string>): string[] {
  const out = [...ls]
  const isRecord = (l: string): boolean => { try { return typeof JSON.parse(l).seq === 'number' } catch { return false } }
  let last = [...ls].reverse().find(isRecord)!
  for (const item of items) {
    if (typeof item === 'string') { out.push(item); continue }
    const line = JSON.stringify({ replica: 'gw-a', seq: (JSON.parse(last).seq as number) + 1, prev: sha(last), ...item })
    out.push(line)
    last = line
  }
  return out
}
/** A chain-resume record naming `cut` as the gateway writes one. */
const resumeFor = (cut: string, extra: Record<string, unknown> = {}): Record<string, unknown> =>
  ({ time: new Date().toISOString(), event: 'chain-resume', cutOff: { bytes: Buffer.byteLength(cut), sha256: sha(cut) }, ...extra })
const evil = { agentId: 'bot', userId: 'alice', server: 'db', httpMethod: 'POST', method: 'tools/call', tool: 'database_drop', outcome: 'allow', reason: 'forwarded', policies: ['super-admin'], status: 200 }

t.test('forged chain-resume records: one vouches only for the cut-off line right before it, and with keys only when the signed resume checkpoint follows it', async t => {
  const ring = keyring()
  const keys = await keysOf(ring)
  const file = join(tmp(), 'audit.log')
  await writeLog(file, 7, { every: 3, ring })
  const good = lines(file)
  t.equal(good.length, 11)
  t.match(JSON.parse(good[10]!), { event: 'checkpoint', at: 'close' })
  const both = async (ls: string[], kind: string, where: string, name: string): Promise<void> => {
    put(file, ls)
    fails(t, await verifyAuditFiles([file], { keys }), kind, where, `${name} (with keys)`)
    fails(t, await verifyAuditFiles([file]), kind, where, `${name} (without keys)`)
  }
  // 200 chain-resume records carrying a forged call, each correctly chained, after the close checkpoint.
  await both(appendForged(good, Array.from({ length: 200 }, () => resumeFor('x', { requestId: randomUUID(), ...evil }))), 'inserted', 'audit.log:12', 'chain-resume records with no cut-off line before them')
  put(file, appendForged(good, [resumeFor('x', evil)]))
  t.match(formatReport(await verifyAuditFiles([file], { keys }))[0], /audit\.log:12: replica gw-a, seq 12: inserted: a chain-resume record, but the line before it is not the cut-off line it names \(1 bytes, SHA-256 [0-9a-f]{12}…\)/)
  // A text line inserted inside the signed part, and a chain-resume at the end that names it.
  const note = 'gw-a 2026-12-02 ADMIN OVERRIDE: all denials above void'
  await both(appendForged([...good.slice(0, 5), note, ...good.slice(5)], [resumeFor(note)]), 'cut-off', 'audit.log:6', 'a line inserted mid-log, named by a chain-resume at the end')
  // The chain-resume one line too far from the line it names.
  await both(appendForged(appendForged(good, [note, { ...record(90) }]), [resumeFor(note)]), 'cut-off', 'audit.log:12', 'a chain-resume that does not directly follow the line it names')
  // Right after it, but naming other bytes.
  put(file, appendForged(good, [note, { ...resumeFor(note), cutOff: { bytes: note.length + 1, sha256: sha(note) } }]))
  t.match(formatReport(await verifyAuditFiles([file]))[0], /audit\.log:12: replica \?, seq \?: cut-off: not a complete record: 54 bytes .*, and the chain-resume record there names another line/)
  // A cut-off line and its chain-resume, as after a crash, but no signed resume checkpoint after it.
  const pair = appendForged(good, [note, resumeFor(note)])
  put(file, pair)
  fails(t, await verifyAuditFiles([file], { keys }), 'missing-checkpoint', 'audit.log:13', 'a made-up crash at the end of the log')
  t.match(formatReport(await verifyAuditFiles([file], { keys }))[0], /chain-resume is not followed by the signed resume checkpoint the gateway writes right after it/)
  t.ok((await verifyAuditFiles([file])).ok, 'without keys a made-up crash at the end cannot be told from a real one')
  put(file, appendForged(good, [note, resumeFor(note), 'y', resumeFor('y'), 'z', resumeFor('z')]))
  fails(t, await verifyAuditFiles([file], { keys }), 'missing-checkpoint', 'audit.log:13', 'several made-up crashes in a row: owed since the first')
  // Records after it, where the resume checkpoint belongs.
  put(file, appendForged(pair, [{ ...record(91), ...evil }]))
  fails(t, await verifyAuditFiles([file], { keys }), 'missing-checkpoint', 'audit.log:14', 'a forged record after a made-up chain-resume')
  t.match(formatReport(await verifyAuditFiles([file], { keys }))[0], /a record where the signed resume checkpoint belongs: the gateway writes it right after the chain-resume record \(replica gw-a, .*audit\.log:13\)/)
  // …or a checkpoint signed with another key under the gateway's kid.
  const attacker = generateKeyPairSync('ed25519')
  const forgedResume = appendForged(pair, [{ time: new Date().toISOString(), event: 'checkpoint', at: 'resume', every: 3, kid: ring.current().kid, sig: 'A'.repeat(86) }])
  const cp = JSON.parse(forgedResume[13]!)
  cp.sig = sign(null, checkpointPayload({ replica: 'gw-a', seq: cp.seq, prev: cp.prev, time: cp.time, at: 'resume', every: 3 }), attacker.privateKey).toString('base64url')
  forgedResume[13] = JSON.stringify(cp)
  put(file, forgedResume)
  fails(t, await verifyAuditFiles([file], { keys }), 'bad-signature', 'audit.log:14', 'a resume checkpoint the attacker signed')
  // A genuine checkpoint of another kind is not the resume checkpoint: the interval case, with the close checkpoint cut away.
  put(file, appendForged(good.slice(0, 10), [note, resumeFor(note), { ...record(92) }]))
  fails(t, await verifyAuditFiles([file], { keys }), 'missing-checkpoint', 'audit.log:13', 'a record after a chain-resume in an open chain')
})

t.test('records after the gateway\'s close checkpoint: with keys, nothing unsigned may follow it', async t => {
  const ring = keyring()
  const keys = await keysOf(ring)
  const file = join(tmp(), 'audit.log')
  await writeLog(file, 7, { every: 3, ring })
  const good = lines(file)
  put(file, appendForged(good, Array.from({ length: 5 }, (_v, i) => ({ ...record(100 + i), ...evil }))))
  fails(t, await verifyAuditFiles([file], { keys }), 'inserted', 'audit.log:12', 'five forged records after the close checkpoint')
  t.match(formatReport(await verifyAuditFiles([file], { keys }))[0], /a record after replica gw-a's closing checkpoint \(.*audit\.log:11\) that no signed checkpoint follows/)
  t.ok((await verifyAuditFiles([file])).ok, 'without keys they cannot be told from the gateway\'s (docs/audit.md says so)')
  put(file, appendForged(good, [{ ...record(100), ...evil }]))
  fails(t, await verifyAuditFiles([file], { keys }), 'inserted', 'audit.log:12', 'one forged record after the close checkpoint')

  // A record the gateway writes after it closed (a request that ended while it stopped) gets a close checkpoint of its own.
  const late = join(tmp(), 'audit.log')
  const log = new AuditLog({ destination: late, replica: 'gw-a', checkpointEvery: 3, signer: () => ring.current() })
  log.write(record(1))
  await log.close()
  log.write(record(2))
  const ls = lines(late)
  t.same(ls.map(l => JSON.parse(l).event === 'checkpoint' ? JSON.parse(l).at : 'r'), ['start', 'r', 'close', 'r', 'close'])
  const ok = await verifyAuditFiles([late], { keys })
  t.ok(ok.ok, ok.break?.message ?? 'OK')
  // Its checkpoint removed, or forged: the late record is not the gateway's.
  put(late, ls.slice(0, 4))
  fails(t, await verifyAuditFiles([late], { keys }), 'inserted', 'audit.log:4', 'a record after close without its own close checkpoint')
  put(late, appendForged(ls.slice(0, 3), [{ ...record(3), ...evil }, { ...record(4) }]))
  fails(t, await verifyAuditFiles([late], { keys }), 'inserted', 'audit.log:4', 'a record after close followed by another record')
  // The gateway starts again on the file after a late record: its resume checkpoint follows the close one.
  put(late, ls)
  await writeLog(late, 1, { every: 3, ring })
  t.same(lines(late).slice(5).map(l => JSON.parse(l).at ?? 'r'), ['resume', 'r', 'close'])
  t.ok((await verifyAuditFiles([late], { keys })).ok)

  // stdout: a forged record at the end of one run's chain, before the next run's chain starts.
  const out = collector()
  for (let run = 0; run < 2; run++) {
    const l = new AuditLog({ destination: 'stdout', stream: out.stream, replica: 'gw-a', checkpointEvery: 5, signer: () => ring.current() })
    l.write(record(run))
    await l.close()
    await sleep(5)
  }
  const runs = out.lines()
  t.equal(runs.length, 6)
  const shipped = join(tmp(), 'shipped.log')
  put(shipped, [...appendForged(runs.slice(0, 3), [{ ...record(7), ...evil }]), ...runs.slice(3)])
  fails(t, await verifyAuditFiles([shipped], { keys }), 'inserted', 'shipped.log:4', 'a forged record between a closed chain and the next one')
})

t.test('replays and splices: an older chain start, two logs of one replica, a duplicated seq', async t => {
  const ring = keyring()
  const keys = await keysOf(ring)
  // Two runs of a gateway writing to stdout: an older log and a newer one.
  const run = async (): Promise<string[]> => {
    const out = collector()
    const l = new AuditLog({ destination: 'stdout', stream: out.stream, replica: 'gw-a', checkpointEvery: 3, signer: () => ring.current() })
    for (let i = 0; i < 4; i++) l.write(record(i))
    await l.close()
    return out.lines()
  }
  const older = await run()
  await sleep(5)
  const newer = await run()
  const file = join(tmp(), 'shipped.log')
  put(file, [...older, ...newer])
  t.ok((await verifyAuditFiles([file], { keys })).ok, 'two runs in order: two chains')
  // The older log's signed chain start (and a forged record) appended to the newer log.
  put(file, [...newer, ...appendForged([older[0]!], [{ ...record(9), ...evil }])])
  fails(t, await verifyAuditFiles([file], { keys }), 'duplicate', 'shipped.log:8', 'a chain start replayed from an older log')
  t.match(formatReport(await verifyAuditFiles([file], { keys }))[0], /new chain starts with a checkpoint signed at .*, before the checkpoint at .*shipped\.log:7 of the chain before it .*: a chain start replayed from an older log/)
  put(file, [...newer, ...older])
  fails(t, await verifyAuditFiles([file], { keys }), 'duplicate', 'shipped.log:8', 'a whole older log spliced after the newer one')
  // Two files of one replica spliced at the same seq: the link breaks where they meet.
  const dir = tmp()
  await writeLog(join(dir, 'x.log'), 8)
  await writeLog(join(dir, 'y.log'), 8, { from: 50 })
  const x = lines(join(dir, 'x.log'))
  const y = lines(join(dir, 'y.log'))
  put(file, [...x.slice(0, 4), ...y.slice(4)])
  fails(t, await verifyAuditFiles([file]), 'edited', 'shipped.log:4', 'two logs of one replica spliced')
  // A line repeated with its seq: a checkpoint, and a record with another body.
  put(file, [...newer, newer[newer.length - 1]!])
  fails(t, await verifyAuditFiles([file], { keys }), 'duplicate', 'shipped.log:8', 'the close checkpoint repeated')
  put(file, [...x.slice(0, 4), JSON.stringify({ ...JSON.parse(x[3]!), requestId: 'other' }), ...x.slice(4)])
  fails(t, await verifyAuditFiles([file]), 'inserted', 'shipped.log:5', 'a second record with a seq already used')
})

t.test('a crash before a rotated file\'s restart: the chain-resume on the first line of the new file names the last line of the rotated one', async t => {
  const ring = keyring()
  const keys = await keysOf(ring)
  const dir = tmp()
  const file = join(dir, 'audit.log')
  await writeLog(file, 3, { every: 5, ring })
  appendFileSync(file, '{"replica":"gw-a","seq":6,"prev":"ab')
  renameSync(file, `${file}.1`)
  await writeLog(file, 2, { every: 5, ring, from: 3 })
  t.match(JSON.parse(lines(file)[0]!), { seq: 6, event: 'chain-resume', cutOff: { bytes: 36 } })
  const both = await verifyAuditFiles([`${file}.1`, file], { keys })
  t.ok(both.ok, both.break?.message ?? 'OK')
  t.match(formatReport(both).join('\n'), /audit\.log\.1:6 is a record cut off .*; the chain-resume record at .*audit\.log:1 notes it/)
  const alone = await verifyAuditFiles([file], { keys })
  t.ok(alone.ok, alone.break?.message ?? 'OK')
  t.match(formatReport(alone).join('\n'), /the chain-resume record at .*audit\.log:1 names a cut-off line \(36 bytes, SHA-256 [0-9a-f]{12}…\) in an earlier file, not given/)
  // A complete line (with its newline) at the end of the rotated file is no crash: nothing vouches for it.
  writeFileSync(`${file}.1`, readFileSync(`${file}.1`, 'utf8') + '\n')
  fails(t, await verifyAuditFiles([`${file}.1`, file], { keys }), 'cut-off', 'audit.log.1:6', 'a terminated line before the next file\'s chain-resume')
})

t.test('a crafted file cannot make verify slow or big: one pass over the lines, and a cap on a line\'s length', async t => {
  const file = join(tmp(), 'audit.log')
  await writeLog(file, 10)
  const good = lines(file)
  const timed = async (files: string[]): Promise<{ report: VerifyReport, ms: number }> => {
    const started = performance.now()
    const report = await verifyAuditFiles(files)
    return { report, ms: performance.now() - started }
  }
  // Tens of thousands of garbage lines, named by a chain-resume at the end (each once read the files again: quadratic).
  put(file, appendForged([...good.slice(0, 5), ...Array<string>(50_000).fill('x'), ...good.slice(5)], [resumeFor('x'), '{"replica":"gw-a","seq":0,"prev":"bad"}']))
  const garbage = await timed([file])
  fails(t, garbage.report, 'cut-off', 'audit.log:6', '50 000 garbage lines')
  t.ok(garbage.ms < 5000, `verified in ${Math.round(garbage.ms)} ms`)
  // As many cut-off lines, each with its chain-resume: all read, once.
  const pairs: Array<Record<string, unknown> | string> = []
  for (let i = 0; i < 20_000; i++) pairs.push(`cut ${i}`, resumeFor(`cut ${i}`))
  put(file, appendForged(good, pairs))
  const resumed = await timed([file])
  t.ok(resumed.report.ok, resumed.report.break?.message ?? 'OK')
  t.equal(resumed.report.records, 20_010)
  t.ok(resumed.ms < 10_000, `20 000 cut-off lines and chain-resumes verified in ${Math.round(resumed.ms)} ms`)
  t.match(resumed.report.notes.join('\n'), /19990 more cut-off lines, each noted by the chain-resume record right after it/)
  t.ok(resumed.report.notes.length < 20, 'the notes are counted, not listed')
  // A record deleted before them: the break is named with one more pass.
  put(file, appendForged([...good.slice(0, 4), ...good.slice(5)], pairs))
  fails(t, await verifyAuditFiles([file]), 'deleted', 'audit.log:5', 'a deletion before 20 000 chain-resumes')

  // One line of more than 64 MiB without a newline: reported once the cap is passed, not read on.
  writeFileSync(file, good.map(l => l + '\n').join(''))
  appendFileSync(file, Buffer.alloc(MAX_LINE_BYTES + 1, 0x41))
  const long = await timed([file])
  fails(t, long.report, 'too-long', 'audit.log:11', 'a line of 64 MiB and one byte')
  t.match(formatReport(long.report)[0], /too-long: a line of more than 64 MiB: the gateway writes none that long/)
  t.ok(long.ms < 10_000, `read in ${Math.round(long.ms)} ms`)
  // A lower cap: a line within one chunk, and one across chunks that starts like a record.
  put(file, [...good, 'y'.repeat(2000)])
  fails(t, await verifyAuditFiles([file], { maxLineBytes: 1024 }), 'too-long', 'audit.log:11', 'a 2000-byte line over a 1 KiB cap')
  put(file, [...good.slice(0, 3), good[3]!.replace('"reason":"permitted"', `"reason":"${'r'.repeat(3 << 20)}"`), ...good.slice(4)])
  t.match((await verifyAuditFiles([file], { maxLineBytes: 1 << 20 })).break, { kind: 'too-long', line: 4, replica: 'gw-a', seq: 4 })
  t.equal((await verifyAuditFiles([file])).break?.kind, 'edited', 'under the default cap the long line is read (and the edit found)')
  // Past a break, the pass that names it skips a long line.
  put(file, [...good.slice(0, 4), ...good.slice(5), 'z'.repeat(3 << 20), good[4]!])
  t.match((await verifyAuditFiles([file], { maxLineBytes: 1 << 20 })).break, { kind: 'reordered', line: 5 })
  await t.rejects(verifyAuditFiles([file], { maxLineBytes: 100 }), /the longest line to read must be a whole number of bytes from 1024/)
  await t.rejects(verifyAuditFiles([file], { maxLineBytes: MAX_LINE_BYTES_LIMIT + 1 }), RangeError)

  // A genuine record of several MiB (a long reason) spans chunks and verifies.
  const big = join(tmp(), 'audit.log')
  await writeLog(big, 2)
  const log = new AuditLog({ destination: big, replica: 'gw-a' })
  log.write(record(2, { reason: 'q'.repeat(3 << 20) }))
  log.write(record(3))
  await log.close()
  const bigReport = await verifyAuditFiles([big])
  t.ok(bigReport.ok, bigReport.break?.message ?? 'OK')
  t.equal(bigReport.replicas[0]!.lastSeq, 4)
})
