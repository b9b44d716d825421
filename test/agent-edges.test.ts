/**
 * From the agent's side: token times (iat in the future, lifetimes past the maximum), methods an
 * MCP route does not serve (HEAD and the rest: 405, audited, forwarded nowhere), a GET stream
 * that answers its headers at once, and an exchanged token that spends its subject's budget.
 */
import t from 'tap'
import { request } from 'undici'
import { makeIssuer } from './fixtures/keys.js'
import { ALLOW_ALL, startGateway, withGateway, type TestGateway } from './fixtures/gateway.js'
import { startScriptedUpstream, type ScriptedUpstream } from './fixtures/scripted-upstream.js'

const issuer = makeIssuer('EdDSA')
let up: ScriptedUpstream
let gw: TestGateway
const now = () => Math.floor(Date.now() / 1000)

t.before(async () => {
  up = await startScriptedUpstream((req, res) => {
    if (req.method === 'GET') {
      res.writeHead(200, { 'content-type': 'text/event-stream' })
      res.flushHeaders()
      setTimeout(() => { res.end() }, 3000)
      return
    }
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ jsonrpc: '2.0', id: req.body?.id ?? null, result: {} }))
  })
  gw = await startGateway({
    issuer,
    upstreams: { up: { url: up.url, auth: { type: 'none' } } },
    extra: {
      authorization: { schema: ALLOW_ALL.schema, policies: new URL('./fixtures/cedar/sts', import.meta.url).pathname, watch: false },
      rateLimit: { max: 4, timeWindow: '1 minute', unauthenticated: { max: 1000 } }
    }
  })
})
t.teardown(async () => { await gw.close(); await up.close() })

const ping = async (bearer: string, id = 1) => {
  const res = await request(gw.url('up'), {
    method: 'POST',
    headers: { authorization: `Bearer ${bearer}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
    body: JSON.stringify({ jsonrpc: '2.0', id, method: 'ping' })
  })
  return { status: res.statusCode, text: await res.body.text() }
}

t.test('token times: iat in the future and lifetimes past identity.maxTokenLifetimeSeconds are refused', async t => {
  const aud = gw.resource('up')
  const n = up.received.length
  const cases: Array<[string, Record<string, unknown>, number, RegExp | null]> = [
    ['iat a minute ahead', { iat: now() + 60, exp: now() + 600 }, 401, /issued in the future/],
    ['iat within the clock tolerance', { iat: now() + 2, exp: now() + 600, agentId: 'tolerant' }, 200, null],
    ['a two-day token', { iat: now(), exp: now() + 2 * 86400 }, 401, /lives longer than 86400 s/],
    ['an old iat with a short remaining life (still a two-day token)', { iat: now() - 2 * 86400, exp: now() + 600 }, 401, /lives longer/],
    ['no iat and two days to go', { iat: undefined, exp: now() + 2 * 86400 }, 401, /lives longer/],
    ['iat that is not a number', { iat: 'yesterday', exp: now() + 600 }, 401, /iat/],
    ['an hour', { iat: now(), exp: now() + 3600, agentId: 'hourly' }, 200, null]
  ]
  for (const [what, claims, status, message] of cases) {
    const r = await ping(issuer.sign({ aud, ...claims }))
    t.equal(r.status, status, `${what}: ${status}`)
    if (message !== null) t.match(r.text, message, `${what}: says why`)
  }
  t.equal(up.received.length, n + 2, 'only the two good tokens reached the upstream')
})

t.test('HEAD, PUT, PATCH, OPTIONS on an MCP route: 405, audited, forwarded nowhere', async t => {
  const n = up.received.length
  for (const method of ['HEAD', 'PUT', 'PATCH', 'OPTIONS'] as const) {
    const before = gw.audit.length
    const res = await request(gw.url('up'), { method, headers: { authorization: `Bearer ${issuer.sign({ aud: gw.resource('up') })}` } })
    await res.body.dump()
    t.equal(res.statusCode, 405, `${method}: 405`)
    t.equal(res.headers.allow, 'POST, GET, DELETE')
    t.match(gw.audit.slice(before), [{ httpMethod: method, status: 405, outcome: 'deny' }], `${method}: audited`)
  }
  t.equal(up.received.length, n, 'nothing forwarded')
})

t.test('a GET stream answers its status and headers at once, before any event', async t => {
  const started = Date.now()
  const res = await request(gw.url('up'), { method: 'GET', headers: { authorization: `Bearer ${issuer.sign({ aud: gw.resource('up') })}`, accept: 'text/event-stream' }, headersTimeout: 1500 })
  t.equal(res.statusCode, 200)
  t.match(String(res.headers['content-type']), /^text\/event-stream/)
  t.ok(Date.now() - started < 1500, `headers after ${Date.now() - started} ms, while the upstream sends no event for 3 s`)
  res.body.destroy()
})

t.test('a token from the gateway\'s token exchange spends its subject\'s rate-limit budget', async t => {
  const subject = issuer.sign({ aud: [gw.config.publicUrl], agentId: 'budget-bot', roles: ['reader'] })
  const form = new URLSearchParams({ grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange', subject_token: subject, subject_token_type: 'urn:ietf:params:oauth:token-type:access_token', resource: gw.resource('up'), scope: 'tool:echo' })
  const issued = await request(`${gw.base}/oauth/token`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: form.toString() })
  const { access_token: exchanged } = await issued.body.json() as { access_token: string }
  t.ok(exchanged, 'exchanged')
  const direct = issuer.sign({ aud: [gw.resource('up')], agentId: 'budget-bot', roles: ['reader'] })
  const statuses: number[] = []
  for (let i = 0; i < 3; i++) statuses.push((await ping(direct, i)).status)
  for (let i = 0; i < 2; i++) statuses.push((await ping(exchanged, 10 + i)).status)
  t.same(statuses, [200, 200, 200, 200, 429], 'four requests between the two tokens, then 429: one budget, not two')
})

t.test('metric labels come from bounded sets: made-up methods are "other"', async t => {
  const bearer = issuer.sign({ aud: gw.resource('up'), agentId: 'label-bot' })
  for (let i = 0; i < 3; i++) {
    const res = await request(gw.url('up'), {
      method: 'POST',
      headers: { authorization: `Bearer ${bearer}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
      body: JSON.stringify({ jsonrpc: '2.0', id: i, method: `made/up-${i}-${Math.random()}` })
    })
    await res.body.dump()
  }
  const text = await (await request(`${gw.base}/metrics`)).body.text()
  t.notMatch(text, /made\/up/, 'no label value an agent chose')
  t.match(text, /mcp_warden_requests_total\{server="up",method="other"/)
})

t.test('malformed method and tool names get a clear JSON-RPC error from the gateway, not a 502 and an operator warning', async t => {
  const bearer = issuer.sign({ aud: gw.resource('up'), agentId: 'names-bot' })
  const n = up.received.length
  const logBefore = gw.log.length
  const cases: Array<[string, Record<string, unknown>, RegExp]> = [
    ['"tools/call " (a trailing space)', { method: 'tools/call ', params: { name: 'echo' } }, /"method" must be a method name/],
    ['a tab inside the method', { method: 'tools/\tlist' }, /"method" must be a method name/],
    ['a tool name with a trailing space', { method: 'tools/call', params: { name: 'echo ', arguments: {} } }, /params\.name must not contain whitespace/],
    ['a tool name with a zero-width space', { method: 'tools/call', params: { name: 'ec\u200bho', arguments: {} } }, /params\.name must not contain/],
    ['a prompt name with a newline', { method: 'prompts/get', params: { name: 'p\n' } }, /params\.name must not contain/]
  ]
  for (const [what, message, reason] of cases) {
    const res = await request(gw.url('up'), {
      method: 'POST',
      headers: { authorization: `Bearer ${bearer}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
      body: JSON.stringify({ jsonrpc: '2.0', id: 1, ...message })
    })
    const body = await res.body.json() as { error: { code: number, message: string } }
    t.equal(res.statusCode, 400, `${what}: 400`)
    t.equal(body.error.code, -32600, `${what}: -32600`)
    t.match(body.error.message, reason, `${what}: says why`)
  }
  t.equal(up.received.length, n, 'nothing forwarded')
  t.notMatch(gw.log.slice(logBefore).join('\n'), /"level":40/, 'and no warning in the operator\'s log')
})

t.test('sessions per agent are bounded (limits.maxSessionsPerAgent): 429 beyond, nothing forwarded, free again after DELETE', async t => {
  let next = 0
  const sessions = await startScriptedUpstream((req, res) => {
    if (req.body?.method === 'initialize') {
      res.writeHead(200, { 'content-type': 'application/json', 'mcp-session-id': `s-${++next}` })
        .end(JSON.stringify({ jsonrpc: '2.0', id: req.body.id, result: { protocolVersion: '2025-06-18', capabilities: {}, serverInfo: { name: 's', version: '1' } } }))
      return
    }
    res.writeHead(200).end()
  })
  const limited = await withGateway(t, { issuer, upstreams: { s: { url: sessions.url, auth: { type: 'none' } } }, extra: { limits: { maxSessionsPerAgent: 2 } } }, sessions)
  const init = async (agentId: string) => {
    const res = await request(limited.url('s'), {
      method: 'POST',
      headers: { authorization: `Bearer ${issuer.sign({ aud: limited.resource('s'), agentId })}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
      body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'x', version: '1' } } })
    })
    return { status: res.statusCode, session: res.headers['mcp-session-id'] as string | undefined, json: await res.body.json() as { error?: { code: number, message: string } } }
  }
  const first = await init('greedy')
  const second = await init('greedy')
  t.same([first.status, second.status], [200, 200])
  const initsBefore = sessions.received.filter(r => r.body?.method === 'initialize').length
  const third = await init('greedy')
  t.equal(third.status, 429, 'a third session is refused')
  t.match(third.json, { error: { code: -32029, message: /holds 2 sessions on MCP server "s"/ } })
  t.equal(sessions.received.filter(r => r.body?.method === 'initialize').length, initsBefore, 'nothing forwarded')
  t.equal((await init('modest')).status, 200, 'another agent is not affected')
  const del = await request(limited.url('s'), { method: 'DELETE', headers: { authorization: `Bearer ${issuer.sign({ aud: limited.resource('s'), agentId: 'greedy' })}`, 'mcp-session-id': first.session! } })
  await del.body.dump()
  t.equal((await init('greedy')).status, 200, 'after a DELETE, a new session may be opened')
})

t.test('the body is read as UTF-8 only: another charset is 415, and the upstream always gets application/json', async t => {
  const n = up.received.length
  const bearer = issuer.sign({ aud: gw.resource('up'), agentId: 'charset-bot' })
  const send = async (contentType: string, body: string) => {
    const res = await request(gw.url('up'), { method: 'POST', headers: { authorization: `Bearer ${bearer}`, 'content-type': contentType, accept: 'application/json, text/event-stream' }, body })
    return { status: res.statusCode, json: await res.body.json() as { error?: { code: number, message: string } } }
  }
  const ping = JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'ping' })
  for (const ct of ['application/json; charset=utf-7', 'application/json; charset="UTF-16"', 'application/json;charset=latin1']) {
    const r = await send(ct, ping)
    t.equal(r.status, 415, `${ct}: 415`)
    t.match(r.json, { error: { message: /UTF-8/ } })
  }
  t.equal(up.received.length, n, 'nothing forwarded')
  t.equal((await send('application/json; charset=UTF-8', ping)).status, 200, 'UTF-8 named is fine')
  t.equal(up.received.at(-1)!.headers['content-type'], 'application/json', 'the upstream gets the gateway\'s own Content-Type, not the agent\'s')
  const big = await send('application/json', '{"jsonrpc":"2.0","id":2,"method":"ping","params":{"x":1e400}}')
  t.equal(big.status, 400, 'a number out of range is refused at parse')
  t.match(big.json, { error: { code: -32700, message: /out of range/ } })
  t.equal(up.received.length, n + 1, 'and not forwarded')
})

t.test('concurrent initializes cannot pass the session limit', async t => {
  let next = 0
  const slow = await startScriptedUpstream((req, res) => {
    if (req.body?.method === 'initialize') {
      setTimeout(() => {
        res.writeHead(200, { 'content-type': 'application/json', 'mcp-session-id': `c-${++next}` })
          .end(JSON.stringify({ jsonrpc: '2.0', id: req.body!.id, result: { protocolVersion: '2025-06-18', capabilities: {}, serverInfo: { name: 's', version: '1' } } }))
      }, 100)
      return
    }
    res.writeHead(200).end()
  })
  const limited = await withGateway(t, { issuer, upstreams: { s: { url: slow.url, auth: { type: 'none' } } }, extra: { limits: { maxSessionsPerAgent: 2 } } }, slow)
  const bearer = issuer.sign({ aud: limited.resource('s'), agentId: 'racer' })
  const statuses = await Promise.all(Array.from({ length: 10 }, async () => {
    const res = await request(limited.url('s'), {
      method: 'POST',
      headers: { authorization: `Bearer ${bearer}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
      body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'x', version: '1' } } })
    })
    await res.body.dump()
    return res.statusCode
  }))
  t.equal(statuses.filter(s => s === 200).length, 2, `two of ten at once get a session (${statuses.join(', ')})`)
  t.equal(slow.received.filter(r => r.body?.method === 'initialize').length, 2, 'only two reached the upstream')
})

t.test('more object members than limits.maxJsonKeys: 400 before the body is parsed, nothing forwarded', async t => {
  const post = async (agentId: string, body: string) => {
    const res = await request(gw.url('up'), {
      method: 'POST',
      headers: { authorization: `Bearer ${issuer.sign({ aud: gw.resource('up'), agentId })}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
      body
    })
    return { status: res.statusCode, body: await res.body.json() as { error?: { code: number, message: string } } }
  }
  const n = up.received.length
  const wide: Record<string, number> = {}
  for (let i = 0; i < 20_000; i++) wide[`k${i}`] = i
  const spread = Array.from({ length: 200 }, (_, i) => Object.fromEntries(Array.from({ length: 60 }, (_, j) => [`f${j}`, i])))
  for (const [what, args] of [['one object of 20,000 keys', wide], ['12,000 keys spread over 200 objects', { rows: spread }]] as const) {
    const r = await post('keys-bot', JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'echo', arguments: args } }))
    t.equal(r.status, 400, `${what}: 400`)
    t.equal(r.body.error?.code, -32600, `${what}: -32600`)
    t.match(r.body.error?.message, /more than 10000 object members \(keys\) in all \(limits\.maxJsonKeys\)/, `${what}: names the limit`)
  }
  t.equal(up.received.length, n, 'nothing forwarded')
  // A method the upstream gets (the scripted upstream lists no tools, so a tools/call would stop at the filter).
  const colons = await post('keys-bot-2', JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'ping', params: { _meta: { text: ':"\\":'.repeat(30_000), n: Array(9000).fill({ a: 1 }) } } }))
  t.equal(colons.status, 200, 'colons and escaped quotes inside strings are not members; 9,000 real ones pass')
  t.same(colons.body, { jsonrpc: '2.0', id: 2, result: {} })
  t.equal(up.received.length, n + 1, 'and that call was forwarded')
})

t.test('1 MiB of tiny values or deep nesting: 400 before the body is parsed, on a server route and on /mcp, nothing forwarded', async t => {
  const MiB = 1024 * 1024
  const head = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"a":'
  const fill = (unit: string): string => unit.repeat(Math.floor((MiB - 200) / unit.length))
  const bodies: Array<[string, string, RegExp]> = [
    ['[] repeated', `${head}[${fill('[],')}[]]}}}`, /more than 50000 values \(members' values and array elements\) in all \(limits\.maxJsonValues\)/],
    ['{} repeated', `${head}[${fill('{},')}{}]}}}`, /limits\.maxJsonValues/],
    ['0, repeated', `${head}[${fill('0,')}0]}}}`, /limits\.maxJsonValues/],
    ['[ nested', `${head}${fill('[')}`, /nested deeper than 64 levels/]
  ]
  const n = up.received.length
  let i = 0
  for (const [where, url, aud] of [['server route', gw.url('up'), gw.resource('up')], ['/mcp', `${gw.base}/mcp`, `${gw.config.publicUrl}/mcp`]] as const) {
    for (const [what, body, message] of bodies) {
      const res = await request(url, {
        method: 'POST',
        headers: { authorization: `Bearer ${issuer.sign({ aud, agentId: `values-bot-${i++}` })}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream', 'mcp-protocol-version': '2025-06-18' },
        body
      })
      const answer = await res.body.json() as { error?: { code: number, message: string } }
      t.equal(res.statusCode, 400, `${where}, ${what}: 400`)
      t.equal(answer.error?.code, -32600, `${where}, ${what}: -32600`)
      t.match(answer.error?.message, message, `${where}, ${what}: names the limit`)
    }
  }
  t.equal(up.received.length, n, 'nothing forwarded')
  // Under the limit, a long array of small values is an ordinary message.
  const fine = await request(gw.url('up'), {
    method: 'POST',
    headers: { authorization: `Bearer ${issuer.sign({ aud: gw.resource('up'), agentId: 'values-bot-fine' })}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'ping', params: { _meta: { series: Array(40_000).fill(0) } } })
  })
  t.same(await fine.body.json(), { jsonrpc: '2.0', id: 2, result: {} }, '40,000 numbers pass')
  t.equal(up.received.length, n + 1, 'and were forwarded')
})
