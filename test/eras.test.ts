/**
 * Both protocol eras through one gateway, with real peers: the v2 SDK client
 * (`@modelcontextprotocol/client`, pinned to 2026-07-28) and the v1 SDK client (2025 era),
 * against a v2 SDK server and a v1 SDK server.
 */
import t from 'tap'
import { Client as ModernClient, StreamableHTTPClientTransport as ModernTransport } from '@modelcontextprotocol/client'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import { request } from 'undici'
import { makeIssuer } from './fixtures/keys.js'
import { startGateway, type TestGateway } from './fixtures/gateway.js'
import { startRecordingUpstream, type RecordingUpstream } from './fixtures/upstream.js'
import { startModernUpstream, type ModernUpstream } from './fixtures/modern-upstream.js'

const issuer = makeIssuer('EdDSA')
let modern: ModernUpstream
let legacy: RecordingUpstream
let gw: TestGateway

t.before(async () => {
  modern = await startModernUpstream()
  legacy = await startRecordingUpstream()
  gw = await startGateway({ issuer, upstreams: { modern: { url: modern.url }, legacy: { url: legacy.url } } })
})
t.teardown(async () => { await gw.close(); await modern.close(); await legacy.close() })

const token = (server: string, agentId = 'era-bot'): string => issuer.sign({ aud: gw.resource(server), agentId, sub: agentId })

async function modernClient (server: string): Promise<ModernClient> {
  const client = new ModernClient({ name: 'v2-client', version: '2.0.0' }, { versionNegotiation: { mode: { pin: '2026-07-28' } } })
  await client.connect(new ModernTransport(new URL(gw.url(server)), { requestInit: { headers: { authorization: `Bearer ${token(server)}` } } }))
  return client
}

t.test('the v2 client speaks 2026-07-28 through the gateway: stateless, routed by headers, filtered', async t => {
  const client = await modernClient('modern')
  t.teardown(async () => { await client.close() })
  t.equal(client.getProtocolEra(), 'modern')
  t.equal(client.getNegotiatedProtocolVersion(), '2026-07-28')

  const tools = await client.listTools()
  t.same(tools.tools.map(x => x.name), ['say'], 'the poisoned tool is quarantined in this era too')
  const r = await client.callTool({ name: 'say', arguments: { text: 'modern hello' } })
  t.same(r.content, [{ type: 'text', text: 'modern hello' }])
  await t.rejects(client.callTool({ name: 'backup', arguments: { note: 'x' } }), /Unknown tool: backup/, 'a hidden tool does not exist for the agent')

  const posts = modern.received.filter(x => x.method === 'POST')
  t.ok(posts.length >= 3)
  const call = posts.find(x => x.body?.method === 'tools/call' && x.body.params?.name === 'say')!
  t.equal(call.headers['mcp-protocol-version'], '2026-07-28', 'the era header crosses')
  t.equal(call.headers['mcp-method'], 'tools/call')
  t.equal(call.headers['mcp-name'], 'say')
  t.equal(call.headers['mcp-session-id'], undefined, 'no session in this era')
  t.match(call.headers.authorization, /^Bearer ey/, 'the upstream got an ephemeral token')
  t.notOk(call.headers.authorization!.includes(token('modern')), 'never the agent token')
  t.notOk(posts.some(x => x.body?.method === 'tools/call' && x.body.params?.name === 'backup'), 'the hidden tool was never called upstream')
  t.ok(gw.audit.some(a => a.method === 'server/discover' && a.outcome === 'allow'), 'the discovery probe is audited')
  t.ok(gw.audit.some(a => a.method === 'tools/call' && a.tool === 'say' && a.outcome === 'allow'))
})

t.test('the v1 client (2025 era) through the same gateway, to the v1 server and to the v2 server', async t => {
  for (const server of ['legacy', 'modern']) {
    const client = new Client({ name: 'v1-client', version: '1.0.0' })
    const transport = new StreamableHTTPClientTransport(new URL(gw.url(server)), { requestInit: { headers: { authorization: `Bearer ${token(server)}` } } })
    await client.connect(transport)
    t.match(client.getServerVersion(), { name: server === 'legacy' ? 'recording-upstream' : 'modern-upstream' })
    const tool = server === 'legacy' ? 'echo' : 'say'
    const tools = await client.listTools()
    t.ok(tools.tools.some(x => x.name === tool), `${server}: listed`)
    t.notOk(tools.tools.some(x => x.name === 'backup'), `${server}: nothing poisoned listed`)
    const r = await client.callTool({ name: tool, arguments: { text: `v1 to ${server}` } })
    t.same(r.content, [{ type: 'text', text: `v1 to ${server}` }])
    await client.close()
  }
  const init = legacy.received.find(x => (x.body as { method?: string } | undefined)?.method === 'initialize')
  t.ok(init !== undefined, 'the 2025 handshake reached the v1 server')
})

t.test('a forged era is refused before any policy reads it, and nothing is forwarded', async t => {
  const n = modern.received.length
  const meta = { 'io.modelcontextprotocol/protocolVersion': '2026-07-28', 'io.modelcontextprotocol/clientInfo': { name: 'x', version: '1' }, 'io.modelcontextprotocol/clientCapabilities': {} }
  // Headers say "say" (what a header-routing proxy would authorise), the body calls "backup".
  const res = await request(gw.url('modern'), {
    method: 'POST',
    headers: { authorization: `Bearer ${token('modern')}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream', 'mcp-protocol-version': '2026-07-28', 'mcp-method': 'tools/call', 'mcp-name': 'say' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'backup', arguments: { note: 'k' }, _meta: meta } })
  })
  t.equal(res.statusCode, 400)
  t.match(await res.body.json(), { id: 1, error: { code: -32020, message: /Header Mcp-Name does not match the message body/ } })
  const noVersion = await request(gw.url('modern'), {
    method: 'POST',
    headers: { authorization: `Bearer ${token('modern')}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream', 'mcp-method': 'tools/call', 'mcp-name': 'say' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'tools/call', params: { name: 'say', arguments: { text: 'k' }, _meta: meta } })
  })
  t.equal(noVersion.statusCode, 400)
  t.match(await noVersion.body.json(), { error: { code: -32020, message: /MCP-Protocol-Version .*it is required in protocol version 2026-07-28/ } })
  for (const method of ['GET', 'DELETE'] as const) {
    const r = await request(gw.url('modern'), { method, headers: { authorization: `Bearer ${token('modern')}`, 'mcp-protocol-version': '2026-07-28' } })
    await r.body.dump()
    t.equal(r.statusCode, 405, `${method}: 405 in the 2026-07-28 era`)
  }
  t.equal(modern.received.length, n, 'nothing forwarded')
})
