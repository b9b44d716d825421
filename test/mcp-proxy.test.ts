import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import { request } from 'undici'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import { ToolListChangedNotificationSchema } from '@modelcontextprotocol/sdk/types.js'
import { makeIssuer } from './fixtures/keys.js'
import { startGateway, type TestGateway } from './fixtures/gateway.js'
import { startRecordingUpstream, type RecordingUpstream } from './fixtures/upstream.js'

const issuer = makeIssuer('EdDSA')
let up: RecordingUpstream
let gw: TestGateway

t.before(async () => {
  up = await startRecordingUpstream()
  gw = await startGateway({
    issuer,
    upstreams: { echo: { url: up.url }, down: { url: 'http://127.0.0.1:9/mcp' } },
    extra: { allowedOrigins: ['https://app.example.com'], limits: { maxBodyBytes: 4096 } }
  })
})
t.teardown(async () => { await gw.close(); await up.close() })

const tokenFor = (agentId: string, server = 'echo', extra: Record<string, unknown> = {}): string =>
  issuer.sign({ sub: agentId, agentId, userId: `user-of-${agentId}`, aud: gw.resource(server), ...extra })

async function connect (token: string): Promise<{ client: Client, transport: StreamableHTTPClientTransport }> {
  const transport = new StreamableHTTPClientTransport(new URL(gw.url('echo')), {
    requestInit: { headers: { authorization: `Bearer ${token}` } }
  })
  const client = new Client({ name: 'test-agent', version: '1.0.0' })
  await client.connect(transport)
  return { client, transport }
}

/** Posts a raw body to a route and returns status, headers and parsed JSON. */
async function post (server: string, body: string | Buffer, headers: Record<string, string> = {}) {
  const res = await request(gw.url(server), {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream', ...headers },
    body
  })
  const text = await res.body.text()
  // An SSE answer carries the JSON-RPC message in its data lines.
  const payload = String(res.headers['content-type']).startsWith('text/event-stream')
    ? text.split('\n').filter(l => l.startsWith('data: ')).map(l => l.slice(6)).join('')
    : text
  return { status: res.statusCode, headers: res.headers, json: payload === '' ? undefined : JSON.parse(payload) }
}

const init = JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'raw', version: '1' } } })

t.test('the real SDK client works through the gateway: initialize, list, call, SSE, DELETE', async t => {
  const token = tokenFor('agent-a')
  const before = up.received.length
  const { client, transport } = await connect(token)
  t.ok(transport.sessionId, 'the upstream session id reaches the client')

  const tools = await client.listTools()
  t.same(tools.tools.map(x => x.name).sort(), ['add_tool', 'count', 'echo'])

  const echoed = await client.callTool({ name: 'echo', arguments: { text: 'héllo' } })
  t.same(echoed.content, [{ type: 'text', text: 'héllo' }])

  // A POST answered with an SSE stream: progress notifications stream back before the result.
  const progress: number[] = []
  const counted = await client.callTool({ name: 'count', arguments: { n: 3 } }, undefined, { onprogress: p => progress.push(p.progress) })
  t.same(counted.content, [{ type: 'text', text: 'counted to 3' }])
  t.same(progress, [1, 2, 3], 'progress notifications streamed through')

  // The standalone GET SSE stream carries server-initiated notifications.
  const changed = new Promise<void>(resolve => { client.setNotificationHandler(ToolListChangedNotificationSchema, () => { resolve() }) })
  await client.callTool({ name: 'add_tool', arguments: { name: 'late_tool' } })
  await changed
  t.ok(up.received.some(r => r.method === 'GET' && r.headers['mcp-session-id'] === transport.sessionId), 'the GET stream reached the upstream')

  const sessionId = transport.sessionId!
  t.equal(up.sessions.size, 1)
  await transport.terminateSession()
  t.equal(up.sessions.size, 0, 'DELETE ended the upstream session')
  t.ok(up.received.some(r => r.method === 'DELETE'), 'the DELETE reached the upstream')
  await client.close()

  // After DELETE the binding is gone: the old session id is unknown to the gateway.
  const n = up.received.length
  const reused = await post('echo', JSON.stringify({ jsonrpc: '2.0', id: 9, method: 'tools/list' }), { authorization: `Bearer ${token}`, 'mcp-session-id': sessionId })
  t.equal(reused.status, 404)
  t.equal(up.received.length, n, 'nothing forwarded for an ended session')

  for (const r of up.received.slice(before)) {
    const upstreamToken = String(r.headers.authorization).replace(/^Bearer /, '')
    t.not(upstreamToken, token, `the agent token never reaches the upstream (${r.method})`)
    t.notOk(JSON.stringify(r).includes(token), 'the agent token is nowhere in what the upstream received')
    const header = JSON.parse(Buffer.from(upstreamToken.split('.')[0]!, 'base64url').toString()) as { alg: string }
    t.equal(header.alg, 'EdDSA', 'the upstream got the gateway\'s own ephemeral token instead')
  }
})

t.test('a session is bound to the principal that opened it', async t => {
  const a = await connect(tokenFor('agent-a'))
  const sessionId = a.transport.sessionId!
  // The client opens its GET stream on its own after connecting; wait for it.
  while (!up.received.some(r => r.method === 'GET' && r.headers['mcp-session-id'] === sessionId)) await new Promise(resolve => setTimeout(resolve, 10))
  const n = up.received.length
  for (const [who, token] of [['another agent', tokenFor('agent-b')], ['the same agent for another user', tokenFor('agent-a', 'echo', { userId: 'someone-else' })]] as const) {
    const res = await post('echo', JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'tools/call', params: { name: 'echo', arguments: { text: 'x' } } }),
      { authorization: `Bearer ${token}`, 'mcp-session-id': sessionId })
    t.equal(res.status, 404, `${who} gets 404`)
    t.equal(res.json.error.code, -32001)
    const get = await request(gw.url('echo'), { headers: { authorization: `Bearer ${token}`, 'mcp-session-id': sessionId, accept: 'text/event-stream' } })
    await get.body.dump()
    t.equal(get.statusCode, 404, `${who} cannot open the session's GET stream`)
    const del = await request(gw.url('echo'), { method: 'DELETE', headers: { authorization: `Bearer ${token}`, 'mcp-session-id': sessionId } })
    await del.body.dump()
    t.equal(del.statusCode, 404, `${who} cannot end the session`)
  }
  t.equal(up.received.length, n, 'nothing of the hijack attempts was forwarded')
  t.equal(up.sessions.size, 1, 'the session still exists')
  const still = await a.client.callTool({ name: 'echo', arguments: { text: 'still mine' } })
  t.same(still.content, [{ type: 'text', text: 'still mine' }])
  // A made-up session id is unknown too.
  const made = await post('echo', JSON.stringify({ jsonrpc: '2.0', id: 3, method: 'tools/list' }), { authorization: `Bearer ${tokenFor('agent-a')}`, 'mcp-session-id': 'made-up' })
  t.equal(made.status, 404)
  await a.transport.terminateSession()
  await a.client.close()
})

t.test('bad messages are refused with the JSON-RPC error of the contract and forward nothing', async t => {
  const auth = { authorization: `Bearer ${tokenFor('agent-a')}` }
  const n = up.received.length
  const cases: Array<[string, () => Promise<{ status: number, json: any }>, number, number]> = [
    ['malformed JSON', async () => await post('echo', '{"jsonrpc":"2.0", "id": 1, "method": ', auth), 400, -32700],
    ['empty body', async () => await post('echo', '', auth), 400, -32700],
    ['a batch', async () => await post('echo', `[${init}]`, auth), 400, -32600],
    ['not JSON-RPC', async () => await post('echo', '{"hello":"world"}', auth), 400, -32600],
    ['wrong jsonrpc version', async () => await post('echo', '{"jsonrpc":"1.0","id":1,"method":"ping"}', auth), 400, -32600],
    ['a null id', async () => await post('echo', '{"jsonrpc":"2.0","id":null,"method":"ping"}', auth), 400, -32600],
    ['tools/call without a name', async () => await post('echo', '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}', auth), 400, -32600],
    ['__proto__ pollution', async () => await post('echo', '{"jsonrpc":"2.0","id":1,"method":"ping","params":{"__proto__":{"x":1}}}', auth), 400, -32700],
    ['an oversized body', async () => await post('echo', JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'ping', params: { pad: 'x'.repeat(8000) } }), auth), 413, -32600],
    ['text/plain', async () => await post('echo', init, { ...auth, 'content-type': 'text/plain' }), 415, -32600],
    ['a foreign Origin', async () => await post('echo', init, { ...auth, origin: 'https://evil.example' }), 403, -32600],
    ['an unknown server', async () => await post('nope', init, auth), 404, -32600]
  ]
  for (const [name, run, status, code] of cases) {
    const res = await run()
    t.equal(res.status, status, `${name}: HTTP ${status}`)
    t.equal(res.json?.jsonrpc, '2.0', `${name}: JSON-RPC error body`)
    t.equal(res.json?.error?.code, code, `${name}: JSON-RPC ${code}`)
    t.type(res.json?.error?.message, 'string')
  }
  t.equal(up.received.length, n, 'the upstream received nothing')

  const put = await request(gw.url('echo'), { method: 'PUT', headers: { ...auth, 'content-type': 'application/json' }, body: init })
  t.equal(put.statusCode, 405)
  t.equal(put.headers.allow, 'POST, GET, DELETE')
  t.equal(((await put.body.json()) as any).error.code, -32600)
  t.equal(up.received.length, n, 'nor for PUT')

  const badId = await post('echo', '{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":""}}', auth)
  t.equal(badId.json.id, 7, 'the error answers the request id when there is one')
})

t.test('Origin: none, publicUrl\'s own and allowedOrigins pass', async t => {
  for (const origin of [undefined, 'http://gateway.test:8080', 'https://app.example.com']) {
    const res = await post('echo', init, { authorization: `Bearer ${tokenFor('agent-o')}`, ...(origin !== undefined ? { origin } : {}) })
    t.equal(res.status, 200, `origin ${origin ?? '(none)'} passes`)
    t.equal(res.json.result.serverInfo.name, 'recording-upstream')
  }
})

t.test('upstream down is 502 and upstream timeout is 504, each with a JSON-RPC error', async t => {
  const down = await post('down', init, { authorization: `Bearer ${tokenFor('agent-a', 'down')}` })
  t.equal(down.status, 502)
  t.equal(down.json.error.code, -32011)
  t.match(down.json.error.message, /"down" is unreachable/)

  // An upstream that accepts the request and never answers.
  let hits = 0
  const silent = createServer(() => { hits++ })
  await new Promise<void>(resolve => silent.listen(0, '127.0.0.1', () => { resolve() }))
  const slowGw = await startGateway({ issuer, upstreams: { slow: { url: `http://127.0.0.1:${(silent.address() as AddressInfo).port}/mcp`, timeoutSeconds: 0.3 } } })
  t.teardown(async () => { await slowGw.close(); silent.closeAllConnections(); silent.close() })
  const res = await request(slowGw.url('slow'), {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream', authorization: `Bearer ${issuer.sign({ aud: slowGw.resource('slow') })}` },
    body: init
  })
  const json = await res.body.json() as any
  t.equal(res.statusCode, 504)
  t.equal(json.error.code, -32012)
  t.equal(hits, 1)
  t.equal(slowGw.audit.at(-1)?.outcome, 'error')
})

t.test('an upstream that refuses the gateway\'s credentials is 502, and its challenge is not passed on', async t => {
  const refusing = createServer((_req, res) => {
    res.writeHead(401, { 'www-authenticate': 'Bearer resource_metadata="http://internal/secret"', 'content-type': 'application/json' })
    res.end('{}')
  })
  await new Promise<void>(resolve => refusing.listen(0, '127.0.0.1', () => { resolve() }))
  const g = await startGateway({ issuer, upstreams: { r: { url: `http://127.0.0.1:${(refusing.address() as AddressInfo).port}/mcp` } } })
  t.teardown(async () => { await g.close(); refusing.close() })
  const res = await request(g.url('r'), { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${issuer.sign({ aud: g.resource('r') })}` }, body: init })
  const json = await res.body.json() as any
  t.equal(res.statusCode, 502)
  t.equal(json.error.code, -32013)
  t.equal(res.headers['www-authenticate'], undefined)
})

t.test('2026-07-28 routing headers must match the body; that era has no GET or DELETE', async t => {
  const auth = { authorization: `Bearer ${tokenFor('agent-h')}` }
  const n = up.received.length
  const meta = { 'io.modelcontextprotocol/protocolVersion': '2026-07-28' }
  const call = JSON.stringify({ jsonrpc: '2.0', id: 4, method: 'tools/call', params: { name: 'echo', arguments: { text: 'x' }, _meta: meta } })
  const bare = JSON.stringify({ jsonrpc: '2.0', id: 4, method: 'tools/call', params: { name: 'echo', arguments: { text: 'x' } } })
  const era = { 'mcp-protocol-version': '2026-07-28', 'mcp-method': 'tools/call', 'mcp-name': 'echo' }
  const cases: Array<[string, string, Record<string, string | undefined>, RegExp]> = [
    ['Mcp-Method differs', call, { ...era, 'mcp-method': 'tools/list' }, /Header Mcp-Method does not match the message body: the header says "tools\/list", the body "tools\/call"/],
    ['Mcp-Name differs', call, { ...era, 'mcp-name': 'count' }, /Header Mcp-Name does not match the message body: the header says "count", the body "echo"/],
    ['MCP-Protocol-Version missing', call, { ...era, 'mcp-protocol-version': undefined }, /Header MCP-Protocol-Version does not match the message body: it is required in protocol version 2026-07-28/],
    ['MCP-Protocol-Version differs', call, { ...era, 'mcp-protocol-version': '2026-09-01' }, /the header says "2026-09-01", the body's _meta "2026-07-28"/],
    ['the era header on a body without the envelope', bare, era, /the header says "2026-07-28", but the body has no _meta\["io.modelcontextprotocol\/protocolVersion"\]/],
    ['Mcp-Method missing', call, { ...era, 'mcp-method': undefined }, /Header Mcp-Method does not match the message body: it is required in protocol version 2026-07-28/],
    ['Mcp-Name missing on a tool call', call, { ...era, 'mcp-name': undefined }, /Header Mcp-Name does not match the message body: it is required for tools\/call/]
  ]
  for (const [name, body, headers, message] of cases) {
    const sent = Object.fromEntries(Object.entries({ ...auth, ...headers }).filter(([, v]) => v !== undefined)) as Record<string, string>
    const res = await post('echo', body, sent)
    t.equal(res.status, 400, `${name}: 400`)
    t.equal(res.json.error.code, -32020, `${name}: -32020`)
    t.match(res.json.error.message, message)
    t.equal(res.json.id, 4)
  }
  const named = await post('echo', JSON.stringify({ jsonrpc: '2.0', id: 5, method: 'ping' }), { ...auth, 'mcp-name': 'echo' })
  t.equal(named.json.error.code, -32020, 'a name for a message that names nothing')
  for (const method of ['GET', 'DELETE'] as const) {
    const res = await request(gw.url('echo'), { method, headers: { ...auth, 'mcp-protocol-version': '2026-07-28' } })
    t.equal(res.statusCode, 405, `${method} in the 2026-07-28 era: 405`)
    await res.body.dump()
  }
  t.equal(up.received.length, n, 'nothing forwarded')
  const matching = await post('echo', init, { ...auth, 'mcp-method': 'initialize' })
  t.equal(matching.status, 200, 'matching headers pass')
})
