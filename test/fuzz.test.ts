/**
 * Seeded fuzzing through a real gateway (fast-check, bounded in count and time): generated
 * JSON-RPC messages, headers and bodies from the agent, and generated answers from a hostile
 * upstream (content types, SSE line ends, arrays, ids, shapes). Properties: no 5xx but the
 * upstream's own 502/504, no hidden tool ever in an answer, and the gateway ready at the end.
 * FUZZ_SEED and FUZZ_RUNS override the seed (default fixed, so CI is repeatable) and the count.
 */
import t from 'tap'
import fc from 'fast-check'
import { request, Agent } from 'undici'
import type { ServerResponse } from 'node:http'
import { makeIssuer } from './fixtures/keys.js'
import { startGateway, type TestGateway } from './fixtures/gateway.js'
import { startScriptedUpstream, type ScriptedRequest, type ScriptedUpstream } from './fixtures/scripted-upstream.js'
import { POISONED } from './fixtures/malicious-upstream.js'

const SEED = Number(process.env.FUZZ_SEED ?? 20261201)
const RUNS = Number(process.env.FUZZ_RUNS ?? 400)
const issuer = makeIssuer('EdDSA')
const HIDDEN = 'poison_ignore'
const TOOLS = [
  { name: 'add', description: 'Adds two numbers.', inputSchema: { type: 'object', properties: {} } },
  { name: HIDDEN, description: POISONED.poison_ignore!.description, inputSchema: { type: 'object', properties: {} } }
]
let up: ScriptedUpstream
let gw: TestGateway
const dispatcher = new Agent({ connections: 4, headersTimeout: 10_000, bodyTimeout: 10_000 })

t.before(async () => {
  up = await startScriptedUpstream((_req, res) => { res.writeHead(202).end() })
  gw = await startGateway({ issuer, upstreams: { up: { url: up.url, auth: { type: 'none' }, timeoutSeconds: 5 } }, extra: { limits: { maxResponseBytes: 256 * 1024 } } })
})
t.teardown(async () => { await gw.close(); await up.close(); await dispatcher.close() })

// --- what a hostile upstream answers --------------------------------------------------------
const idFor = (req: ScriptedRequest, how: number): unknown => {
  const id = req.body?.id ?? null
  return [id, id, id, String(id), typeof id === 'number' ? id + 1 : 'x', null][how % 6]
}
const upstreamAnswer = fc.record({
  status: fc.constantFrom(200, 200, 200, 202, 400, 404, 500),
  type: fc.constantFrom('application/json', 'Application/JSON; charset=utf-8', 'text/event-stream', 'Text/Event-Stream', 'text/plain', 'text/html', ''),
  shape: fc.constantFrom('list', 'list', 'array', 'result', 'error', 'garbage', 'empty', 'notification'),
  idHow: fc.nat(5),
  eol: fc.constantFrom('\n', '\r\n', '\r'),
  bom: fc.boolean(),
  padding: fc.nat(4000)
})
type UpstreamAnswer = typeof upstreamAnswer extends fc.Arbitrary<infer T> ? T : never

function respond (a: UpstreamAnswer, req: ScriptedRequest, res: ServerResponse): void {
  const id = idFor(req, a.idHow)
  const message = (() => {
    switch (a.shape) {
      case 'list': return { jsonrpc: '2.0', id, result: { tools: TOOLS, pad: 'x'.repeat(a.padding) } }
      case 'array': return [{ jsonrpc: '2.0', id, result: { tools: TOOLS } }]
      case 'result': return { jsonrpc: '2.0', id, result: { content: [{ type: 'text', text: 'ok' }] } }
      case 'error': return { jsonrpc: '2.0', id, error: { code: -32601, message: 'nope' } }
      case 'notification': return { jsonrpc: '2.0', method: 'notifications/message', params: { level: 'info', data: { tools: TOOLS } } }
      case 'garbage': return '{"jsonrpc": "2.0", "result": {"tools": ' + JSON.stringify(TOOLS)
      default: return ''
    }
  })()
  const json = typeof message === 'string' ? message : JSON.stringify(message)
  const body = a.type.toLowerCase().startsWith('text/event-stream')
    ? `${a.bom ? '\ufeff' : ''}event: message${a.eol}data: ${json}${a.eol}${a.eol}`
    : json
  res.writeHead(a.status, a.type === '' ? {} : { 'content-type': a.type }).end(a.status === 202 ? '' : body)
}

/** Every JSON value an agent's client could read from an answer: the body, or each SSE data. */
function messagesIn (text: string): unknown[] {
  const out: unknown[] = []
  const tryParse = (s: string): void => { try { const v = JSON.parse(s) as unknown; out.push(...(Array.isArray(v) ? v : [v])) } catch {} }
  tryParse(text)
  for (const line of text.split(/\r\n|\r|\n/)) if (line.startsWith('data:')) tryParse(line.slice(5))
  return out
}

// --- what a hostile agent sends ---------------------------------------------------------------
const methods = fc.oneof(
  fc.constantFrom('initialize', 'ping', 'tools/list', 'tools/call', 'resources/list', 'resources/read', 'prompts/list', 'prompts/get', 'notifications/initialized', 'logging/setLevel'),
  fc.string({ maxLength: 20 }),
  fc.constantFrom('tools/call ', 'TOOLS/LIST', '', 'tools/list\u0000', 'x\ud800')
)
const agentMessage = fc.record({
  method: methods,
  id: fc.oneof(fc.integer(), fc.string({ maxLength: 8 }), fc.constant(null), fc.double(), fc.boolean()),
  withId: fc.boolean(),
  params: fc.oneof(fc.constant(undefined), fc.jsonValue({ maxDepth: 4 }), fc.record({ name: fc.oneof(fc.constantFrom('add', HIDDEN), fc.string({ maxLength: 12 })), arguments: fc.jsonValue({ maxDepth: 3 }) })),
  raw: fc.option(fc.oneof(fc.string({ maxLength: 200 }), fc.uint8Array({ maxLength: 200 }).map(b => Buffer.from(b))), { freq: 8 }),
  contentType: fc.constantFrom('application/json', 'application/json; charset=utf-8', 'text/plain', 'application/x-www-form-urlencoded', 'APPLICATION/JSON'),
  version: fc.constantFrom(undefined, '2025-06-18', '2025-11-25', '2026-07-28', 'bogus'),
  httpMethod: fc.constantFrom('POST', 'POST', 'POST', 'GET', 'DELETE'),
  answer: upstreamAnswer
})

t.test('generated agent messages and upstream answers: no 5xx of the gateway\'s own, no hidden tool, still ready', async t => {
  const token = issuer.sign({ aud: gw.resource('up'), exp: Math.floor(Date.now() / 1000) + 3600 })
  const deadline = Date.now() + 90_000
  const statuses = new Map<number, number>()
  await fc.assert(fc.asyncProperty(agentMessage, async (m) => {
    if (Date.now() > deadline) return
    up.script = (req, res) => { respond(m.answer, req, res) }
    const body = m.raw ?? JSON.stringify({ jsonrpc: '2.0', method: m.method, ...(m.withId ? { id: m.id } : {}), ...(m.params !== undefined ? { params: m.params } : {}) })
    const res = await request(gw.url('up'), {
      method: m.httpMethod,
      headers: {
        authorization: `Bearer ${token}`,
        accept: 'application/json, text/event-stream',
        ...(m.httpMethod === 'POST' ? { 'content-type': m.contentType } : {}),
        ...(m.version !== undefined ? { 'mcp-protocol-version': m.version } : {})
      },
      ...(m.httpMethod === 'POST' ? { body } : {}),
      dispatcher
    })
    const text = await res.body.text()
    statuses.set(res.statusCode, (statuses.get(res.statusCode) ?? 0) + 1)
    if (res.statusCode >= 500 && res.statusCode !== 502 && res.statusCode !== 504) {
      // The upstream's own 500 goes back as it is (its answer, not the gateway's failure).
      if (!(res.statusCode === 500 && m.answer.status === 500)) throw new Error(`gateway answered ${res.statusCode}: ${text.slice(0, 300)}`)
    }
    for (const message of messagesIn(text)) {
      const tools = (message as { result?: { tools?: unknown } }).result?.tools
      if (Array.isArray(tools) && tools.some(x => (x as { name?: unknown })?.name === HIDDEN)) throw new Error(`the hidden tool reached the agent in a list: ${text.slice(0, 300)}`)
    }
  }), { seed: SEED, numRuns: RUNS, endOnFailure: true })
  t.comment(`statuses: ${JSON.stringify(Object.fromEntries(statuses))}`)
  t.ok([...statuses.values()].reduce((a, b) => a + b, 0) > 50, 'many requests were made')
  const ready = await request(`${gw.base}/readyz`, { dispatcher })
  t.equal(ready.statusCode, 200, 'ready at the end')
  t.match(await ready.body.json(), { cedar: { healthy: true } })
})
