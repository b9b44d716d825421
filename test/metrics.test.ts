import t from 'tap'
import { request } from 'undici'
import { makeIssuer } from './fixtures/keys.js'
import { withGateway } from './fixtures/gateway.js'
import { startRecordingUpstream } from './fixtures/upstream.js'

const issuer = makeIssuer('EdDSA')
const init = JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'x', version: '1' } } })

t.test('Server-Timing names each stage; /metrics has the stage histogram and the counters', async t => {
  const up = await startRecordingUpstream()
  const gw = await withGateway(t, { issuer, upstreams: { echo: { url: up.url } }, extra: { serverTiming: true } }, up)
  const token = issuer.sign({ aud: gw.resource('echo') })
  const res = await request(gw.url('echo'), { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' }, body: init })
  await res.body.dump()
  t.equal(res.statusCode, 200)
  const timing = String(res.headers['server-timing'])
  for (const stage of ['identity', 'parse', 'authz', 'mint', 'upstream']) t.match(timing, new RegExp(`(^|, )${stage};dur=\\d+\\.\\d{3}`), `Server-Timing has ${stage}`)
  const denied = await request(gw.url('echo'), { method: 'POST', headers: { authorization: 'Bearer nope', 'content-type': 'application/json' }, body: init })
  await denied.body.dump()

  const metrics = await (await request(`${gw.base}/metrics`)).body.text()
  for (const stage of ['identity', 'parse', 'authz', 'mint', 'upstream']) {
    t.match(metrics, new RegExp(`mcp_warden_stage_duration_seconds_count\\{stage="${stage}"\\} [1-9]`), `histogram of ${stage}`)
  }
  t.match(metrics, /mcp_warden_requests_total\{server="echo",method="initialize",outcome="allow",status="200"\} 1/)
  t.match(metrics, /mcp_warden_requests_total\{server="echo",method="POST",outcome="deny",status="401"\} 1/)
  t.match(metrics, /mcp_warden_decisions_total\{outcome="allow",mode="enforce"\} 1/)
  t.notOk(metrics.includes(token), 'no token in metrics')
})

t.test('without serverTiming there is no Server-Timing header', async t => {
  const up = await startRecordingUpstream()
  const gw = await withGateway(t, { issuer, upstreams: { echo: { url: up.url } } }, up)
  const res = await request(gw.url('echo'), { method: 'POST', headers: { authorization: `Bearer ${issuer.sign({ aud: gw.resource('echo') })}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' }, body: init })
  await res.body.dump()
  t.equal(res.statusCode, 200)
  t.equal(res.headers['server-timing'], undefined)
})
