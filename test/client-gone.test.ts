/**
 * An agent that goes away mid-call takes its upstream exchange with it: the gateway cancels the
 * upstream request while it waits for the answer's headers and while an SSE answer streams, so
 * an upstream that is slow or never ends holds no connection for a caller that left.
 */
import t from 'tap'
import { request } from 'undici'
import { makeIssuer } from './fixtures/keys.js'
import { withGateway } from './fixtures/gateway.js'
import { startScriptedUpstream } from './fixtures/scripted-upstream.js'

const issuer = makeIssuer('EdDSA')
const TOOL = { name: 'slow', description: 'Answers slowly.', inputSchema: { type: 'object', properties: {} } }
const headers = (aud: string) => ({ 'content-type': 'application/json', accept: 'application/json, text/event-stream', authorization: `Bearer ${issuer.sign({ aud })}` })
const until = async (check: () => boolean, ms = 3000): Promise<boolean> => {
  const end = Date.now() + ms
  while (!check() && Date.now() < end) await new Promise(resolve => setTimeout(resolve, 20))
  return check()
}

for (const mode of ['no answer yet', 'an endless SSE answer'] as const) {
  t.test(`the agent leaves while the upstream gives ${mode}: the upstream request is cancelled`, async t => {
    const state = { calls: 0, closed: 0 }
    const up = await startScriptedUpstream((req, res) => {
      const id = req.body?.id
      if (req.body?.method === 'tools/list') { res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ jsonrpc: '2.0', id, result: { tools: [TOOL] } })); return }
      if (req.body?.method !== 'tools/call') { res.writeHead(202).end(); return }
      state.calls++
      res.on('close', () => { state.closed++ })
      if (mode === 'an endless SSE answer') {
        res.writeHead(200, { 'content-type': 'text/event-stream' })
        const timer = setInterval(() => { res.write(': still working\n\n') }, 50)
        res.on('close', () => { clearInterval(timer) })
      }
    })
    const gw = await withGateway(t, { issuer, upstreams: { up: { url: up.url, auth: { type: 'none' } } } }, up)
    const h = headers(gw.resource('up'))
    const listed = await request(gw.url('up'), { method: 'POST', headers: h, body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/list' }) })
    t.match(await listed.body.text(), /"slow"/)

    const abort = new AbortController()
    const call = request(gw.url('up'), { method: 'POST', headers: h, body: JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'tools/call', params: { name: 'slow', arguments: {} } }), signal: abort.signal })
      .then(async res => { await res.body.text() }, () => {}) // read until the agent leaves
    t.ok(await until(() => state.calls === 1), 'the call reached the upstream')
    t.equal(state.closed, 0, 'and is open while the agent waits')
    abort.abort()
    await call
    t.ok(await until(() => state.closed === 1), 'once the agent left, the upstream request was closed')
  })
}

t.test('an answer read whole leaves nothing to cancel: the next calls go on as usual', async t => {
  const up = await startScriptedUpstream((req, res) => {
    const id = req.body?.id
    const result = req.body?.method === 'tools/list' ? { tools: [TOOL] } : { content: [{ type: 'text', text: 'done' }] }
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ jsonrpc: '2.0', id, result }))
  })
  const gw = await withGateway(t, { issuer, upstreams: { up: { url: up.url, auth: { type: 'none' } } } }, up)
  const h = headers(gw.resource('up'))
  for (let id = 1; id <= 20; id++) {
    const res = await request(gw.url('up'), { method: 'POST', headers: h, body: JSON.stringify({ jsonrpc: '2.0', id, method: 'tools/call', params: { name: 'slow', arguments: {} } }) })
    t.match(await res.body.text(), /"done"/)
  }
})
