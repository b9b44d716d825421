/**
 * Traces (DESIGN.md §12), against a real OTLP/HTTP receiver started here, a real MCP server and
 * the real SDK client: the span tree of an allowed, a denied and an approval-required call; the
 * trace continued from the traceparent header or from params._meta; the upstream request carrying
 * the trace on in both; no argument or token in what is exported; and, with tracing off, the
 * agent's trace context passed on unchanged.
 */
import { randomBytes } from 'node:crypto'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { request } from 'undici'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import { InMemorySpanExporter, SimpleSpanProcessor, TracerProvider } from '@opentelemetry/sdk-trace'
import { validateConfig } from '../lib/config.js'
import { buildGateway } from '../lib/gateway.js'
import { makeIssuer } from './fixtures/keys.js'
import { PUBLIC_URL, publicKeyFile, startGateway, startWithConfig, type TestGateway } from './fixtures/gateway.js'
import { startDemo } from '../lib/demo/index.js'
import { startRecordingUpstream, type RecordingUpstream } from './fixtures/upstream.js'
import { startOtlpReceiver, type OtlpReceiver, type ReceivedSpan } from './fixtures/otlp-receiver.js'
import { refused } from './fixtures/refused.js'

const issuer = makeIssuer('EdDSA')
const POLICIES = {
  schema: new URL('../cedar/schema.cedarschema', import.meta.url).pathname,
  policies: new URL('./fixtures/cedar/tracing', import.meta.url).pathname,
  watch: false
}
const SECRET_ARG = 'arg-secret-7f3a91'

let upstream: RecordingUpstream
let receiver: OtlpReceiver
let gw: TestGateway

t.before(async () => {
  upstream = await startRecordingUpstream()
  receiver = await startOtlpReceiver()
  gw = await startGateway({
    issuer,
    upstreams: { rec: { url: upstream.url } },
    extra: { authorization: POLICIES, telemetry: { serviceName: 'warden-under-test', otlp: { endpoint: receiver.endpoint } } }
  })
})
t.teardown(async () => {
  await gw.close()
  await upstream.close()
  await receiver.close()
})

const hex = (bytes: number): string => randomBytes(bytes).toString('hex')
const token = (): string => issuer.sign({ sub: 'tracer-bot', agentId: 'tracer-bot', userId: 'tina', aud: gw.resource('rec') })

/** A client whose every request carries a traceparent of a new trace; returns it with that trace. */
async function tracedClient (): Promise<{ client: Client, traceId: string, parentId: string }> {
  const traceId = hex(16)
  const parentId = hex(8)
  const client = new Client({ name: 'tracing-test', version: '1' })
  await client.connect(new StreamableHTTPClientTransport(new URL(gw.url('rec')), {
    requestInit: { headers: { authorization: `Bearer ${token()}`, traceparent: `00-${traceId}-${parentId}-01`, tracestate: 'agent=1' } }
  }))
  return { client, traceId, parentId }
}

/** The spans of one request: its server span and every span below it. */
function treeOf (spans: ReceivedSpan[], root: ReceivedSpan): ReceivedSpan[] {
  const out = [root]
  for (let i = 0; i < out.length; i++) out.push(...spans.filter(s => s.parentSpanId === out[i]!.spanId))
  return out
}

function callSpan (spans: ReceivedSpan[], traceId: string, name: string): ReceivedSpan | undefined {
  return spans.find(s => s.traceId === traceId && s.kind === 2 && s.name === name)
}

t.test('an allowed call: server span in the agent\'s trace, a span per stage, the upstream span, and the trace carried on in header and _meta', async t => {
  const { client, traceId, parentId } = await tracedClient()
  t.teardown(async () => { await client.close() })
  const before = upstream.received.length
  const result = await client.callTool({ name: 'echo', arguments: { text: SECRET_ARG } })
  t.same(result.content, [{ type: 'text', text: SECRET_ARG }])

  await receiver.waitFor(spans => callSpan(spans, traceId, 'tools/call echo') !== undefined &&
    spans.some(s => s.traceId === traceId && s.kind === 3 && s.name === 'tools/call echo'))
  const root = callSpan(receiver.spans, traceId, 'tools/call echo')!
  t.equal(root.parentSpanId, parentId, 'the server span continues the agent\'s span')
  t.equal(root.service, 'warden-under-test')
  t.match(root.attributes, {
    'mcp.method.name': 'tools/call',
    'gen_ai.tool.name': 'echo',
    'mcp_warden.server': 'rec',
    'mcp_warden.decision': 'allow',
    'mcp_warden.outcome': 'allow',
    'mcp_warden.policies': ['allow-agents'],
    'mcp_warden.agent_id': 'tracer-bot',
    'http.response.status_code': 200
  })
  t.type(root.attributes['mcp_warden.decision_id'], 'string')
  t.type(root.attributes['mcp_warden.upstream_token_id'], 'string')
  t.type(root.attributes['mcp.session.id'], 'string')

  const tree = treeOf(receiver.spans, root)
  const children = tree.filter(s => s.parentSpanId === root.spanId)
  const names = children.map(s => s.name)
  for (const stage of ['mcp_warden.identity', 'mcp_warden.parse', 'mcp_warden.authz', 'mcp_warden.filter', 'mcp_warden.mint']) {
    t.ok(names.includes(stage), `a ${stage} span`)
  }
  const client3 = children.find(s => s.kind === 3)!
  t.equal(client3.name, 'tools/call echo', 'the upstream call is a client span')
  t.equal(client3.attributes['mcp_warden.server'], 'rec')
  for (const s of children) {
    t.ok(s.startNs >= root.startNs && s.endNs <= root.endNs, `${s.name} lies within the request`)
  }

  const sent = upstream.received.slice(before).find(r => (r.body as { method?: string } | undefined)?.method === 'tools/call')!
  const expected = `00-${traceId}-${client3.spanId}-01`
  t.equal(sent.headers.traceparent, expected, 'the upstream request\'s traceparent is the upstream span')
  t.equal(sent.headers.tracestate, 'agent=1', 'tracestate goes on')
  t.same((sent.body as { params: { _meta: unknown } }).params._meta, { traceparent: expected, tracestate: 'agent=1' }, 'and so does params._meta')
  t.match(sent.raw, `"arguments":{"text":"${SECRET_ARG}"}`, 'the arguments reach the upstream as sent')

  const exported = receiver.bodies.join('\n')
  t.notMatch(exported, SECRET_ARG, 'no argument is exported')
  t.notMatch(exported, /eyJ[A-Za-z0-9_-]{10,}\./, 'no token is exported')
})

t.test('a denied call: the decision and policies on the server span, no upstream span, nothing forwarded', async t => {
  const { client, traceId } = await tracedClient()
  t.teardown(async () => { await client.close() })
  const before = upstream.received.length
  const e = await refused(client.callTool({ name: 'add_tool', arguments: { name: 'x' } }))
  t.equal(e.code, -32602, 'a tool the agent may not call is answered as unknown')
  t.equal(upstream.received.slice(before).filter(r => (r.body as { method?: string } | undefined)?.method === 'tools/call').length, 0, 'nothing forwarded')

  await receiver.waitFor(spans => callSpan(spans, traceId, 'tools/call add_tool') !== undefined)
  const root = callSpan(receiver.spans, traceId, 'tools/call add_tool')!
  t.match(root.attributes, { 'mcp_warden.decision': 'deny', 'mcp_warden.outcome': 'deny', 'mcp_warden.policies': ['no-adding'], 'gen_ai.tool.name': 'add_tool' })
  const names = treeOf(receiver.spans, root).slice(1).map(s => s.name).sort()
  t.same(names, ['mcp_warden.authz', 'mcp_warden.identity', 'mcp_warden.parse'], 'identity, parse and authz; no filter, mint or upstream')
})

t.test('an approval-required call: the approval on the server span, no upstream span, nothing forwarded', async t => {
  const { client, traceId } = await tracedClient()
  t.teardown(async () => { await client.close() })
  const before = upstream.received.length
  const e = await refused(client.callTool({ name: 'count', arguments: { n: 2 } }))
  t.equal(e.code, -32003)
  const approvalId = (e.data as { approvalId: string }).approvalId
  t.type(approvalId, 'string')
  t.equal(upstream.received.slice(before).filter(r => (r.body as { method?: string } | undefined)?.method === 'tools/call').length, 0, 'nothing forwarded')

  await receiver.waitFor(spans => callSpan(spans, traceId, 'tools/call count') !== undefined)
  const root = callSpan(receiver.spans, traceId, 'tools/call count')!
  t.match(root.attributes, {
    'mcp_warden.decision': 'deny',
    'mcp_warden.policies': ['count-needs-approval'],
    'mcp_warden.approval.id': approvalId,
    'mcp_warden.approval.status': 'required'
  })
  t.notOk(treeOf(receiver.spans, root).some(s => s.kind === 3), 'no upstream span')
})

/** One JSON-RPC POST with the session of a fresh client (raw, so the body and headers are exact). */
async function rawCall (body: string, headers: Record<string, string> = {}): Promise<{ status: number, sessionId: string }> {
  const client = new Client({ name: 'tracing-raw', version: '1' })
  const transport = new StreamableHTTPClientTransport(new URL(gw.url('rec')), { requestInit: { headers: { authorization: `Bearer ${token()}` } } })
  await client.connect(transport)
  const sessionId = transport.sessionId!
  const res = await request(gw.url('rec'), {
    method: 'POST',
    headers: { authorization: `Bearer ${token()}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream', 'mcp-session-id': sessionId, 'mcp-protocol-version': '2025-06-18', ...headers },
    body
  })
  await res.body.text()
  await client.close()
  return { status: res.statusCode, sessionId }
}

t.test('the trace continues from params._meta.traceparent when there is no header; the agent\'s _meta is replaced, its other values kept byte for byte', async t => {
  const traceId = hex(16)
  const parentId = hex(8)
  const before = upstream.received.length
  const body = `{"jsonrpc":"2.0","id":77,"method":"tools/call","params":{"name":"echo","arguments":{"text":"caf\\u00e9 \\/ 1.50"} ,  "_meta":{ "progressToken":1.50e1, "traceparent" : "00-${traceId}-${parentId}-01"}}}`
  const { status } = await rawCall(body)
  t.equal(status, 200)
  await receiver.waitFor(spans => callSpan(spans, traceId, 'tools/call echo') !== undefined && spans.some(s => s.traceId === traceId && s.kind === 3))
  const root = callSpan(receiver.spans, traceId, 'tools/call echo')!
  t.equal(root.parentSpanId, parentId, 'parent from _meta')
  const up = receiver.spans.find(s => s.traceId === traceId && s.kind === 3)!
  const sent = upstream.received.slice(before).find(r => (r.body as { method?: string } | undefined)?.method === 'tools/call')!
  const expected = `00-${traceId}-${up.spanId}-01`
  t.equal(sent.headers.traceparent, expected)
  t.equal(sent.raw, body.replace(`00-${traceId}-${parentId}-01`, expected), 'only the traceparent value changed: escapes, number forms and spacing are as the agent sent them')
})

t.test('a header traceparent wins over _meta; a malformed one starts a new trace', async t => {
  const headerTrace = hex(16)
  const metaTrace = hex(16)
  await rawCall(`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"a"},"_meta":{"traceparent":"00-${metaTrace}-${hex(8)}-01"}}}`,
    { traceparent: `00-${headerTrace}-${hex(8)}-01` })
  await receiver.waitFor(spans => callSpan(spans, headerTrace, 'tools/call echo') !== undefined)
  t.notOk(receiver.spans.some(s => s.traceId === metaTrace), 'the _meta trace is not used when the header has one')

  const before = receiver.spans.length
  for (const bad of ['00-zz-yy-01', `00-${'0'.repeat(32)}-${hex(8)}-01`, `00-${hex(16)}-${hex(8)}-01-${'x'.repeat(200)}`, `ff-${hex(16)}-${hex(8)}-01`]) {
    const before2 = upstream.received.length
    const { status } = await rawCall('{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"text":"b"}}}', { traceparent: bad })
    t.equal(status, 200, `a malformed traceparent (${bad.slice(0, 24)}…) breaks nothing`)
    const sent = upstream.received.slice(before2).find(r => (r.body as { method?: string } | undefined)?.method === 'tools/call')!
    t.match(String(sent.headers.traceparent), /^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$/, 'the upstream gets a well-formed traceparent')
    t.notOk(String(sent.headers.traceparent).includes('x'.repeat(10)))
  }
  await receiver.waitFor(spans => spans.length > before)
})

t.test('tracing off: no spans, and the agent\'s traceparent and body reach the upstream unchanged', async t => {
  const off = await startGateway({ issuer, upstreams: { rec: { url: upstream.url } }, extra: { authorization: POLICIES } })
  t.teardown(async () => { await off.close() })
  t.equal(off.app.mcpWarden.tracer, null)
  const traceparent = `00-${hex(16)}-${hex(8)}-01`
  const client = new Client({ name: 'tracing-off', version: '1' })
  await client.connect(new StreamableHTTPClientTransport(new URL(off.url('rec')), {
    requestInit: { headers: { authorization: `Bearer ${issuer.sign({ sub: 'a', agentId: 'a', aud: off.resource('rec') })}`, traceparent, tracestate: 'k=v' } }
  }))
  t.teardown(async () => { await client.close() })
  const spansBefore = receiver.spans.length
  const before = upstream.received.length
  await client.callTool({ name: 'echo', arguments: { text: 'off' }, _meta: { traceparent: 'agent-value' } })
  const sent = upstream.received.slice(before).find(r => (r.body as { method?: string } | undefined)?.method === 'tools/call')!
  t.equal(sent.headers.traceparent, traceparent)
  t.equal(sent.headers.tracestate, 'k=v')
  t.equal((sent.body as { params: { _meta: { traceparent: string } } }).params._meta.traceparent, 'agent-value', 'the body is forwarded as sent')
  await new Promise(resolve => setTimeout(resolve, 100))
  t.equal(receiver.spans.length, spansBefore, 'nothing exported')
})

t.test('a host\'s own tracer provider records the spans; a trace the agent did not sample is followed, not recorded', async t => {
  const exporter = new InMemorySpanExporter()
  const provider = new TracerProvider({ spanProcessors: [new SimpleSpanProcessor({ exporter })] })
  const config = validateConfig({
    publicUrl: PUBLIC_URL,
    identity: { issuer: issuer.issuer, publicKeyFile: publicKeyFile(issuer), algorithms: [issuer.alg] },
    authorization: POLICIES,
    tokens: { keysDir: mkdtempSync(join(tmpdir(), 'mcpw-keys-')) },
    toolScan: { pins: join(mkdtempSync(join(tmpdir(), 'mcpw-pins-')), 'pins.json') },
    upstreams: { rec: { url: upstream.url } },
    audit: { destination: join(mkdtempSync(join(tmpdir(), 'mcpw-audit-')), 'audit.log') },
    logLevel: 'silent'
  })
  const app = await buildGateway(config, { tracerProvider: provider })
  t.teardown(async () => { await app.close() })
  await app.listen({ host: '127.0.0.1', port: 0 })
  const url = `http://127.0.0.1:${(app.server.address() as { port: number }).port}/servers/rec/mcp`

  const connect = async (traceparent: string): Promise<Client> => {
    const client = new Client({ name: 'own-provider', version: '1' })
    await client.connect(new StreamableHTTPClientTransport(new URL(url), {
      requestInit: { headers: { authorization: `Bearer ${issuer.sign({ sub: 'h', agentId: 'h', aud: `${PUBLIC_URL}/servers/rec/mcp` })}`, traceparent } }
    }))
    t.teardown(async () => { await client.close() })
    return client
  }
  const sampled = hex(16)
  await (await connect(`00-${sampled}-${hex(8)}-01`)).callTool({ name: 'echo', arguments: { text: 'mine' } })
  const names = (): string[] => exporter.getFinishedSpans().filter(s => s.spanContext().traceId === sampled).map(s => s.name)
  for (let i = 0; i < 100 && !names().includes('tools/call echo'); i++) await new Promise(resolve => setTimeout(resolve, 20))
  t.ok(names().includes('tools/call echo') && names().includes('mcp_warden.authz'), 'recorded by the host\'s provider')

  const unsampled = hex(16)
  const before = upstream.received.length
  await (await connect(`00-${unsampled}-${hex(8)}-00`)).callTool({ name: 'echo', arguments: { text: 'not sampled' } })
  await new Promise(resolve => setTimeout(resolve, 100))
  t.notOk(exporter.getFinishedSpans().some(s => s.spanContext().traceId === unsampled), 'nothing recorded')
  const sent = upstream.received.slice(before).find(r => (r.body as { method?: string } | undefined)?.method === 'tools/call')!
  t.match(String(sent.headers.traceparent), new RegExp(`^00-${unsampled}-[0-9a-f]{16}-00$`), 'the trace goes on, not sampled')
  await provider.shutdown()
})

t.test('the aggregated endpoint: its span is the parent of the server route\'s span of the same call', async t => {
  const traceId = hex(16)
  const parentId = hex(8)
  const client = new Client({ name: 'tracing-aggregate', version: '1' })
  await client.connect(new StreamableHTTPClientTransport(new URL(`${gw.base}/mcp`), {
    requestInit: { headers: { authorization: `Bearer ${issuer.sign({ sub: 'tracer-bot', agentId: 'tracer-bot', aud: `${PUBLIC_URL}/mcp` })}`, traceparent: `00-${traceId}-${parentId}-01` } }
  }))
  t.teardown(async () => { await client.close() })
  await client.listTools()
  const result = await client.callTool({ name: 'rec__echo', arguments: { text: 'through /mcp' } })
  t.same(result.content, [{ type: 'text', text: 'through /mcp' }])

  await receiver.waitFor(spans => callSpan(spans, traceId, 'tools/call rec__echo') !== undefined && callSpan(spans, traceId, 'tools/call echo') !== undefined &&
    spans.some(s => s.traceId === traceId && s.kind === 3))
  const outer = callSpan(receiver.spans, traceId, 'tools/call rec__echo')!
  const inner = callSpan(receiver.spans, traceId, 'tools/call echo')!
  t.equal(outer.parentSpanId, parentId, 'the aggregated request continues the agent\'s trace')
  t.equal(inner.parentSpanId, outer.spanId, 'the server route\'s request is its child')
  t.equal(inner.attributes['mcp_warden.decision'], 'allow')
  t.ok(receiver.spans.some(s => s.traceId === traceId && s.kind === 3 && s.parentSpanId === inner.spanId), 'the upstream span is under the server route\'s')
})

t.test('names an agent makes up are cut on spans: a 500 KB tool name exports a span of a few KB (the span export cannot be made to grow with the message)', async t => {
  const traceId = hex(16)
  const before = receiver.bodies.length
  const name = 'n'.repeat(500_000)
  const { status } = await rawCall(JSON.stringify({ jsonrpc: '2.0', id: 5, method: 'tools/call', params: { name, arguments: {} } }), { traceparent: `00-${traceId}-${hex(8)}-01` })
  t.equal(status, 200, 'the call itself is answered (an unknown tool)')
  await receiver.waitFor(spans => spans.some(s => s.traceId === traceId && s.kind === 2 && s.name.startsWith('tools/call ')))
  const root = receiver.spans.find(s => s.traceId === traceId && s.kind === 2)!
  t.equal(root.name, `tools/call ${'n'.repeat(128)}…`)
  t.equal(root.attributes['gen_ai.tool.name'], `${'n'.repeat(128)}…`)
  const exported = receiver.bodies.slice(before).join('')
  t.ok(exported.length < 50_000, `the export is small (${exported.length} bytes)`)
})

t.test('an upstream that verifies its ephemeral tokens accepts traced calls: the token is bound to the message with its _meta.traceparent (regression: every traced call was refused)', async t => {
  const dataDir = mkdtempSync(join(tmpdir(), 'mcpw-trace-demo-'))
  const demo = await startDemo({ dataDir, port: 0, overrides: { telemetry: { otlp: { endpoint: receiver.endpoint } } } })
  const traced = await startWithConfig(demo.config)
  t.teardown(async () => { await traced.close(); await demo.close() })
  const traceId = hex(16)
  const client = new Client({ name: 'tracing-verified', version: '1' })
  const token = demo.token({ agentId: 'analyst-bot', userId: 'alice', roles: ['analyst'], department: 'analytics' })
  await client.connect(new StreamableHTTPClientTransport(new URL(traced.url('db')), { requestInit: { headers: { authorization: `Bearer ${token}`, traceparent: `00-${traceId}-${hex(8)}-01` } } }))
  t.teardown(async () => { await client.close() })
  const result = await client.callTool({ name: 'database_query', arguments: { sql: 'SELECT 1 AS one' } })
  t.notOk(result.isError, 'the upstream verified the token and answered')
  t.match(JSON.stringify(result.content), /one/)
  await receiver.waitFor(spans => spans.some(s => s.traceId === traceId && s.kind === 3))
  const up = receiver.spans.find(s => s.traceId === traceId && s.kind === 3)!
  const root = receiver.spans.find(s => s.spanId === up.parentSpanId)!
  const mint = receiver.spans.find(s => s.traceId === traceId && s.name === 'mcp_warden.mint' && s.parentSpanId === root.spanId)!
  t.ok(up.startNs <= mint.startNs && mint.endNs <= up.endNs, 'the upstream span covers obtaining its credential and the call')
})
