/**
 * The stores' decision feed (GatewayStore.decisions): in memory, a publish reaches the process's
 * subscribers; in Redis (a real redis-server), a record published on one replica reaches every
 * replica's subscribers, history() reads the stream back, and close() does not wait for a
 * blocked read.
 */
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { MemoryStore } from '../lib/stores/memory.js'
import { RedisStore } from '../lib/stores/redis.js'
import { StoreUnavailableError } from '../lib/errors.js'
import type { AuditRecord } from '../plugins/decorations.js'
import { redisAvailable, startRedis, type RedisServer } from './fixtures/redis.js'

if (!redisAvailable()) throw new Error('these tests need redis-server on the PATH (apt-get install -y redis-server)')

let seq = 0
function rec (over: Partial<AuditRecord> = {}): AuditRecord {
  seq++
  return {
    time: new Date().toISOString(), requestId: `req-${seq}`, decisionId: `dec-${seq}`, agentId: 'agent-a', userId: null, server: 'db',
    httpMethod: 'POST', method: 'tools/call', rpcId: seq, tool: 'database_query', outcome: 'allow', reason: 'permitted',
    policies: ['p'], policyVersion: 'v1', status: 200, durationMs: 0.5, ...over
  }
}
const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }

/** Polls until `done()` or `ms` pass; true when it happened. */
async function until (done: () => boolean, ms = 5000): Promise<boolean> {
  const end = Date.now() + ms
  while (!done()) {
    if (Date.now() > end) return false
    await sleep(20)
  }
  return true
}

t.test('memory: a publish reaches every subscriber at once; a failing one stops nothing; no history', async t => {
  const store = new MemoryStore(join(mkdtempSync(join(tmpdir(), 'mcpw-feed-')), 'pins.json'))
  t.teardown(async () => { await store.close() })
  const a: AuditRecord[] = []
  const b: AuditRecord[] = []
  const offA = store.decisions.subscribe(r => { a.push(r) })
  store.decisions.subscribe(() => { throw new Error('subscriber bug') })
  store.decisions.subscribe(r => { b.push(r) })
  const first = rec()
  t.doesNotThrow(() => { store.decisions.publish(first) }, 'a subscriber that throws does not reach the publisher')
  t.same(a, [first], 'delivered before publish returns')
  t.same(b, [first], 'to the subscriber after the failing one too')
  offA()
  const second = rec()
  store.decisions.publish(second)
  t.same(a, [first], 'removed: no more records')
  t.same(b, [first, second])
  t.same(await store.decisions.history(100), [], 'the memory store keeps no history')
})

t.test('redis', async t => {
  let redis: RedisServer
  t.before(async () => { redis = await startRedis() })
  t.teardown(async () => { await redis.close() })

  async function replica (t: Test, prefix: string, url = redis.url): Promise<RedisStore> {
    const store = new RedisStore(url, { prefix })
    t.teardown(async () => { await store.close() })
    await store.ready()
    return store
  }
  const prefix = (): string => `t${Math.random().toString(36).slice(2)}:`

  /**
   * Publishes probes on `from` until each list has received one: the readers are then blocked in
   * XREAD. Returns the probes' request ids, for the assertions to leave out.
   */
  async function live (from: RedisStore, lists: AuditRecord[][]): Promise<Set<string>> {
    const probes = new Set<string>()
    const end = Date.now() + 10_000
    while (!lists.every(l => l.some(r => probes.has(r.requestId)))) {
      if (Date.now() > end) throw new Error('the readers never started')
      const probe = rec({ requestId: `probe-${seq}` })
      probes.add(probe.requestId)
      from.decisions.publish(probe)
      await sleep(50)
    }
    return probes
  }

  t.test('a record published on one replica reaches the subscribers of both, once each', async t => {
    const p = prefix()
    const a = await replica(t, p)
    const b = await replica(t, p)
    const onA: AuditRecord[] = []
    const onB: AuditRecord[] = []
    const onB2: AuditRecord[] = []
    a.decisions.subscribe(r => { onA.push(r) })
    b.decisions.subscribe(() => { throw new Error('subscriber bug') })
    b.decisions.subscribe(r => { onB.push(r) })
    b.decisions.subscribe(r => { onB2.push(r) })
    const probes = await live(a, [onA, onB])
    await a.redis.xadd(`${p}decisions`, '*', 'r', 'not json')
    const record = rec({ agentId: '🤖 agent-ü', reason: "' OR 1=1 --" })
    a.decisions.publish(record)
    t.ok(await until(() => onB.some(r => r.requestId === record.requestId) && onA.some(r => r.requestId === record.requestId)), 'arrived on both replicas')
    const fromB = rec()
    b.decisions.publish(fromB)
    t.ok(await until(() => onA.some(r => r.requestId === fromB.requestId)), 'and the other way round')
    await sleep(200)
    const real = (list: AuditRecord[]): AuditRecord[] => list.filter(r => !probes.has(r.requestId))
    t.same(real(onA), [record, fromB], 'every field as published, each once, in order')
    t.same(real(onB), [record, fromB])
    t.same(real(onB2), [record, fromB], 'a throwing subscriber does not stop the others')
  })

  t.test('a subscriber hears records from its first subscribe on, not before', async t => {
    const p = prefix()
    const a = await replica(t, p)
    const b = await replica(t, p)
    const before = rec()
    a.decisions.publish(before)
    t.ok((await a.decisions.history(10)).some(r => r.requestId === before.requestId), 'published')
    const heard: AuditRecord[] = []
    b.decisions.subscribe(r => { heard.push(r) })
    await live(a, [heard])
    const after = rec()
    a.decisions.publish(after)
    t.ok(await until(() => heard.some(r => r.requestId === after.requestId)))
    t.notOk(heard.some(r => r.requestId === before.requestId), 'the record published before the subscribe is not delivered')
  })

  t.test('history: the newest records, oldest first', async t => {
    const p = prefix()
    const a = await replica(t, p)
    const b = await replica(t, p)
    t.same(await b.decisions.history(10), [], 'an empty stream: nothing')
    const published = [rec(), rec({ outcome: 'deny' }), rec({ event: 'approval', approvalId: 'ap-1', approver: 'grace' }), rec(), rec()]
    for (const r of published) a.decisions.publish(r)
    // A publish is not waited for: the same connection's next command runs after it.
    const mine = await a.decisions.history(100)
    t.same(mine, published, 'every record, as published, oldest first')
    t.same(await b.decisions.history(100), published, 'read from another replica')
    t.same(await b.decisions.history(2), published.slice(3), 'max: the newest ones, still oldest first')
    t.same(await b.decisions.history(0), [])
    t.same(await b.decisions.history(-5), [])
    t.same(await b.decisions.history(Number.NaN), [])

    // Entries some other writer left in the stream: not records, skipped.
    const key = `${p}decisions`
    await a.redis.xadd(key, '*', 'r', '{"time": "cut off')
    await a.redis.xadd(key, '*', 'r', '[1, 2]')
    await a.redis.xadd(key, '*', 'other', '{}')
    const last = rec()
    a.decisions.publish(last)
    t.same(await b.decisions.history(100), [...published, last], 'entries that are not records are skipped')
  })

  t.test('close() returns at once while the reader is blocked in XREAD; nothing is delivered after it', async t => {
    const p = prefix()
    const a = await replica(t, p)
    const b = await replica(t, p)
    const heard: AuditRecord[] = []
    a.decisions.subscribe(r => { heard.push(r) })
    await live(b, [heard])
    await sleep(300) // blocked in a read that would last up to 2 s
    const started = performance.now()
    await a.close()
    const took = performance.now() - started
    t.ok(took < 1000, `close() took ${took.toFixed(0)} ms`)
    const count = heard.length
    b.decisions.publish(rec())
    await sleep(300)
    t.equal(heard.length, count, 'closed: no more records')
    t.doesNotThrow(() => { a.decisions.publish(rec()) }, 'publishing on a closed store is a no-op')
  })

  t.test('Redis away: publish neither throws nor waits, history is a 503; the reader resumes when Redis is back', async t => {
    const own = await startRedis()
    t.teardown(async () => { await own.close() })
    const p = prefix()
    const a = await replica(t, p, own.url)
    const heard: AuditRecord[] = []
    a.decisions.subscribe(r => { heard.push(r) })
    await live(a, [heard])
    await own.stop()
    await until(() => !a.available())
    t.doesNotThrow(() => { a.decisions.publish(rec()) }, 'publish while Redis is down: dropped quietly')
    await t.rejects(a.decisions.history(10), StoreUnavailableError)
    // A replica that starts, and subscribes, while Redis is away.
    const late = new RedisStore(own.url, { prefix: p })
    t.teardown(async () => { await late.close() })
    const lateHeard: AuditRecord[] = []
    late.decisions.subscribe(r => { lateHeard.push(r) })
    await own.start()
    await a.ready(10_000)
    const after = rec()
    t.ok(await until(() => {
      if (heard.some(r => r.requestId === after.requestId) && lateHeard.some(r => r.requestId === after.requestId)) return true
      a.decisions.publish(after)
      return false
    }, 10_000), 'a record published after the restart is delivered, to the replica that subscribed while Redis was away too')
  })
})
