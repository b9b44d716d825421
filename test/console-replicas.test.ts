/**
 * The console's index across replicas: two gateways on one real redis-server, each with its own
 * console. A decision made on replica A is found in B's console (the store's decision feed), a
 * console that starts later reads the feed's history, and a session cookie one replica set is
 * read by the other (shared signing keys).
 */
import { mkdtempSync } from 'node:fs'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { request } from 'undici'
import { ensureKeys } from '../lib/tokens/keys.js'
import { PUBLIC_URL, REFERENCE, startGateway, type TestGateway } from './fixtures/gateway.js'
import { makeIssuer } from './fixtures/keys.js'
import { startRecordingUpstream, type RecordingUpstream } from './fixtures/upstream.js'
import { redisAvailable, startRedis, type RedisServer } from './fixtures/redis.js'

if (!redisAvailable()) throw new Error('these tests need redis-server on the PATH (apt-get install -y redis-server)')

const issuer = makeIssuer('EdDSA')
const keysDir = join(mkdtempSync(join(tmpdir(), 'mcpw-console-replicas-')), 'keys')
ensureKeys(keysDir)
let redis: RedisServer
let up: RecordingUpstream
const gateways: TestGateway[] = []

const start = async (): Promise<TestGateway> => {
  const gw = await startGateway({
    issuer,
    upstreams: { echo: { url: up.url } },
    extra: { authorization: REFERENCE, store: redis.url, tokens: { keysDir }, admin: { listen: { host: '127.0.0.1', port: 0 } }, console: { enabled: true } }
  })
  gateways.push(gw)
  return gw
}
const adminOf = (gw: TestGateway): string => `http://127.0.0.1:${(gw.app.mcpWarden.admin.server.address() as AddressInfo).port}`

t.before(async () => {
  redis = await startRedis()
  up = await startRecordingUpstream()
})
t.teardown(async () => {
  for (const gw of gateways) await gw.close()
  await up.close()
  await redis.close()
})

async function signIn (admin: string): Promise<string> {
  const form = await request(`${admin}/console/sign-in`)
  const html = await form.body.text()
  const pre = String(form.headers['set-cookie']).split(';', 1)[0]!
  const csrf = /name="csrf" value="([^"]+)"/.exec(html)![1]!
  const token = issuer.sign({ aud: `${PUBLIC_URL}/console`, sub: 'olivia', userId: 'olivia', roles: ['viewer'] })
  const done = await request(`${admin}/console/sign-in`, { method: 'POST', headers: { cookie: pre, 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams({ csrf, token }).toString() })
  await done.body.dump()
  return String(done.headers['set-cookie']).split(';', 1)[0]!
}

async function list (gw: TestGateway, agentId: string): Promise<number> {
  const token = issuer.sign({ aud: gw.resource('echo'), agentId, sub: agentId, roles: ['readonly'] })
  const res = await request(gw.url('echo'), {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 0, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'x', version: '1' } } })
  })
  await res.body.dump()
  return res.statusCode
}

async function found (admin: string, cookie: string, agent: string, want: number): Promise<number> {
  let rows = 0
  for (let i = 0; i < 50; i++) {
    const page = await request(`${admin}/console/decisions?agent=${agent}`, { headers: { cookie } })
    const html = await page.body.text()
    rows = [...html.matchAll(/href="\/console\/decisions\/[^"]+"/g)].length
    if (rows >= want) break
    await new Promise(resolve => setTimeout(resolve, 100))
  }
  return rows
}

t.test('a decision made on one replica is in every replica\'s console, and in one that starts later', async t => {
  const a = await start()
  const b = await start()
  t.equal(await list(a, 'replica-a-bot'), 200)
  t.equal(await list(a, 'replica-a-bot'), 200)
  t.equal(await list(b, 'replica-b-bot'), 200)
  // A cookie set by A's console is a session on B's (the key comes from the shared signing keys).
  const cookie = await signIn(adminOf(a))
  t.equal(await found(adminOf(b), cookie, 'replica-a-bot', 2), 2, 'B\'s console shows A\'s two decisions')
  t.equal(await found(adminOf(a), cookie, 'replica-b-bot', 1), 1, 'A\'s console shows B\'s decision')
  const c = await start()
  t.equal(await found(adminOf(c), cookie, 'replica-a-bot', 2), 2, 'a console started later reads the shared history')
})
