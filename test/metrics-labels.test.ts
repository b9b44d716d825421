/**
 * Metric labels come from bounded sets (DESIGN §12): configured servers, the spec's method names,
 * declared tools and tools the upstream itself listed, else `other`. Tested from the attacker's
 * side: thousands of made-up names must not become series.
 */
import { randomBytes } from 'node:crypto'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import { Agent, request } from 'undici'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import { validateConfig } from '../lib/config.js'
import { MAX_LABEL_LENGTH, MAX_SEEN_TOOLS, MetricLabels, OTHER } from '../lib/metric-labels.js'
import { MCP_METHODS } from '../lib/mcp-methods.js'
import { parseMcpMessage } from '../lib/jsonrpc.js'
import { makeIssuer } from './fixtures/keys.js'
import { ALLOW_ALL, withGateway } from './fixtures/gateway.js'
import { startRecordingUpstream } from './fixtures/upstream.js'

const issuer = makeIssuer('EdDSA')

function labelsFor (): MetricLabels {
  return new MetricLabels(validateConfig({
    identity: { issuer: 'https://idp.test', jwksUri: 'https://idp.test/jwks' },
    authorization: ALLOW_ALL,
    upstreams: { db: { url: 'http://127.0.0.1:1/mcp', tools: { declared_tool: { sensitivity: 'low' } } }, api: { url: 'http://127.0.0.1:2/mcp' } }
  }))
}

t.test('MetricLabels: servers, methods and tools from bounded sets', async t => {
  const labels = labelsFor()
  t.equal(labels.server('db'), 'db')
  for (const name of ['nope', '__proto__', 'constructor', '', null, undefined]) t.equal(labels.server(name), OTHER, `server ${String(name)}`)

  const msg = (body: unknown): ReturnType<typeof parseMcpMessage> => parseMcpMessage(Buffer.from(JSON.stringify(body)))
  t.equal(labels.method(msg({ jsonrpc: '2.0', id: 1, method: 'tools/list' }), 'POST'), 'tools/list')
  t.equal(labels.method(msg({ jsonrpc: '2.0', id: 1, method: 'made/up' }), 'POST'), OTHER)
  t.equal(labels.method(msg({ jsonrpc: '2.0', id: 1, method: '__proto__' }), 'POST'), OTHER)
  t.equal(labels.method(msg({ jsonrpc: '2.0', id: 1, result: {} }), 'POST'), 'response')
  t.equal(labels.method(null, 'GET'), 'GET')
  t.equal(labels.method(undefined, 'DELETE'), 'DELETE')
  t.equal(labels.method(null, 'PATCH'), OTHER)

  const never = (): boolean => false
  const always = (): boolean => true
  t.equal(labels.tool('db', 'declared_tool', never), 'declared_tool', 'a declared tool is a label without being listed')
  t.equal(labels.tool('db', 'made_up', never), OTHER, 'a tool the upstream never listed is other')
  t.equal(labels.tool('nope', 'declared_tool', always), OTHER, 'no tool of an unknown server is a label')
  t.equal(labels.tool('db', 'x'.repeat(MAX_LABEL_LENGTH + 1), always), OTHER, 'an overlong name is never a label')
  const asked: string[] = []
  t.equal(labels.tool('api', 'listed', (server, tool) => { asked.push(`${server}/${tool}`); return true }), 'listed')
  t.equal(labels.tool('api', 'listed', never), 'listed', 'once a label, it stays one')
  t.same(asked, ['api/listed'])
  // The upstream's own list is bounded too: a server that lists ever more names fills its room once.
  for (let i = 0; i < MAX_SEEN_TOOLS + 50; i++) labels.tool('api', `tool_${i}`, always)
  t.equal(labels.tool('api', 'tool_0', never), 'tool_0')
  t.equal(labels.tool('api', `tool_${MAX_SEEN_TOOLS + 10}`, always), OTHER, 'past the bound a new listed name is other')
  t.equal(labels.tool('api', 'listed', never), 'listed')
  t.equal(labels.tool('db', 'another', always), 'another', 'each server has its own room')
})

/** Every series of one metric: its label sets, as written. */
function series (text: string, metric: string): Array<Record<string, string>> {
  const out: Array<Record<string, string>> = []
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${metric}{`)) continue
    const labels: Record<string, string> = {}
    for (const m of line.slice(metric.length + 1, line.lastIndexOf('}')).matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[m[1]!] = m[2]!
    out.push(labels)
  }
  return out
}

t.test('an attacker sending thousands of made-up servers, methods and tools adds no series; a real call counts on its own', async t => {
  const up = await startRecordingUpstream()
  const gw = await withGateway(t, {
    issuer,
    upstreams: { up: { url: up.url, tools: { count: { sensitivity: 'low' } } } },
    extra: { admin: { listen: { host: '127.0.0.1', port: 0 } } }
  }, up)
  const admin = `http://127.0.0.1:${(gw.app.mcpWarden.admin.server.address() as AddressInfo).port}`
  const token = issuer.sign({ aud: gw.resource('up') })
  const client = new Client({ name: 'labels-test', version: '1' })
  const transport = new StreamableHTTPClientTransport(new URL(gw.url('up')), { requestInit: { headers: { authorization: `Bearer ${token}` } } })
  await client.connect(transport)
  t.teardown(async () => { await client.close() })
  t.same((await client.listTools()).tools.map(x => x.name).sort(), ['add_tool', 'count', 'echo'])
  t.match((await client.callTool({ name: 'echo', arguments: { text: 'hi' } })).content, [{ text: 'hi' }])

  const before = await (await request(`${admin}/metrics`)).body.text()
  const dispatcher = new Agent({ connections: 8 })
  t.teardown(async () => { await dispatcher.close() })
  // The agent's own session: every request is a valid one, with made-up names in it.
  const headers = { authorization: `Bearer ${token}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream', 'mcp-session-id': transport.sessionId!, 'mcp-protocol-version': '2025-06-18' }
  const post = async (url: string, body: Record<string, unknown>): Promise<number> => {
    const res = await request(url, { method: 'POST', headers, body: JSON.stringify({ jsonrpc: '2.0', id: 1, ...body }), dispatcher })
    await res.body.dump()
    return res.statusCode
  }
  const random = (): string => randomBytes(6).toString('hex')
  const N = 1000
  const names = ['__proto__', 'constructor', 'toString', 'hasOwnProperty', ...Array.from({ length: N }, () => `madeup_${random()}`)]
  for (let i = 0; i < names.length; i += 50) {
    await Promise.all(names.slice(i, i + 50).map(async (name, j) => {
      await post(gw.url('up'), { method: 'tools/call', params: { name, arguments: {} } })
      await post(gw.url('up'), { method: `madeup/${random()}`, params: {} })
      if (j % 5 === 0) await post(`${gw.base}/servers/s${random()}/mcp`, { method: 'ping' })
    }))
  }
  t.notOk(up.received.some(r => names.includes((r.body as { params?: { name?: string } } | undefined)?.params?.name ?? '')), 'no made-up tool reached the upstream')

  const text = await (await request(`${admin}/metrics`)).body.text()
  const requests = series(text, 'mcp_warden_requests_total')
  const calls = series(text, 'mcp_warden_tool_calls_total')
  const allowedMethods = new Set([...MCP_METHODS, OTHER, 'response', 'GET', 'POST', 'DELETE'])
  t.ok(requests.every(l => l.server === 'up' || l.server === OTHER), `servers: ${[...new Set(requests.map(l => l.server))].join(', ')}`)
  t.ok(requests.every(l => allowedMethods.has(l.method!)), `methods: ${[...new Set(requests.map(l => l.method))].join(', ')}`)
  t.ok(calls.every(l => ['echo', 'count', 'add_tool', OTHER].includes(l.tool!)), `tools: ${[...new Set(calls.map(l => l.tool))].join(', ')}`)
  t.ok(requests.length < 40, `requests_total has ${requests.length} series after ${names.length * 2} made-up requests`)
  t.ok(calls.length <= 6, `tool_calls_total has ${calls.length} series`)
  t.equal(series(before, 'mcp_warden_tool_calls_total').length, 1, 'before the attack: the one real call')
  t.match(text, /^mcp_warden_requests_total\{server="other",method="POST",outcome="deny",status="404"\} \d+$/m, 'made-up servers land in other')
  t.match(text, /^mcp_warden_requests_total\{server="up",method="other",outcome="allow",status="200"\} \d+$/m, 'made-up methods land in other')
  const other = /^mcp_warden_tool_calls_total\{server="up",tool="other",outcome="deny"\} (\d+)$/m.exec(text)
  t.equal(Number(other?.[1]), names.length, 'every made-up tool call is counted, under other')
  t.notOk(text.includes('madeup') || text.includes('__proto__') || text.includes('hasOwnProperty'), 'no made-up name appears anywhere in /metrics')
  t.notOk(text.includes(token), 'no token in metrics')

  // A real call of a listed tool, and one of a declared tool, each increment their own series.
  t.match(text, /^mcp_warden_tool_calls_total\{server="up",tool="echo",outcome="allow"\} 1$/m)
  await client.callTool({ name: 'echo', arguments: { text: 'again' } })
  await client.callTool({ name: 'count', arguments: { n: 1 } })
  const after = await (await request(`${admin}/metrics`)).body.text()
  t.match(after, /^mcp_warden_tool_calls_total\{server="up",tool="echo",outcome="allow"\} 2$/m)
  t.match(after, /^mcp_warden_tool_calls_total\{server="up",tool="count",outcome="allow"\} 1$/m)
  t.match(after, /^mcp_warden_decisions_total\{outcome="allow",mode="enforce"\} \d+$/m)
  t.equal((await request(`${gw.base}/metrics`)).statusCode, 404, 'with admin.listen, /metrics is on the admin listener only')
})
