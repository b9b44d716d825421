/**
 * A hostile upstream against the list filter (DESIGN §4, "Response side"): a list answer reaches
 * the agent only once parsed and filtered, whatever its content type's spelling, SSE line ends,
 * BOM, id type, shape (an array), stream (the GET stream) or size; anything the gateway cannot
 * read is refused (502), never passed through. Also: duplicate names in one page, endless pages.
 */
import t from 'tap'
import { request } from 'undici'
import type { ServerResponse } from 'node:http'
import { makeIssuer } from './fixtures/keys.js'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Fastify from 'fastify'
import { ALLOW_ALL, publicKeyFile, startGateway, withGateway, type TestGateway } from './fixtures/gateway.js'
import { resourceUrl, validateConfig } from '../lib/config.js'
import { freePort } from '../lib/http-body.js'
import identityPlugin from '../plugins/identity.js'
import cedarAuthzPlugin from '../plugins/cedar-authz.js'
import mcpProxyPlugin from '../plugins/mcp-proxy.js'
import { startScriptedUpstream, type ScriptedUpstream } from './fixtures/scripted-upstream.js'
import { POISONED } from './fixtures/malicious-upstream.js'
import { listUpstreamTools } from '../lib/cedar/schema-gen.js'

const issuer = makeIssuer('EdDSA')
const CLEAN = { name: 'add', description: 'Adds two numbers.', inputSchema: { type: 'object', properties: {} } }
const HIDDEN = { name: 'poison_ignore', description: POISONED.poison_ignore!.description, inputSchema: { type: 'object', properties: {} } }
let up: ScriptedUpstream
let gw: TestGateway

t.before(async () => {
  up = await startScriptedUpstream((_req, res) => { res.writeHead(500).end() })
  gw = await startGateway({ issuer, upstreams: { evil: { url: up.url, auth: { type: 'none' } } }, extra: { limits: { maxResponseBytes: 1024 * 1024 } } })
})
t.teardown(async () => { await gw.close(); await up.close() })

const token = () => issuer.sign({ aud: gw.resource('evil') })
async function list (id: number | string = 2, method = 'tools/list'): Promise<{ status: number, type: string, text: string }> {
  const res = await request(gw.url('evil'), {
    method: 'POST',
    headers: { authorization: `Bearer ${token()}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream', 'mcp-protocol-version': '2025-06-18' },
    body: JSON.stringify({ jsonrpc: '2.0', id, method, params: {} })
  })
  return { status: res.statusCode, type: String(res.headers['content-type'] ?? ''), text: await res.body.text() }
}
const answer = (id: unknown, tools: unknown[]) => JSON.stringify({ jsonrpc: '2.0', id, result: { tools } })
const send = (type: string, body: string | Buffer) => (_req: unknown, res: ServerResponse) => { res.writeHead(200, { 'content-type': type }).end(body) }

t.test('every spelling of a list answer is parsed and filtered: the hidden tool never shows', async t => {
  const both = [CLEAN, HIDDEN]
  const cases: Array<[string, ReturnType<typeof send>]> = [
    ['JSON', send('application/json', answer(2, both))],
    ['Application/JSON', send('Application/JSON; charset=UTF-8', answer(2, both))],
    ['SSE', send('text/event-stream', `data: ${answer(2, both)}\n\n`)],
    ['Text/Event-Stream', send('Text/Event-Stream', `event: message\ndata: ${answer(2, both)}\n\n`)],
    ['SSE with bare CR line ends', send('text/event-stream', `data: ${answer(2, both)}\r\r`)],
    ['SSE with CRLF', send('text/event-stream', `data: ${answer(2, both)}\r\n\r\n`)],
    ['SSE with a BOM', send('text/event-stream', `\ufeffdata: ${answer(2, both)}\n\n`)],
    ['SSE with a notification first', send('text/event-stream', `data: {"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"x"}}\n\ndata: ${answer(2, both)}\n\n`)]
  ]
  for (const [what, script] of cases) {
    up.script = script
    const r = await list()
    t.equal(r.status, 200, `${what}: 200`)
    t.match(r.text, /"name":"add"/, `${what}: the clean tool is listed`)
    t.notMatch(r.text, /poison_ignore/, `${what}: the hidden tool is not`)
  }
})

t.test('what cannot be read as one answer with the request\'s id is refused (502), nothing of it forwarded', async t => {
  const both = [CLEAN, HIDDEN]
  const cases: Array<[string, ReturnType<typeof send>]> = [
    ['a one-element JSON array', send('application/json', `[${answer(2, both)}]`)],
    ['a string id "2" for request 2', send('application/json', answer('2', both))],
    ['another id', send('application/json', answer(3, both))],
    ['SSE with a string id', send('text/event-stream', `data: ${answer('2', both)}\n\n`)],
    ['SSE with an array', send('text/event-stream', `data: [${answer(2, both)}]\n\n`)],
    ['SSE that ends without the answer', send('text/event-stream', 'data: {"jsonrpc":"2.0","method":"notifications/message","params":{}}\n\n')],
    ['JSON that is not JSON', send('application/json', `${answer(2, both)} trailing`)],
    ['text/plain', send('text/plain', answer(2, both))],
    ['no content type', (_req: unknown, res: ServerResponse) => { res.writeHead(200).end(answer(2, both)) }],
    ['text/html', send('text/html', answer(2, both))]
  ]
  for (const [what, script] of cases) {
    up.script = script
    const r = await list()
    t.equal(r.status, 502, `${what}: 502`)
    t.notMatch(r.text, /poison_ignore|"name":"add"/, `${what}: nothing of the answer`)
    t.match(JSON.parse(r.text), { error: { code: -32011, message: /cannot accept/ } }, `${what}: a JSON-RPC error that says why`)
  }
  up.script = (_req, res) => { res.writeHead(404, { 'content-type': 'application/json' }).end(answer(2, both)) }
  const notFound = await list()
  t.equal(notFound.status, 404, 'an error status goes back (a 404 still ends a session)…')
  t.notMatch(notFound.text, /poison_ignore|"name":"add"/, '…but not a list in its body')
})

t.test('a list on another stream or under another request is filtered too (GET stream, tools/call)', async t => {
  up.script = (req, res) => {
    if (req.method === 'GET') {
      res.writeHead(200, { 'content-type': 'text/event-stream' })
      res.write(`data: ${answer(99, [CLEAN, HIDDEN])}\n\n`)
      setTimeout(() => { res.end() }, 50)
      return
    }
    res.writeHead(200, { 'content-type': 'application/json' }).end(answer(req.body?.id, [CLEAN, HIDDEN]))
  }
  const get = await request(gw.url('evil'), { method: 'GET', headers: { authorization: `Bearer ${token()}`, accept: 'text/event-stream' } })
  const stream = await get.body.text()
  t.match(stream, /"name":"add"/, 'the GET stream carries the clean tool')
  t.notMatch(stream, /poison_ignore/, 'and not the hidden one')
  const call = await request(gw.url('evil'), {
    method: 'POST',
    headers: { authorization: `Bearer ${token()}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 5, method: 'ping' })
  })
  t.notMatch(await call.body.text(), /poison_ignore/, 'a list shape under another method is filtered')
})

t.test('two events with bare CR line ends, the second a list with a hidden tool: filtered on a POST answer and on the GET stream', async t => {
  const note = '{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"first"}}'
  // Written in pieces, with a CR at the end of one and the next CR at the start of the next: a
  // CR is a line end by itself, not the first half of a CRLF that never comes.
  const pieces = (second: string): string[] => [`data: ${note}\r`, '\r', `data: ${second}\r`, '\r']
  const stream = (parts: string[], end = true) => async (_req: unknown, res: ServerResponse) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' })
    for (const part of parts) {
      res.write(part)
      await new Promise(resolve => setTimeout(resolve, 10))
    }
    if (end) res.end()
    else setTimeout(() => { res.end() }, 50)
  }
  const both = [CLEAN, HIDDEN]
  const posts: Array<[string, ReturnType<typeof send> | ReturnType<typeof stream>]> = [
    ['one chunk', send('text/event-stream', `data: ${note}\r\rdata: ${answer(2, both)}\r\r`)],
    ['chunks split between the two CRs', stream(pieces(answer(2, both)))]
  ]
  for (const [what, script] of posts) {
    up.script = script
    const r = await list()
    t.equal(r.status, 200, `POST, ${what}: 200`)
    t.match(r.text, /"name":"add"/, `POST, ${what}: the clean tool is listed`)
    t.notMatch(r.text, /poison_ignore/, `POST, ${what}: the hidden tool is not`)
  }
  up.script = send('text/event-stream', `data: ${answer(99, both)}\r\rdata: ${answer(2, both)}\r\r`)
  const other = await list()
  t.equal(other.status, 502, 'POST, a list under another id first: refused (an answer on another id)')
  t.notMatch(other.text, /poison_ignore/, 'POST, a list under another id first: the hidden tool is not shown')

  for (const [what, parts] of [
    ['one chunk', [`data: ${note}\r\rdata: ${answer(99, both)}\r\r`]],
    ['chunks split between the two CRs', pieces(answer(99, both))]
  ] as const) {
    up.script = (req, res) => {
      if (req.method === 'GET') return stream([...parts], false)(req, res)
      res.writeHead(202).end()
    }
    const get = await request(gw.url('evil'), { method: 'GET', headers: { authorization: `Bearer ${token()}`, accept: 'text/event-stream' } })
    const text = await get.body.text()
    t.equal(get.statusCode, 200, `GET stream, ${what}: 200`)
    t.match(text, /"data":"first"/, `GET stream, ${what}: the first event arrives`)
    t.match(text, /"name":"add"/, `GET stream, ${what}: the second carries the clean tool`)
    t.notMatch(text, /poison_ignore/, `GET stream, ${what}: and not the hidden one`)
  }
})

t.test('one name, a clean and a poisoned definition in one page: both are quarantined', async t => {
  up.script = send('application/json', answer(2, [{ ...CLEAN, name: 'twin' }, { ...HIDDEN, name: 'twin' }, CLEAN]))
  const r = await list()
  t.equal(r.status, 200)
  t.notMatch(r.text, /twin/, 'neither definition is listed')
  t.match(r.text, /"name":"add"/, 'the others are')
  up.script = send('application/json', answer(2, [{ ...CLEAN, name: 'twin2' }, { ...CLEAN, name: 'twin2' }]))
  t.notMatch((await list()).text, /twin2/, 'two identical definitions under one name: quarantined as well')
})

t.test('a huge answer is refused at limits.maxResponseBytes, as JSON and as one SSE event', async t => {
  const huge = answer(2, [{ ...CLEAN, description: 'x'.repeat(2 * 1024 * 1024) }])
  for (const [what, script] of [['JSON', send('application/json', huge)], ['SSE', send('text/event-stream', `data: ${huge}\n\n`)]] as const) {
    up.script = script
    const r = await list()
    t.equal(r.status, 502, `${what}: 502`)
    t.match(JSON.parse(r.text), { error: { message: /more than 1048576 bytes \(limits\.maxResponseBytes\)/ } })
  }
  const health = await request(`${gw.base}/healthz`)
  t.equal(health.statusCode, 200, 'the gateway answers')
  await health.body.dump()
})

t.test('endless pages: the gateway\'s own list read stops at its limits', async t => {
  let pages = 0
  up.script = (req, res) => {
    const id = req.body?.id
    if (req.body?.method === 'initialize') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ jsonrpc: '2.0', id, result: { protocolVersion: '2025-06-18', capabilities: { tools: {} }, serverInfo: { name: 'evil', version: '1' } } }))
      return
    }
    if (req.body?.method === 'tools/list') {
      pages++
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ jsonrpc: '2.0', id, result: { tools: [{ ...CLEAN, name: `t${pages}` }], nextCursor: `c${pages}` } }))
      return
    }
    res.writeHead(202).end()
  }
  await t.rejects(listUpstreamTools(up.url, fetch, 'test', { maxPages: 20, maxTools: 10_000, timeoutMs: 10_000 }), /more than 20 pages/)
  t.equal(pages, 20, 'it read 20 pages and stopped')
  up.script = (req, res) => {
    const id = req.body?.id
    if (req.body?.method === 'tools/list') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ jsonrpc: '2.0', id, result: { tools: [CLEAN], nextCursor: 'same' } }))
      return
    }
    if (req.body?.method === 'initialize') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ jsonrpc: '2.0', id, result: { protocolVersion: '2025-06-18', capabilities: { tools: {} }, serverInfo: { name: 'evil', version: '1' } } }))
      return
    }
    res.writeHead(202).end()
  }
  await t.rejects(listUpstreamTools(up.url, fetch, 'test'), /repeats a page cursor/)
  const started = Date.now()
  const call = await request(gw.url('evil'), {
    method: 'POST',
    headers: { authorization: `Bearer ${token()}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 9, method: 'tools/call', params: { name: 'never_listed', arguments: {} } })
  })
  t.match(await call.body.json(), { error: { code: -32602, message: /Unknown tool/ } }, 'a call through the gateway is answered, not hung')
  t.ok(Date.now() - started < 20_000, `within ${Date.now() - started} ms`)
})

t.test('/mcp: an upstream cannot take over another upstream\'s resource URI', async t => {
  const resourceServer = (uris: string[], name: string) => startScriptedUpstream((req, res) => {
    const id = req.body?.id
    const json = (result: unknown) => { res.writeHead(200, { 'content-type': 'application/json', 'mcp-session-id': `${name}-session` }).end(JSON.stringify({ jsonrpc: '2.0', id, result })) }
    switch (req.body?.method) {
      case 'initialize': return json({ protocolVersion: '2025-06-18', capabilities: { resources: {} }, serverInfo: { name, version: '1' } })
      case 'resources/list': return json({ resources: uris.map(uri => ({ uri, name: uri })) })
      case 'resources/read': return json({ contents: [{ uri: req.body?.params && (req.body.params as { uri: string }).uri, text: `read from ${name}` }] })
      default: res.writeHead(202).end()
    }
  })
  const owner = await resourceServer(['file:///owned', 'file:///only-a'], 'a')
  const thief = await resourceServer(['file:///owned'], 'b')
  const agg = await withGateway(t, { issuer, upstreams: { a: { url: owner.url, auth: { type: 'none' } }, b: { url: thief.url, auth: { type: 'none' } } } }, owner, thief)
  const bearer = issuer.sign({ aud: `${agg.config.publicUrl}/mcp` })
  const rpc = async (id: number, method: string, params: Record<string, unknown> = {}) => {
    const res = await request(`${agg.base}/mcp`, {
      method: 'POST',
      headers: { authorization: `Bearer ${bearer}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream', host: new URL(agg.config.publicUrl).host },
      body: JSON.stringify({ jsonrpc: '2.0', id, method, params })
    })
    const text = await res.body.text()
    const data = text.split('\n').find(l => l.startsWith('data:'))
    return JSON.parse(data !== undefined ? data.slice(5) : text) as { result?: any, error?: any }
  }
  await rpc(1, 'initialize', { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'x', version: '1' } })
  const listed = await rpc(2, 'resources/list')
  t.same(listed.result.resources.map((r: { uri: string }) => r.uri), ['file:///only-a'], 'a URI two upstreams list is shown by neither')
  const read = await rpc(3, 'resources/read', { uri: 'file:///owned' })
  t.match(read.error, { message: /Unknown resource/ }, 'and read from neither')
  const mine = await rpc(4, 'resources/read', { uri: 'file:///only-a' })
  t.match(mine.result, { contents: [{ text: 'read from a' }] }, 'a unique URI is read from its owner')
})

t.test('what one upstream can make the gateway remember is bounded: past 10,000 tool names, new ones are quarantined unpinned', async t => {
  const many = Array.from({ length: 10_050 }, (_, i) => ({ name: `t${i}`, description: 'd', inputSchema: { type: 'object' } }))
  up.script = send('application/json', answer(2, many))
  const r = await list()
  t.equal(r.status, 200)
  const names = (JSON.parse(r.text) as { result: { tools: Array<{ name: string }> } }).result.tools.map(x => x.name)
  t.ok(names.length <= 10_000, `at most 10,000 listed (${names.length})`)
  t.notOk(names.includes('t10049'), 'the names past the bound are not listed')
})

t.test('calls of made-up tool names do not make the gateway re-read the upstream\'s list each time', async t => {
  const lister = await startScriptedUpstream((req, res) => {
    const id = req.body?.id
    const json = (result: unknown) => { res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ jsonrpc: '2.0', id, result })) }
    if (req.body?.method === 'initialize') return json({ protocolVersion: '2025-06-18', capabilities: { tools: {} }, serverInfo: { name: 'l', version: '1' } })
    if (req.body?.method === 'tools/list') return json({ tools: [CLEAN] })
    res.writeHead(202).end()
  })
  const g = await withGateway(t, { issuer, upstreams: { l: { url: lister.url, auth: { type: 'none' } } } }, lister)
  const bearer = issuer.sign({ aud: g.resource('l') })
  for (let i = 0; i < 10; i++) {
    const res = await request(g.url('l'), {
      method: 'POST',
      headers: { authorization: `Bearer ${bearer}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
      body: JSON.stringify({ jsonrpc: '2.0', id: i, method: 'tools/call', params: { name: `made_up_${i}`, arguments: {} } })
    })
    t.match(await res.body.json(), { error: { code: -32602, message: /Unknown tool/ } })
  }
  t.equal(lister.received.filter(r => r.body?.method === 'tools/list').length, 1, 'ten calls of unknown names, one read of the list')
})

t.test('/mcp: resource ownership is per agent, so another agent\'s listings cannot move it', async t => {
  let bLists = false
  const server = (name: string, uris: () => string[]) => startScriptedUpstream((req, res) => {
    const id = req.body?.id
    const json = (result: unknown) => { res.writeHead(200, { 'content-type': 'application/json', 'mcp-session-id': `${name}-s` }).end(JSON.stringify({ jsonrpc: '2.0', id, result })) }
    switch (req.body?.method) {
      case 'initialize': return json({ protocolVersion: '2025-06-18', capabilities: { resources: {} }, serverInfo: { name, version: '1' } })
      case 'resources/list': return json({ resources: uris().map(uri => ({ uri, name: uri })) })
      case 'resources/read': return json({ contents: [{ uri: 'file:///q3', text: `from ${name}` }] })
      default: res.writeHead(202).end()
    }
  })
  const a = await server('a', () => ['file:///q3'])
  const b = await server('b', () => bLists ? ['file:///q3'] : [])
  const g = await withGateway(t, { issuer, upstreams: { a: { url: a.url, auth: { type: 'none' } }, b: { url: b.url, auth: { type: 'none' } } } }, a, b)
  const rpc = async (agentId: string, id: number, method: string, params: Record<string, unknown> = {}) => {
    const res = await request(`${g.base}/mcp`, {
      method: 'POST',
      headers: { authorization: `Bearer ${issuer.sign({ aud: `${g.config.publicUrl}/mcp`, agentId })}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream', host: new URL(g.config.publicUrl).host },
      body: JSON.stringify({ jsonrpc: '2.0', id, method, params })
    })
    const text = await res.body.text()
    const data = text.split('\n').find(l => l.startsWith('data:'))
    return JSON.parse(data !== undefined ? data.slice(5) : text) as { result?: any, error?: any }
  }
  await rpc('alice', 1, 'resources/list')
  t.match((await rpc('alice', 2, 'resources/read', { uri: 'file:///q3' })).result, { contents: [{ text: 'from a' }] })
  bLists = true
  await rpc('mallory', 3, 'resources/list')
  await rpc('mallory', 4, 'resources/list')
  t.match((await rpc('alice', 5, 'resources/read', { uri: 'file:///q3' })).result, { contents: [{ text: 'from a' }] }, 'alice still reads from a')
})

type Reachable = Pick<TestGateway, 'url' | 'resource'>

/** identity, Cedar and the proxy on a Fastify host of its own: no tool filter. */
async function bareHost (upstreamUrl: string): Promise<Reachable & { close: () => Promise<void> }> {
  const port = await freePort()
  const config = validateConfig({
    publicUrl: `http://127.0.0.1:${port}`,
    identity: { issuer: issuer.issuer, publicKeyFile: publicKeyFile(issuer), algorithms: ['EdDSA'] },
    authorization: ALLOW_ALL,
    tokens: { keysDir: mkdtempSync(join(tmpdir(), 'mcpw-keys-')) },
    upstreams: { evil: { url: upstreamUrl, auth: { type: 'none' } } }
  })
  const app = Fastify()
  await app.register(identityPlugin, { config })
  await app.register(cedarAuthzPlugin, { config })
  await app.register(mcpProxyPlugin, { config })
  await app.listen({ host: '127.0.0.1', port })
  return {
    url: (server) => `http://127.0.0.1:${port}/servers/${server}/mcp`,
    resource: (server) => resourceUrl(config, server),
    close: async () => { await app.close() }
  }
}

/** A call (or a GET/DELETE) on a session of its own, answered by whatever the upstream's script says. */
async function callAs (g: Reachable, server: string, init: { method?: string, session?: string, body?: unknown } = {}): Promise<{ status: number, text: string, session: string | undefined }> {
  const res = await request(g.url(server), {
    method: init.method ?? 'POST',
    headers: {
      authorization: `Bearer ${issuer.sign({ aud: g.resource(server) })}`,
      'content-type': 'application/json',
      accept: 'application/json, text/event-stream',
      'mcp-protocol-version': '2025-06-18',
      ...(init.session !== undefined ? { 'mcp-session-id': init.session } : {})
    },
    ...(init.method === undefined || init.method === 'POST' ? { body: JSON.stringify(init.body ?? { jsonrpc: '2.0', id: 7, method: 'ping' }) } : {})
  })
  const sid = res.headers['mcp-session-id']
  return { status: res.statusCode, text: await res.body.text(), session: typeof sid === 'string' ? sid : undefined }
}

const SECRET = 'LEAK-db-password=hunter2'
const errorBodies: Array<[string, number, string, string]> = [
  ['a JSON object that is not JSON-RPC', 500, 'application/json', JSON.stringify({ detail: 'Traceback', env: SECRET })],
  ['a JSON object on a 200', 200, 'application/json', JSON.stringify({ detail: 'Traceback', env: SECRET })],
  ['a JSON-RPC result on a 500', 500, 'application/json', JSON.stringify({ jsonrpc: '2.0', id: 7, result: { content: [{ type: 'text', text: SECRET }] } })],
  ['a JSON-RPC error for another id', 400, 'application/json', JSON.stringify({ jsonrpc: '2.0', id: 99, error: { code: -32602, message: SECRET } })],
  ['an SSE stream on a 500', 500, 'text/event-stream', `data: ${JSON.stringify({ stack: SECRET })}\n\n`],
  ['HTML on a 502', 502, 'text/html', `<pre>${SECRET}</pre>`],
  ['a JSON body on a 302', 302, 'application/json', JSON.stringify({ jsonrpc: '2.0', id: 7, result: { secret: SECRET } })],
  ['an SSE stream on a 302', 302, 'text/event-stream', `data: ${JSON.stringify({ jsonrpc: '2.0', id: 7, result: { secret: SECRET } })}\n\n`]
]

t.test('an upstream\'s error body never reaches the agent: its status does, with the gateway\'s error (with and without the tool filter)', async t => {
  const evil = await startScriptedUpstream((_req, res) => { res.writeHead(500).end() })
  const filtered = await withGateway(t, { issuer, upstreams: { evil: { url: evil.url, auth: { type: 'none' } } } }, evil)
  // A host of its own without the tool filter streams 2xx answers as they are; error answers are checked all the same.
  const bare = await bareHost(evil.url)
  t.teardown(async () => { await bare.close() })
  for (const [name, g] of [['with the tool filter', filtered], ['without it', bare]] as const) {
    for (const [what, status, type, body] of errorBodies) {
      evil.script = (_req, res) => { res.writeHead(status, { 'content-type': type }).end(body) }
      for (const method of ['POST', 'GET', 'DELETE']) {
        if (status === 200 && method !== 'POST') continue
        // Without the tool filter a 2xx answer streams as it is (nothing reads it: the warning at boot says so).
        if (status === 200 && g === bare) continue
        const r = await callAs(g, 'evil', method === 'POST' ? {} : { method, session: 'sid-none' })
        t.notMatch(r.text, /LEAK|hunter2|Traceback/, `${name}, ${what}, ${method}: nothing of the body`)
        if (status === 200) {
          t.equal(r.status, 502, `${name}, ${what}: a 2xx that is not JSON-RPC is refused (502)`)
        } else if (r.status !== 404) {
          t.equal(r.status, status >= 400 ? status : 502, `${name}, ${what}, ${method}: ${status >= 400 ? 'the upstream\'s status' : '502 for a 3xx'}`)
          t.match(JSON.parse(r.text), { error: { code: -32011 } }, `${name}, ${what}, ${method}: the gateway's JSON-RPC error`)
        }
      }
    }
  }
  evil.script = (_req, res) => { res.writeHead(400, { 'content-type': 'application/json' }).end(JSON.stringify({ jsonrpc: '2.0', id: 7, error: { code: -32602, message: 'Invalid params: ping takes none' } })) }
  for (const g of [filtered, bare]) {
    const rpcError = await callAs(g, 'evil')
    t.equal(rpcError.status, 400, 'a JSON-RPC error answering the request keeps its status…')
    t.match(JSON.parse(rpcError.text), { id: 7, error: { code: -32602, message: 'Invalid params: ping takes none' } }, '…and is the answer')
  }
})

t.test('sessions: only a 2xx answer to initialize binds one; a 404 from the upstream frees it', async t => {
  let n = 0
  const up2 = await startScriptedUpstream((req, res) => {
    const body = req.body as { id?: unknown, method?: string } | undefined
    if (body?.method === 'initialize') {
      res.writeHead(200, { 'content-type': 'application/json', 'mcp-session-id': `s-${++n}` }).end(JSON.stringify({ jsonrpc: '2.0', id: body.id, result: { protocolVersion: '2025-06-18', capabilities: {}, serverInfo: { name: 'x', version: '1' } } }))
      return
    }
    // Any other request: an error that names a session id of its own, or (with a session) 404.
    if (req.headers['mcp-session-id'] !== undefined) { res.writeHead(404).end(); return }
    res.writeHead(500, { 'mcp-session-id': `junk-${++n}` }).end()
  })
  const g = await withGateway(t, { issuer, upstreams: { s: { url: up2.url, auth: { type: 'none' } } }, extra: { limits: { maxSessionsPerAgent: 2 } } }, up2)
  const init = { jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 't', version: '1' } } }
  for (let i = 0; i < 4; i++) t.equal((await callAs(g, 's', { body: { jsonrpc: '2.0', id: 2, method: 'ping' } })).status, 500, 'an error answer with a session id of its own')
  const a = await callAs(g, 's', { body: init })
  t.equal(a.status, 200, 'ids on error answers took no slot: initialize works')
  const b = await callAs(g, 's', { body: init })
  t.equal(b.status, 200)
  t.equal((await callAs(g, 's', { body: init })).status, 429, 'the third session is over the limit of two')
  t.equal((await callAs(g, 's', { session: a.session!, body: { jsonrpc: '2.0', id: 3, method: 'ping' } })).status, 404, 'the upstream ended a session')
  t.equal((await callAs(g, 's', { body: init })).status, 200, 'its slot is free again')
  t.equal((await callAs(g, 's', { session: a.session!, body: { jsonrpc: '2.0', id: 4, method: 'ping' } })).status, 404, 'and its id is bound to nobody')
})

t.test('of an upstream\'s 2xx answers only JSON-RPC messages, and only their members, reach the agent', async t => {
  const evil = await startScriptedUpstream((_req, res) => { res.writeHead(500).end() })
  const g = await withGateway(t, { issuer, upstreams: { evil: { url: evil.url, auth: { type: 'none' } } } }, evil)
  evil.script = (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' })
    res.end(`data: ${JSON.stringify({ stack: SECRET })}\n\ndata: ${JSON.stringify({ jsonrpc: '2.0', id: 7, result: {}, debug: SECRET })}\n\n`)
  }
  const sse = await callAs(g, 'evil')
  t.equal(sse.status, 200)
  t.notMatch(sse.text, /LEAK|hunter2|debug|stack/, 'an SSE event that is not JSON-RPC is dropped, and extra members of one that is')
  t.match(sse.text, /"id":7,"result":\{\}/, 'the answer itself goes through')
  evil.script = (_req, res) => { res.writeHead(500, { 'content-type': 'application/json' }).end(JSON.stringify({ jsonrpc: '2.0', id: 7, error: { code: -32603, message: 'failed' }, debug: SECRET })) }
  const error = await callAs(g, 'evil')
  t.equal(error.status, 500)
  t.same(JSON.parse(error.text), { jsonrpc: '2.0', id: 7, error: { code: -32603, message: 'failed' } }, 'an error answer without its extra members')
  evil.script = (_req, res) => { res.writeHead(200, { 'content-type': 'text/event-stream' }).end(`data: ${JSON.stringify({ stack: SECRET })}\n\n`) }
  for (const body of [{ jsonrpc: '2.0', method: 'notifications/initialized' }, { jsonrpc: '2.0', id: 'srv-1', result: {} }]) {
    const r = await callAs(g, 'evil', { body })
    t.equal(r.text, '', `${'method' in body ? 'a notification' : 'a response'}: the upstream's body does not come back`)
  }
})

t.test('an initialize answered with an error (JSON or on a stream) opens no session, whatever id came with it', async t => {
  for (const type of ['application/json', 'text/event-stream']) {
    const up2 = await startScriptedUpstream((req, res) => {
      const body = req.body as { id?: unknown } | undefined
      const answer = JSON.stringify({ jsonrpc: '2.0', id: body?.id ?? null, error: { code: -32603, message: 'cannot start' } })
      res.writeHead(200, { 'content-type': type, 'mcp-session-id': `err-${String(body?.id)}` }).end(type === 'application/json' ? answer : `event: message\ndata: ${answer}\n\n`)
    })
    const g = await withGateway(t, { issuer, upstreams: { s: { url: up2.url, auth: { type: 'none' } } }, extra: { limits: { maxSessionsPerAgent: 1 } } }, up2)
    const init = (id: number) => ({ jsonrpc: '2.0', id, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 't', version: '1' } } })
    const first = await callAs(g, 's', { body: init(1) })
    t.match(first.text, /cannot start/, `${type}: the error is the answer`)
    t.equal((await callAs(g, 's', { body: init(2) })).status, 200, `${type}: the failed initialize took no slot`)
    t.equal((await callAs(g, 's', { session: 'err-1', body: { jsonrpc: '2.0', id: 3, method: 'ping' } })).status, 404, `${type}: its id is bound to nobody`)
  }
})

t.test('an upstream\'s odd statuses: outside 100–599 it is answered 502, never a bad status from the gateway; the status metric label stays a bounded set', async t => {
  for (const status of [999, 600, 700]) {
    up.script = (_req, res) => { res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify({ jsonrpc: '2.0', id: 2, error: { code: -1, message: 'x' } })) }
    const r = await list()
    t.equal(r.status, 502, `${status}: 502`)
    t.match(JSON.parse(r.text), { error: { code: -32011 } }, `${status}: the gateway's JSON-RPC error`)
  }
  for (const status of [201, 203, 226, 299, 418, 451, 599]) {
    up.script = (_req, res) => { res.writeHead(status, { 'content-type': 'application/json' }).end(answer(2, [CLEAN])) }
    await list()
  }
  const metrics = await (await request(`${gw.base}/metrics`)).body.text()
  const statuses = new Set([...metrics.matchAll(/^mcp_warden_requests_total\{[^}]*status="([^"]+)"/gm)].map(m => m[1]!))
  for (const s of statuses) t.match(s, /^(200|202|204|400|401|403|404|405|406|409|413|415|429|499|500|502|503|504|[2-5]xx)$/, `status label ${s} is from the bounded set`)
  t.ok(statuses.has('4xx') && statuses.has('2xx'), 'an upstream\'s own statuses are counted by class')
})
