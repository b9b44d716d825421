/**
 * The console's decision index (lib/console/decision-index.ts): every filter, time ranges,
 * keyset pages, dedupe, the cap on records, loading an audit file with damaged lines, an agent's
 * summary, picker lists, and values that look like SQL or are unusual Unicode.
 */
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { DecisionIndex, DecisionQueryError, MAX_INDEXED_VALUE, type DecisionQuery } from '../lib/console/decision-index.js'
import type { AuditRecord } from '../plugins/decorations.js'

const T0 = Date.parse('2025-03-01T12:00:00.000Z')
const MIN = 60_000
const HOUR = 60 * MIN
const iso = (ms: number): string => new Date(ms).toISOString()

let seq = 0
function rec (over: Partial<AuditRecord> = {}): AuditRecord {
  seq++
  return {
    time: iso(T0 + seq * 1000),
    requestId: `req-${seq}`,
    decisionId: `dec-${seq}`,
    agentId: 'agent-a',
    userId: 'alice',
    server: 'db',
    httpMethod: 'POST',
    method: 'tools/call',
    rpcId: seq,
    tool: 'database_query',
    outcome: 'allow',
    reason: 'permitted',
    policies: ['p-allow'],
    policyVersion: 'v1',
    status: 200,
    durationMs: 1.25,
    ...over
  }
}

async function open (t: Test, opts: { maxRecords?: number, maxTextLength?: number } = {}): Promise<DecisionIndex> {
  const index = await DecisionIndex.create(opts)
  t.teardown(() => { index.close() })
  return index
}

/** Every page of a query, following `next`. */
function allPages (index: DecisionIndex, q: DecisionQuery): AuditRecord[][] {
  const pages: AuditRecord[][] = []
  let cursor: string | undefined
  for (let i = 0; i < 1000; i++) {
    const page = index.search(cursor === undefined ? q : { ...q, cursor })
    pages.push(page.rows)
    if (page.next === undefined) return pages
    cursor = page.next
  }
  throw new Error('pages never end')
}

/** A record without the default `tool` of rec(). */
function untargeted (over: Partial<AuditRecord>): AuditRecord {
  const r = rec(over)
  delete r.tool
  return r
}

const ids = (rows: AuditRecord[]): string[] => rows.map(r => r.requestId)

/** Records ordered the way the index promises: time descending, then the later-added first. */
function newestFirst (added: AuditRecord[]): AuditRecord[] {
  return added.map((r, i) => ({ r, i })).sort((a, b) => Date.parse(b.r.time) - Date.parse(a.r.time) || b.i - a.i).map(x => x.r)
}

t.test('each filter finds exactly the matching records, newest first', async t => {
  const index = await open(t)
  const data = [
    rec({ agentId: 'agent-a', userId: 'alice', server: 'db', tool: 'database_query', outcome: 'allow' }),
    rec({ agentId: 'agent-b', userId: 'bob', server: 'db', tool: 'database_drop', outcome: 'deny' }),
    rec({ agentId: 'agent-a', userId: 'bob', server: 'files', tool: 'read_file', outcome: 'allow' }),
    untargeted({ agentId: 'agent-c', userId: null, server: 'files', method: 'resources/read', uri: 'file:///etc/hosts', outcome: 'error' }),
    untargeted({ agentId: 'agent-b', userId: 'alice', server: 'prompts', method: 'prompts/get', prompt: 'summarise', outcome: 'allow' }),
    untargeted({ agentId: null, userId: null, server: null, method: null, decisionId: null, outcome: 'deny', status: 401 }),
    rec({ agentId: 'agent-a', userId: 'alice', server: 'db', tool: 'database_drop', outcome: 'deny' })
  ]
  for (const r of data) t.ok(index.add(r))
  t.equal(index.size, data.length)

  const expect = (q: DecisionQuery, pick: (r: AuditRecord) => boolean, msg: string): void => {
    t.same(ids(index.search(q).rows), ids(newestFirst(data.filter(pick))), msg)
  }
  expect({}, () => true, 'no filter: everything')
  expect({ agent: 'agent-a' }, r => r.agentId === 'agent-a', 'agent')
  expect({ user: 'bob' }, r => r.userId === 'bob', 'user')
  expect({ server: 'files' }, r => r.server === 'files', 'server')
  expect({ tool: 'database_drop' }, r => r.tool === 'database_drop', 'tool')
  expect({ tool: 'file:///etc/hosts' }, r => r.uri === 'file:///etc/hosts', 'the tool filter matches a resource uri')
  expect({ tool: 'summarise' }, r => r.prompt === 'summarise', 'and a prompt name')
  expect({ outcome: 'deny' }, r => r.outcome === 'deny', 'outcome deny')
  expect({ outcome: 'error' }, r => r.outcome === 'error', 'outcome error')
  expect({ agent: 'agent-a', outcome: 'deny' }, r => r.agentId === 'agent-a' && r.outcome === 'deny', 'filters combine')
  expect({ agent: 'agent-a', server: 'db', user: 'alice', tool: 'database_query', outcome: 'allow' }, r => r === data[0], 'all at once')
  expect({ agent: 'agent-b', server: 'files' }, () => false, 'no record matches both: nothing')
  t.same(ids(index.search({ agent: 'agent-a' }).rows), [data[6]!.requestId, data[2]!.requestId, data[0]!.requestId], 'newest first, by hand')

  t.same(ids(index.search({ id: data[1]!.decisionId! }).rows), [data[1]!.requestId], 'id: a decisionId')
  t.same(ids(index.search({ id: data[5]!.requestId }).rows), [data[5]!.requestId], 'id: a requestId (a record without decisionId)')
  t.same(index.search({ id: 'dec-none' }).rows, [], 'id: unknown')
  t.same(index.search({ agent: 'agent' }).rows, [], 'exact matches only: no prefix match')
  t.same(index.search({ agent: 'AGENT-A' }).rows, [], 'and case counts')
  t.same(index.search({ outcome: 'maybe' as 'allow' }).rows, [], 'an outcome that does not exist matches nothing')

  t.same(index.search({ id: data[4]!.requestId }).rows[0], data[4], 'a record comes back with every field as added')
  t.same(index.get(data[1]!.decisionId!), data[1], 'get by decisionId')
  t.same(index.get(data[3]!.requestId), data[3], 'get by requestId')
  t.equal(index.get('nope'), undefined)
})

t.test('get: the newest record carrying the id', async t => {
  const index = await open(t)
  const old = rec({ decisionId: 'shared', time: iso(T0) })
  const newer = rec({ decisionId: 'shared', time: iso(T0 + HOUR) })
  const oldest = rec({ decisionId: 'shared', time: iso(T0 - HOUR) })
  for (const r of [old, newer, oldest]) index.add(r)
  t.equal(index.get('shared')?.requestId, newer.requestId)
  t.same(ids(index.search({ id: 'shared' }).rows), [newer.requestId, old.requestId, oldest.requestId])
})

t.test('time ranges: from inclusive, to exclusive; ISO times in any offset', async t => {
  const index = await open(t)
  const at = [T0 - MIN, T0, T0 + MIN, T0 + 2 * MIN, T0 + 3 * MIN]
  const data = at.map(ms => rec({ time: iso(ms) }))
  for (const r of data) index.add(r)
  t.same(ids(index.search({ from: iso(T0), to: iso(T0 + 2 * MIN) }).rows), [data[2]!.requestId, data[1]!.requestId], 'a record at from is in, one at to is out')
  t.same(ids(index.search({ from: iso(T0 + 2 * MIN) }).rows), [data[4]!.requestId, data[3]!.requestId], 'from alone')
  t.same(ids(index.search({ to: iso(T0) }).rows), [data[0]!.requestId], 'to alone')
  t.same(ids(index.search({ from: '2025-03-01T13:00:00+01:00', to: '2025-03-01T13:01:00.001+01:00' }).rows), [data[2]!.requestId, data[1]!.requestId], 'the same instants written with an offset')
  t.same(index.search({ from: iso(T0 + HOUR) }).rows, [], 'after everything: nothing')
  t.same(index.search({ from: iso(T0), to: iso(T0) }).rows, [], 'an empty range: nothing')
  t.throws(() => index.search({ from: 'yesterday' }), DecisionQueryError, 'a from that is not a time is refused')
  t.throws(() => index.search({ to: '' }), { message: /^to: / })
  const err = t.throws(() => index.search({ from: 'not a time' })) as DecisionQueryError
  t.equal(err.statusCode, 400, 'Fastify answers it with 400')
  t.notMatch(err.message, /not a time/, 'the message does not echo the value')
})

t.test('pages: 120 records in pages of 50, no duplicates and no gaps, across records with the same time', async t => {
  const index = await open(t)
  const data: AuditRecord[] = []
  // Three records per second: ties on time are ordered by insertion, latest first.
  for (let i = 0; i < 120; i++) data.push(rec({ time: iso(T0 + Math.floor(i / 3) * 1000), agentId: i % 2 === 0 ? 'even' : 'odd' }))
  // Added out of order: the order of a page is the records' time, not when they arrived.
  for (const r of [...data.slice(60), ...data.slice(0, 60)]) index.add(r)
  const pages = allPages(index, {})
  t.same(pages.map(p => p.length), [50, 50, 20], 'full pages, then the rest, and no empty page at the end')
  const seen = pages.flat()
  t.equal(new Set(ids(seen)).size, 120, 'no record twice')
  const added = [...data.slice(60), ...data.slice(0, 60)]
  t.same(ids(seen), ids(newestFirst(added)), 'every record, in order: time descending, then latest added first')
  for (let i = 1; i < seen.length; i++) {
    if (seen[i - 1]!.time < seen[i]!.time) t.fail(`row ${i} is newer than row ${i - 1}`)
  }

  const even = allPages(index, { agent: 'even', limit: 7 })
  t.same(ids(even.flat()), ids(newestFirst(added).filter(r => r.agentId === 'even')), 'pages of a filtered search: every match once')
  t.same(even.map(p => p.length), [7, 7, 7, 7, 7, 7, 7, 7, 4])

  const first = index.search({ limit: 50 })
  index.add(rec({ time: iso(T0 + 10 * HOUR) }))
  const second = index.search({ limit: 50, cursor: first.next! })
  t.same(ids(second.rows), ids(pages[1]!), 'a record added meanwhile does not shift the next page')

  t.equal(index.search({ limit: 0 }).rows.length, 1, 'limit below 1: 1')
  t.equal(index.search({ limit: 1000 }).rows.length, 121, 'limit above 200, fewer rows: all of them')
  for (let i = 0; i < 100; i++) index.add(rec())
  t.equal(index.search({ limit: 1000 }).rows.length, 200, 'limit above 200: 200')
  t.equal(index.search({ limit: Number.NaN }).rows.length, 50, 'not a number: the default, 50')
  t.equal(index.search({ limit: 12.9 }).rows.length, 12)

  t.throws(() => index.search({ cursor: 'garbage' }), DecisionQueryError, 'a cursor that is not one is refused')
  t.throws(() => index.search({ cursor: Buffer.from('[1,"x"]').toString('base64url') }), { message: /^cursor: / })
})

t.test('dedupe on requestId, decisionId, method and event; what is not a record', async t => {
  const index = await open(t)
  const r = rec()
  t.equal(index.add(r), true)
  t.equal(index.add(r), false, 'the same record again')
  t.equal(index.add({ ...r, reason: 'other text', time: iso(T0 + HOUR) }), false, 'the same key with other fields: still a repeat')
  t.equal(index.add({ ...r, event: 'approval' }), true, 'the same request, another event')
  t.equal(index.add({ ...r, method: 'tools/list' }), true, 'another method')
  t.equal(index.add({ ...r, decisionId: null }), true, 'no decisionId')
  t.equal(index.add({ ...r, decisionId: null }), false, 'no decisionId, twice')
  t.equal(index.size, 4)

  const odd: unknown[] = [
    null, undefined, 42, 'text', [], [r],
    { ...r, time: undefined }, { ...r, requestId: undefined }, { ...r, outcome: undefined },
    { ...r, requestId: '' }, { ...r, requestId: 7 }, { ...r, time: 'yesterday' }, { ...r, time: 1_700_000_000_000 },
    { ...r, outcome: 'maybe' }, { ...r, outcome: 'ALLOW' },
    { ...r, requestId: 'big', extra: 10n }
  ]
  const cyclic: Record<string, unknown> = { ...r, requestId: 'cyclic' }
  cyclic.self = cyclic
  odd.push(cyclic)
  for (const v of odd) t.equal(index.add(v as AuditRecord), false, `not added: ${typeof v === 'object' && v !== null ? Object.keys(v).slice(0, 3).join(',') : String(v)}`)
  t.equal(index.size, 4, 'nothing odd was indexed')

  const strange = { ...rec(), agentId: 12, userId: { a: 1 }, server: ['x'], tool: true, policies: 'none' }
  t.equal(index.add(strange as unknown as AuditRecord), true, 'odd values in other fields: indexed all the same')
  t.same(index.get(strange.requestId), strange, 'and returned as added')
  t.same(index.search({ agent: '12' }).rows, [], 'a number is not the agent "12"')
})

t.test('maxRecords: the oldest records go, in batches', async t => {
  const index = await open(t, { maxRecords: 1000 })
  const data: AuditRecord[] = []
  for (let i = 0; i < 1000; i++) data.push(rec({ time: iso(T0 + i * 1000) }))
  for (const r of data) index.add(r)
  t.equal(index.size, 1000, 'at the cap: nothing deleted')
  index.add(rec({ time: iso(T0 + 5000 * 1000) }))
  t.equal(index.size, 991, 'one over: the oldest hundredth (10) goes at once')
  t.equal(index.get(data[9]!.requestId), undefined, 'the 10th oldest is gone')
  t.same(index.get(data[10]!.requestId), data[10], 'the 11th is kept')
  for (let i = 0; i < 9; i++) index.add(rec({ time: iso(T0 + 6000 * 1000 + i) }))
  t.equal(index.size, 1000, 'the next 9 need no delete')
  const late = rec({ time: iso(T0 - HOUR) })
  t.equal(index.add(late), true, 'a record older than all others, added last')
  t.equal(index.size, 991)
  t.equal(index.get(late.requestId), undefined, 'is the first to go: oldest by time, not by arrival')
  t.equal(index.get(data[18]!.requestId), undefined)
  t.same(index.get(data[19]!.requestId), data[19])
  t.equal(allPages(index, { limit: 200 }).flat().length, index.size, 'size counts the rows there are')

  await t.rejects(DecisionIndex.create({ maxRecords: 0 }), RangeError)
  const tiny = await open(t, { maxRecords: 3 })
  for (let i = 0; i < 10; i++) tiny.add(rec())
  t.equal(tiny.size, 3, 'a small cap holds')
  t.same(ids(tiny.search({}).rows), [`req-${seq}`, `req-${seq - 1}`, `req-${seq - 2}`], 'the newest three')
})

t.test('huge records: long values are cut short in the index, so every record is found and none crowds the others out', async t => {
  const index = await open(t, { maxTextLength: 100_000 })
  const huge = rec({ tool: 'x'.repeat(1024 * 1024), reason: 'r'.repeat(50_000), rpcId: 'i'.repeat(1024 * 1024), policies: Array.from({ length: 100 }, (_, i) => `p${i}`) })
  t.ok(index.add(huge), 'a tool name and an id as long as a request body: indexed, cut short')
  const kept = index.get(huge.requestId) as unknown as Record<string, unknown>
  t.equal((kept.tool as string).length, MAX_INDEXED_VALUE + 1, 'the tool name is cut (with an ellipsis)')
  t.same((kept.indexTruncated as string[]).sort(), ['policies', 'reason', 'rpcId', 'tool'], 'the cut fields are named')
  t.equal((kept.policies as string[]).length, 64)
  t.equal(kept.agentId, huge.agentId, 'short values are kept as they were')
  t.same(ids(index.search({ agent: huge.agentId! }).rows), [huge.requestId], 'and the record is found')
  const small = Array.from({ length: 20 }, () => rec())
  for (const r of small) index.add(r)
  t.equal(index.size, 21)
  for (let i = 0; i < 30; i++) index.add(rec({ tool: 'y'.repeat(40_000), agentId: 'flooder' }))
  t.ok(small.every(r => index.get(r.requestId) !== undefined), 'thirty huge records do not push the small ones out')
  const text = allPages(index, { limit: 200 }).flat().reduce((n, r) => n + JSON.stringify(r).length, 0)
  t.ok(text <= 100_000, `${text} characters held`)
  await t.rejects(DecisionIndex.create({ maxTextLength: 0 }), RangeError)

  const dir = mkdtempSync(join(tmpdir(), 'mcpw-decisions-'))
  const file = join(dir, 'audit.jsonl')
  writeFileSync(file, JSON.stringify(rec({ reason: 'z'.repeat(1024 * 1024) })) + '\n' + JSON.stringify(rec()) + '\n')
  const other = await open(t)
  t.same(await other.loadFile(file), { loaded: 2, skipped: 0 }, 'a line over 1 MiB is read, cut short')
})

t.test('loadFile: good lines in, a cut-off last line, garbage, repeats and blank lines skipped', async t => {
  const dir = mkdtempSync(join(tmpdir(), 'mcpw-decisions-'))
  const file = join(dir, 'audit.jsonl')
  const good = [rec(), rec({ outcome: 'deny', agentId: 'agent-z' }), rec({ event: 'token-exchange', method: null, resource: 'https://api', scope: 'read', actor: null })]
  // Written exactly as the audit plugin writes, plus fields a future version may add.
  const lines = good.map(r => JSON.stringify({ ...r, future: { nested: [1, 'two'] } }))
  const cut = JSON.stringify(rec()).slice(0, 40)
  writeFileSync(file, [
    lines[0], '{not json', '', lines[1], '[1,2,3]', '   ', lines[0], '"a string"', JSON.stringify({ time: iso(T0), requestId: 'x' }), lines[2]
  ].join('\n') + '\r\n' + cut)
  const index = await open(t)
  t.same(await index.loadFile(file), { loaded: 3, skipped: 6 }, 'garbage, an array, a repeat, a string, a record without outcome, the cut-off line')
  t.equal(index.size, 3)
  for (const [i, r] of good.entries()) {
    const got = index.get(r.requestId)
    t.equal(JSON.stringify(got), lines[i], `record ${i} comes back exactly as written, unknown fields and key order too`)
  }
  t.same(await index.loadFile(file), { loaded: 0, skipped: 9 }, 'the same file again: every line a repeat or not a record')
  t.same(await index.loadFile(join(dir, 'missing.jsonl')), { loaded: 0, skipped: 0 }, 'no file: nothing')
  await t.rejects(index.loadFile(dir), 'a directory is not an audit file: the error is not hidden')

  const big = join(dir, 'big.jsonl')
  const many: AuditRecord[] = []
  for (let i = 0; i < 1234; i++) many.push(rec({ agentId: `agent-${i % 7}` }))
  writeFileSync(big, many.map(r => JSON.stringify(r)).join('\n') + '\n')
  const second = await open(t)
  t.same(await second.loadFile(big), { loaded: 1234, skipped: 0 }, 'more lines than one batch')
  t.same(ids(allPages(second, { agent: 'agent-3', limit: 200 }).flat()), ids(newestFirst(many.filter(r => r.agentId === 'agent-3'))))
})

t.test('agentSummary: buckets, top tools, denials and total over a window', async t => {
  const index = await open(t)
  const a = (minutes: number, tool: string, outcome: AuditRecord['outcome'], agentId = 'agent-s'): AuditRecord => rec({ agentId, time: iso(T0 + minutes * MIN), tool, outcome })
  const inside = [
    a(10, 'database_query', 'allow'),
    a(70, 'database_drop', 'deny'),
    a(75, 'database_drop', 'error'),
    a(239, 'database_query', 'allow'),
    a(200, 'zeta', 'allow')
  ]
  const outside = [a(-1, 'database_drop', 'deny'), a(240, 'database_drop', 'deny'), a(30, 'database_drop', 'deny', 'someone-else')]
  for (const r of [...inside, ...outside]) index.add(r)
  const s = index.agentSummary('agent-s', { from: iso(T0), to: iso(T0 + 4 * HOUR), buckets: 4 })
  t.equal(s.agentId, 'agent-s')
  t.same(s.buckets, [
    { start: '2025-03-01T12:00:00.000Z', allow: 1, deny: 0, error: 0 },
    { start: '2025-03-01T13:00:00.000Z', allow: 0, deny: 1, error: 1 },
    { start: '2025-03-01T14:00:00.000Z', allow: 0, deny: 0, error: 0 },
    { start: '2025-03-01T15:00:00.000Z', allow: 2, deny: 0, error: 0 }
  ], 'each hour, the empty one too; from is in, to is out')
  t.same(s.topTools, [
    { tool: 'database_drop', calls: 2, denials: 2 },
    { tool: 'database_query', calls: 2, denials: 0 },
    { tool: 'zeta', calls: 1, denials: 0 }
  ], 'by calls, ties by name; deny and error are denials')
  t.same(ids(s.denials), [inside[2]!.requestId, inside[1]!.requestId], 'deny and error records in the window, newest first')
  t.equal(s.total, 5)

  const uneven = index.agentSummary('agent-s', { from: iso(T0), to: iso(T0 + 4 * HOUR), buckets: 3 })
  t.equal(uneven.buckets.length, 3)
  t.same(uneven.buckets.map(b => b.start), [iso(T0), iso(T0 + 80 * MIN), iso(T0 + 160 * MIN)])
  t.same(uneven.buckets.map(b => b.allow + b.deny + b.error), [3, 0, 2], 'a record goes to the bucket whose range holds it')

  t.same(index.agentSummary('nobody', { from: iso(T0), to: iso(T0 + HOUR), buckets: 2 }),
    { agentId: 'nobody', buckets: [{ start: iso(T0), allow: 0, deny: 0, error: 0 }, { start: iso(T0 + 30 * MIN), allow: 0, deny: 0, error: 0 }], topTools: [], denials: [], total: 0 },
    'an unknown agent: every bucket, all empty')
  t.throws(() => index.agentSummary('agent-s', { from: iso(T0), to: iso(T0) }), DecisionQueryError, 'an empty window is refused')
  t.throws(() => index.agentSummary('agent-s', { from: 'soon' }), DecisionQueryError)
})

t.test('agentSummary: by default the last 24 hours in 24 buckets; top 10 tools; newest 20 denials', async t => {
  const index = await open(t)
  const now = Date.now()
  const data: AuditRecord[] = []
  // 12 tools, tool-i called i + 1 times, the odd ones denied once, all within the last 20 hours.
  for (let i = 0; i < 12; i++) {
    for (let c = 0; c <= i; c++) data.push(rec({ agentId: 'busy', tool: `tool-${String(i).padStart(2, '0')}`, time: iso(now - (c * 12 + i + 1) * 8 * MIN), outcome: c === 0 && i % 2 === 1 ? 'deny' : 'allow' }))
  }
  for (let i = 0; i < 25; i++) data.push(rec({ agentId: 'busy', tool: 'forbidden', time: iso(now - (i + 1) * 3 * MIN), outcome: 'deny' }))
  data.push(rec({ agentId: 'busy', tool: 'forbidden', time: iso(now - 25 * HOUR), outcome: 'deny' }))
  for (const r of data) index.add(r)
  const s = index.agentSummary('busy')
  t.equal(s.buckets.length, 24)
  const inWindow = data.filter(r => Date.parse(r.time) >= now - 24 * HOUR)
  t.equal(s.total, inWindow.length, 'the record 25 hours old is out')
  t.equal(s.buckets.reduce((n, b) => n + b.allow + b.deny + b.error, 0), s.total)
  t.equal(Date.parse(s.buckets[1]!.start) - Date.parse(s.buckets[0]!.start), HOUR, 'hour-wide buckets')
  t.ok(Math.abs(Date.parse(s.buckets[0]!.start) - (now - 24 * HOUR)) < 5000, 'starting 24 hours ago')
  t.equal(s.topTools.length, 10)
  t.same(s.topTools[0], { tool: 'forbidden', calls: 25, denials: 25 })
  t.same(s.topTools.slice(1).map(x => x.tool), ['tool-11', 'tool-10', 'tool-09', 'tool-08', 'tool-07', 'tool-06', 'tool-05', 'tool-04', 'tool-03'])
  t.same(s.topTools.slice(1).map(x => x.denials), [1, 0, 1, 0, 1, 0, 1, 0, 1])
  const expected = newestFirst(inWindow.filter(r => r.outcome !== 'allow')).slice(0, 20)
  t.equal(s.denials.length, 20)
  t.same(ids(s.denials), ids(expected), 'the newest 20')
})

t.test('agents and tools for the pickers', async t => {
  const index = await open(t)
  index.add(rec({ agentId: 'old', time: iso(T0), server: 'db', tool: 'database_query' }))
  index.add(rec({ agentId: 'new', time: iso(T0 + 2 * HOUR), server: 'db', tool: 'database_drop' }))
  index.add(rec({ agentId: 'old', time: iso(T0 + HOUR), server: 'files', tool: 'read_file' }))
  index.add(rec({ agentId: 'old', time: iso(T0 + 30 * MIN), server: 'db', tool: 'database_query' }))
  index.add(untargeted({ agentId: null, server: 'files', method: 'resources/read', uri: 'file:///a' }))
  t.same(index.agents(), [
    { agentId: 'new', last: iso(T0 + 2 * HOUR), calls: 1 },
    { agentId: 'old', last: iso(T0 + HOUR), calls: 3 }
  ], 'most recently seen first; records without an agent are not an agent')
  t.same(index.agents(1), [{ agentId: 'new', last: iso(T0 + 2 * HOUR), calls: 1 }])
  t.same(index.tools(), [
    { server: 'db', tool: 'database_drop' },
    { server: 'db', tool: 'database_query' },
    { server: 'files', tool: 'file:///a' },
    { server: 'files', tool: 'read_file' }
  ], 'distinct pairs, sorted; a resource uri is a target like a tool')
  t.same(index.agents().map(a => a.agentId), ['new', 'old'], 'a repeat changes nothing')
})

t.test('pickers follow the deletes of the cap', async t => {
  const index = await open(t, { maxRecords: 4 })
  const at = (ms: number, agentId: string, server: string, tool: string): AuditRecord => rec({ time: iso(T0 + ms), agentId, server, tool })
  index.add(at(0, 'gone', 's1', 't-gone'))
  index.add(at(1, 'stay', 's1', 't1'))
  index.add(at(2, 'stay', 's2', 't1'))
  index.add(at(3, 'both', 's1', 't1'))
  t.same(index.agents().map(a => [a.agentId, a.calls]), [['both', 1], ['stay', 2], ['gone', 1]])
  index.add(at(4, 'stay', 's1', 't1'))
  t.same(index.agents(), [
    { agentId: 'stay', last: iso(T0 + 4), calls: 3 },
    { agentId: 'both', last: iso(T0 + 3), calls: 1 }
  ], 'the agent whose only record was deleted is gone; the others keep their newest time')
  t.same(index.tools(), [{ server: 's1', tool: 't1' }, { server: 's2', tool: 't1' }], 'and so is its only pair')
  index.add(at(5, 'both', 's3', 't3'))
  index.add(at(6, 'both', 's3', 't3'))
  t.same(index.agents().map(a => [a.agentId, a.calls]), [['both', 3], ['stay', 1]], 'counted down as records go')
  t.same(index.tools(), [{ server: 's1', tool: 't1' }, { server: 's3', tool: 't3' }], 's2 went with its last record')
  t.equal(index.size, 4)
})

t.test('values that look like SQL match nothing; they are data', async t => {
  const index = await open(t)
  for (let i = 0; i < 5; i++) index.add(rec())
  const evil = ["' OR 1=1 --", '" OR ""="', "'; DROP TABLE decisions; --", '%', '_', '*', '1) OR (1=1']
  for (const v of evil) {
    for (const field of ['agent', 'user', 'server', 'tool', 'id', 'outcome'] as const) {
      t.same(index.search({ [field]: v }).rows, [], `${field} = ${v}`)
    }
    t.equal(index.get(v), undefined)
    t.same(index.agentSummary(v, { from: iso(T0), to: iso(T0 + HOUR) }).total, 0)
  }
  t.equal(index.size, 5, 'the table is still there, with its rows')
  const r = rec({ agentId: "' OR 1=1 --", userId: "'; DROP TABLE decisions; --", tool: '%' })
  t.ok(index.add(r))
  t.same(ids(index.search({ agent: "' OR 1=1 --" }).rows), [r.requestId], 'stored as data and found by its exact value')
  t.same(ids(index.search({ user: "'; DROP TABLE decisions; --" }).rows), [r.requestId])
  t.same(ids(index.search({ tool: '%' }).rows), [r.requestId], 'no LIKE wildcards')
  t.equal(index.size, 6)
})

t.test('unusual Unicode round-trips and matches exactly', async t => {
  const index = await open(t)
  const values = [
    '🤖 agent-ü', 'ツール', 'e\u0301', '\u00e9', 'עברית\u202e', 'a\u200db', 'nul\u0000inside', '\uD800lone', 'x'.repeat(1000), '',
    '\u2028\u2029', 'ﷺ', '𝔘𝔫𝔦𝔠𝔬𝔡𝔢'
  ]
  const added = values.map(v => rec({ agentId: v, userId: v, server: v, tool: v, reason: v }))
  for (const r of added) t.ok(index.add(r))
  for (const [i, v] of values.entries()) {
    // Labels in ASCII: the TAP output is read line by line, and U+2028 looks like a line break to some readers.
    const label = `value ${i} (${[...v.slice(0, 12)].map(c => /^[ -~]$/.test(c) ? c : `U+${c.codePointAt(0)!.toString(16)}`).join('')})`
    t.same(index.get(added[i]!.requestId), added[i], `${label}: returned as added`)
    t.same(ids(index.search({ agent: v }).rows), [added[i]!.requestId], `${label}: found by agent, and only it`)
    t.same(ids(index.search({ tool: v, server: v, user: v }).rows), [added[i]!.requestId], `${label}: by tool, server and user`)
  }
  t.same(index.search({ agent: 'nul' }).rows, [], 'a NUL does not cut the value short')
  t.same(index.search({ agent: '\u00e9' }).rows.map(r => r.agentId), ['\u00e9'], 'no Unicode normalisation: é and e + ◌́ differ')
  const pickers = index.agents(1000).map(a => a.agentId).sort()
  t.same(pickers, [...values].sort(), 'the agent picker shows every value exactly')
  t.same(index.tools().map(x => x.tool).sort(), [...values].sort(), 'the tool picker too')
})

t.test('close: the index is empty afterwards and adding fails quietly', async t => {
  const index = await DecisionIndex.create()
  index.add(rec())
  index.search({ agent: 'agent-a' })
  index.close()
  t.equal(index.size, 0)
  t.equal(index.add(rec()), false)
  t.same(index.search({}).rows, [])
  t.equal(index.get('req-1'), undefined)
  t.same(index.agents(), [])
  t.same(index.tools(), [])
  index.close()
  t.pass('closing twice is harmless')
})
