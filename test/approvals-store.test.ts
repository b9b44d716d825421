/**
 * The approval stores (memory and Redis, the same cases): one live approval per binding, decided
 * once, used once, even when two replicas race for it; expiry; the decided events every replica
 * hears; the per-agent request counter.
 */
import t from 'tap'
import { Redis } from 'ioredis'
import { MemoryApprovalStore } from '../lib/approvals/memory.js'
import { RedisApprovalStore } from '../lib/approvals/redis.js'
import { newApprovalId } from '../lib/approvals/binding.js'
import type { ApprovalEvent, ApprovalRecord, ApprovalStore } from '../lib/approvals/types.js'
import { redisAvailable, startRedis, type RedisServer } from './fixtures/redis.js'

if (!redisAvailable()) throw new Error('these tests need redis-server on the PATH (apt-get install -y redis-server)')

let redis: RedisServer
t.before(async () => { redis = await startRedis() })
t.teardown(async () => { await redis.close() })

function record (binding: string, ttlMs = 60_000): ApprovalRecord {
  const now = Date.now()
  return {
    id: newApprovalId(),
    status: 'pending',
    binding,
    agentId: 'bot',
    userId: 'frank',
    department: 'platform-ops',
    issuer: 'https://idp.test',
    server: 'api',
    tool: 'user_delete',
    arguments: '{"userId":"u-1"}',
    argumentsSha256: 'sha',
    policyVersion: 'v1',
    policies: ['p'],
    approvers: ['someone'],
    advice: ['needs a person'],
    sessionId: 'session-1',
    decisionId: 'd-1',
    requestedAt: now,
    expiresAt: now + ttlMs,
    decidedAt: null,
    approver: null,
    reason: null
  }
}
const GRACE = { userId: 'grace', issuer: 'https://idp.test', via: 'token' as const }
const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }

/** Two stores that share their state: one replica each (the memory store is one process: the same object). */
type Pair = { a: ApprovalStore, b: ApprovalStore, close: () => Promise<void> }
const kinds: Record<string, () => Promise<Pair>> = {
  memory: async () => {
    const s = new MemoryApprovalStore()
    return { a: s, b: s, close: async () => { await s.close() } }
  },
  redis: async () => {
    const prefix = `t${Math.random().toString(36).slice(2)}:`
    const ca = new Redis(redis.url, { enableOfflineQueue: false, maxRetriesPerRequest: 0 })
    const cb = new Redis(redis.url, { enableOfflineQueue: false, maxRetriesPerRequest: 0 })
    await Promise.all([ca, cb].map(async c => { await new Promise(resolve => c.once('ready', resolve)) }))
    const a = new RedisApprovalStore(ca, prefix)
    const b = new RedisApprovalStore(cb, prefix)
    await sleep(100) // the decided-events subscriptions
    return { a, b, close: async () => { await a.close(); await b.close(); ca.disconnect(); cb.disconnect() } }
  }
}

for (const [kind, open] of Object.entries(kinds)) {
  t.test(`${kind}: one live approval per binding; decided once; used once`, async t => {
    const { a, b, close } = await open()
    t.teardown(close)
    const events: ApprovalEvent[] = []
    const off = b.onDecided(e => { events.push(e) })
    const first = await a.create(record('bind-1'))
    t.ok(first.created)
    const second = await b.create(record('bind-1'))
    t.notOk(second.created, 'the same call while it waits: the same approval')
    t.equal(second.record.id, first.record.id)
    t.equal((await b.byBinding('bind-1'))?.id, first.record.id)
    t.equal(await a.consume('bind-1'), null, 'a pending approval cannot be used')
    t.same((await b.pending()).map(r => r.id), [first.record.id])

    const [x, y] = await Promise.all([a.decide(first.record.id, 'approved', GRACE, 'ok'), b.decide(first.record.id, 'approved', { ...GRACE, userId: 'heidi' }, null)])
    t.equal([x, y].filter(v => v !== null).length, 1, 'two approvers at once: one decision wins')
    const won = (x ?? y)!
    t.equal(won.status, 'approved')
    t.equal((await b.get(first.record.id))?.approver?.userId, won.approver?.userId, 'the stored decision is the winner\'s')
    t.same(await b.pending(), [], 'no longer pending')
    const uses = await Promise.all([a.consume('bind-1'), b.consume('bind-1'), a.consume('bind-1'), b.consume('bind-1')])
    t.equal(uses.filter(u => u !== null).length, 1, 'four replicas race for one approval: it is used once')
    t.equal(uses.find(u => u !== null)?.status, 'consumed')
    t.equal((await a.get(first.record.id))?.status, 'consumed')
    t.equal(await b.byBinding('bind-1'), null, 'used: the next identical call asks anew')
    await sleep(50)
    t.same(events.map(e => [e.id, e.status, e.server, e.sessionId]), [[first.record.id, 'approved', 'api', 'session-1']], 'the other replica heard of the decision')
    off()
    const again = await a.create(record('bind-1'))
    t.ok(again.created, 'a new approval for the same call')
    t.ok(await b.decide(again.record.id, 'denied', GRACE, 'no'))
    t.equal(await a.consume('bind-1'), null, 'a denied approval is never used')
    t.equal(await a.byBinding('bind-1'), null, 'denied: the binding is free for a new request')
    t.equal((await b.decide(again.record.id, 'approved', GRACE, null)), null, 'and it cannot be approved after all')
  })

  t.test(`${kind}: expiry, ids that do not exist, the request counter`, async t => {
    const { a, b, close } = await open()
    t.teardown(close)
    const short = (await a.create(record('bind-2', 300))).record
    t.ok(await b.decide(short.id, 'approved', GRACE, null))
    await sleep(400)
    t.equal(await b.consume('bind-2'), null, 'an expired approval is not used')
    t.equal(await a.get(short.id), null, 'and reads like one that never existed')
    t.equal(await a.decide(short.id, 'approved', GRACE, null), null)
    t.ok((await a.create(record('bind-2'))).created, 'the call may ask anew')
    t.equal(await a.get('AAAAAAAAAAAAAAAAAAAAAA'), null)
    t.equal(await a.decide('AAAAAAAAAAAAAAAAAAAAAA', 'approved', GRACE, null), null)
    const counts = [await a.countRequest('agent-1', 300), await b.countRequest('agent-1', 300), await a.countRequest('agent-2', 300)]
    t.same(counts, [1, 2, 1], 'counted per agent, across replicas')
    await sleep(350)
    t.equal(await b.countRequest('agent-1', 300), 1, 'a new window starts at 1')
    await a.rememberClient('api', 's-1', { urlElicitation: true, protocolVersion: '2025-11-25' }, 60)
    t.same(await b.client('api', 's-1'), { urlElicitation: true, protocolVersion: '2025-11-25' })
    t.equal(await b.client('api', 's-2'), null)
    t.notOk(await b.sessionRevoked('nonce-1'))
    await a.revokeSession('nonce-1', Date.now() + 300)
    t.ok(await b.sessionRevoked('nonce-1'), 'signed out on every replica')
    await sleep(350)
    t.notOk(await b.sessionRevoked('nonce-1'), 'remembered only while the cookie could be presented')
  })
}

t.test('redis: Redis down → StoreUnavailableError, never an approval', async t => {
  const { a, close } = await kinds.redis!()
  t.teardown(close)
  await redis.stop()
  await t.rejects(a.consume('bind-x'), { code: 'MCPW_ERR_STORE_UNAVAILABLE' })
  await t.rejects(a.create(record('bind-x')), { code: 'MCPW_ERR_STORE_UNAVAILABLE' })
  await redis.start()
})

t.test('regression: an approval id never starts with "-" (the CLI read such an id as an option)', async t => {
  const ids = Array.from({ length: 4000 }, () => newApprovalId())
  t.equal(ids.filter(id => id.startsWith('-')).length, 0)
  t.ok(ids.every(id => /^[A-Za-z0-9_-]{22}$/.test(id)), 'still 22 base64url characters')
})
