/**
 * The aggregated endpoint `POST /mcp` in front of the demo servers with the reference
 * policies: each role sees there exactly the union of what it sees per server, and calls
 * go through the whole pipeline of the real server and tool.
 */
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { request } from 'undici'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import { demoConfig, startDemo, type Demo } from '../lib/demo/index.js'
import { REFERENCE, startWithConfig, type TestGateway } from './fixtures/gateway.js'
import { zoneWhereHourIs } from './fixtures/time.js'
import { AggregateNames } from '../lib/aggregate.js'
import { validateConfig } from '../lib/config.js'

let demo: Demo
let gw: TestGateway
const hits: Record<string, string[]> = { db: [], file: [], api: [] }

t.before(async () => {
  demo = await startDemo({ dataDir: mkdtempSync(join(tmpdir(), 'mcpw-aggregate-')), port: 0 })
  for (const name of ['db', 'file', 'api'] as const) {
    demo.upstreams[name].server.prependListener('request', (req) => {
      let body = ''
      req.on('data', (c: Buffer) => { body += c.toString() })
      req.on('end', () => { hits[name]!.push(body) })
    })
  }
  // Business hours, so that the reference policies' time rules allow what each role may do.
  gw = await startWithConfig(demoConfig({
    dataDir: demo.dataDir,
    port: demo.config.listen.port,
    urls: { db: demo.upstreams.db.url, file: demo.upstreams.file.url, api: demo.upstreams.api.url },
    overrides: { authorization: { ...REFERENCE, timezone: zoneWhereHourIs(11) } }
  }))
})
t.teardown(async () => { await gw.close(); await demo.close() })

async function connect (url: string, token: string): Promise<Client> {
  const client = new Client({ name: 'aggregate-test', version: '1' })
  await client.connect(new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers: { authorization: `Bearer ${token}` } } }))
  return client
}
const tokenOf = (role: string): string => demo.tokens().find(a => a.role === role)!.token

t.test('each role sees in /mcp exactly the union of what it sees per server', async t => {
  for (const { role } of demo.tokens()) {
    const perServer: string[] = []
    for (const server of ['db', 'file', 'api']) {
      const c = await connect(gw.url(server), tokenOf(role))
      perServer.push(...(await c.listTools()).tools.map(x => `${server}__${x.name}`))
      await c.close()
    }
    const agg = await connect(`${gw.base}/mcp`, tokenOf(role))
    const tools = (await agg.listTools()).tools
    await agg.close()
    t.same(tools.map(x => x.name).sort(), perServer.sort(), `${role}: ${perServer.length} tools`)
    t.ok(tools.every(x => typeof x.description === 'string' && x.inputSchema !== undefined), `${role}: definitions kept`)
  }
})

t.test('calls are routed to the real server and decided there', async t => {
  const agg = await connect(`${gw.base}/mcp`, tokenOf('readonly'))
  t.teardown(async () => { await agg.close() })
  t.equal(agg.getServerVersion()?.name, 'mcp-warden')
  const r = await agg.callTool({ name: 'db__database_query', arguments: { sql: 'SELECT count(*) AS n FROM customers' } })
  t.match((r.content as Array<{ text: string }>)[0]!.text, /"n":\s*\d+/)
  t.match(gw.audit.findLast(a => a.tool === 'database_query'), { server: 'db', method: 'tools/call', outcome: 'allow', agentId: 'reader-bot' }, 'audited as the real server and tool')
  t.ok(gw.audit.findLast(a => a.tool === 'database_query')!.upstreamTokenId !== undefined, 'with an ephemeral token for that upstream')

  const dropsBefore = hits.db!.filter(b => b.includes('database_drop') && b.includes('tools/call')).length
  await t.rejects(agg.callTool({ name: 'db__database_drop', arguments: { table: 'customers' } }), /Unknown tool: db__database_drop/, 'a hidden tool does not exist here either')
  await t.rejects(agg.callTool({ name: 'nowhere__tool', arguments: {} }), /Unknown tool: nowhere__tool/)
  await t.rejects(agg.callTool({ name: 'database_query', arguments: {} }), /Unknown tool: database_query/, 'no bare names when every upstream has a prefix')
  t.equal(hits.db!.filter(b => b.includes('database_drop') && b.includes('tools/call')).length, dropsBefore, 'nothing forwarded for refused calls')
})

t.test('the endpoint is a resource of its own: tokens, methods, metadata', async t => {
  const perServer = demo.token({ agentId: 'narrow-bot', roles: ['readonly'] })
  const res = await request(`${gw.base}/mcp`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/list' })
  })
  t.equal(res.statusCode, 401)
  t.equal(res.headers['www-authenticate'], `Bearer resource_metadata="${gw.config.publicUrl}/.well-known/oauth-protected-resource/mcp"`)
  t.match(await res.body.json(), { id: null, error: { code: -32001 } })
  t.match(gw.audit.at(-1), { server: null, httpMethod: 'POST', outcome: 'deny', status: 401 }, 'a refusal at /mcp is audited')
  t.ok(perServer.length > 0)

  const meta = await request(`${gw.base}/.well-known/oauth-protected-resource/mcp`)
  t.match(await meta.body.json(), { resource: `${gw.config.publicUrl}/mcp` })

  for (const method of ['GET', 'DELETE'] as const) {
    const r = await request(`${gw.base}/mcp`, { method, headers: { authorization: `Bearer ${tokenOf('readonly')}` } })
    t.equal(r.statusCode, 405, `${method}: stateless endpoint`)
    t.equal(r.headers.allow, 'POST')
    await r.body.dump()
  }

  // An in-process handle cannot be forged from outside.
  const forged = await request(gw.url('db'), {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream', 'x-mcp-warden-internal': 'A'.repeat(43) },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/list' })
  })
  t.equal(forged.statusCode, 401)
  t.match(await forged.body.json(), { error: { message: /internal request handle is unknown/ } })
})

t.test('names: prefixes, separator, unprefixed upstreams and collisions', async t => {
  const base = { identity: { issuer: 'https://idp.test', jwksUri: 'https://idp.test/jwks' }, authorization: REFERENCE }
  const c = validateConfig({ ...base, aggregate: { separator: '.' }, upstreams: { db: { url: 'http://h/mcp' }, fs: { url: 'http://h/mcp', prefix: '' }, mem: { url: 'http://h/mcp', prefix: '' }, api: { url: 'http://h/mcp', prefix: 'pay' } } })
  const n = new AggregateNames(c)
  t.equal(n.expose(c.upstreams.get('db')!, 'query'), 'db.query')
  t.equal(n.expose(c.upstreams.get('api')!, 'charge'), 'pay.charge')
  t.equal(n.expose(c.upstreams.get('fs')!, 'read_file'), 'read_file')
  t.same(n.resolve('pay.charge', () => undefined), { server: 'api', name: 'charge' })
  t.same(n.resolve('read_file', x => x === 'read_file' ? 'fs' : undefined), { server: 'fs', name: 'read_file' })
  t.equal(n.resolve('nothing', () => undefined), undefined)
  const merged = n.merge([
    { server: c.upstreams.get('fs')!, items: [{ name: 'read_file' }, { name: 'search' }] },
    { server: c.upstreams.get('mem')!, items: [{ name: 'search' }, { name: 'remember' }] },
    { server: c.upstreams.get('db')!, items: [{ name: 'query' }] }
  ])
  t.same(merged.items.map(i => i.name), ['read_file', 'remember', 'db.query'], 'a bare name offered twice is left out')
  t.same(merged.collisions, ['search'])
  t.throws(() => validateConfig({ ...base, upstreams: { a: { url: 'http://h/mcp', prefix: 'x' }, b: { url: 'http://h/mcp', prefix: 'x' } } }), { message: /upstreams\.b\.prefix: "x" is already the prefix of upstream a/ })
  t.throws(() => validateConfig({ ...base, upstreams: { a: { url: 'http://h/mcp', prefix: 'x__y' } } }), { message: /upstreams\.a\.prefix: must not contain the separator "__"/ })
  t.throws(() => validateConfig({ ...base, aggregate: { separator: ' ' }, upstreams: { a: { url: 'http://h/mcp' } } }), { message: /aggregate\.separator/ })
})
