/**
 * Approvals in the 2026-07-28 era: the v2 SDK client (`@modelcontextprotocol/client`, pinned to
 * 2026-07-28) gets an `input_required` result carrying one URL elicitation; its elicitation
 * handler is where a person approves; the client's retry (with `inputResponses` and
 * `requestState`) runs the call once, and the upstream never sees the gateway's retry state.
 */
import t from 'tap'
import { request } from 'undici'
import { Client as ModernClient, StreamableHTTPClientTransport as ModernTransport } from '@modelcontextprotocol/client'
import { PUBLIC_URL, startGateway, type TestGateway } from './fixtures/gateway.js'
import { makeIssuer } from './fixtures/keys.js'
import { startModernUpstream, type ModernUpstream } from './fixtures/modern-upstream.js'

const POLICIES = { schema: new URL('../cedar/schema.cedarschema', import.meta.url).pathname, policies: new URL('./fixtures/cedar/needs-approval', import.meta.url).pathname, watch: false }
const issuer = makeIssuer('EdDSA')
let modern: ModernUpstream
let gw: TestGateway

t.before(async () => {
  modern = await startModernUpstream()
  gw = await startGateway({ issuer, upstreams: { modern: { url: modern.url } }, extra: { authorization: POLICIES } })
})
t.teardown(async () => { await gw.close(); await modern.close() })

const agentToken = (): string => issuer.sign({ aud: gw.resource('modern'), agentId: 'era-bot', sub: 'era-bot', userId: 'ursula' })
const approverToken = (userId: string, roles: string[]): string => issuer.sign({ aud: `${PUBLIC_URL}/approvals`, sub: userId, agentId: userId, userId, roles })

async function decide (id: string, token: string, decision: 'approve' | 'deny'): Promise<number> {
  const res = await request(`${gw.base}/approvals/${id}`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify({ decision }) })
  await res.body.dump()
  return res.statusCode
}

const calls = (): Array<Record<string, any>> => modern.received.filter(r => r.body?.method === 'tools/call').map(r => r.body!)

t.test('the v2 client in the 2026-07-28 era: input_required with a URL elicitation; approved in its handler, the retry runs once', async t => {
  const client = new ModernClient({ name: 'v2-approvals', version: '2.0.0' }, { versionNegotiation: { mode: { pin: '2026-07-28' } }, capabilities: { elicitation: { url: {} } } })
  const asked: Array<{ mode?: string, url?: string, elicitationId?: string }> = []
  client.setRequestHandler('elicitation/create', async (req) => {
    const params = req.params as { mode?: string, url?: string, elicitationId?: string }
    asked.push(params)
    // The "person" opens the URL and approves; then the client says it is done.
    t.equal(calls().length, 0, 'nothing forwarded while the approval was asked for')
    t.equal(await decide(params.url!.split('/').at(-1)!, approverToken('grace', ['approver']), 'approve'), 200)
    return { action: 'accept' }
  })
  await client.connect(new ModernTransport(new URL(gw.url('modern')), { requestInit: { headers: { authorization: `Bearer ${agentToken()}` } } }))
  t.teardown(async () => { await client.close() })
  t.equal(client.getNegotiatedProtocolVersion(), '2026-07-28')

  const result = await client.callTool({ name: 'say', arguments: { text: 'approved words' } })
  t.same(result.content, [{ type: 'text', text: 'approved words' }], 'the approved call ran')
  t.equal(asked.length, 1, 'one elicitation')
  t.equal(asked[0]!.mode, 'url')
  t.match(asked[0]!.url, new RegExp(`^${PUBLIC_URL}/approvals/[A-Za-z0-9_-]{22}$`))
  t.equal(asked[0]!.elicitationId, undefined, 'this era\'s URL elicitation carries no elicitationId')
  const approvalId = asked[0]!.url!.split('/').at(-1)!
  const forwarded = calls()
  t.equal(forwarded.length, 1, 'forwarded once')
  t.notOk('inputResponses' in (forwarded[0]!.params ?? {}), 'the gateway\'s retry state does not reach the upstream')
  t.notOk('requestState' in (forwarded[0]!.params ?? {}))
  const record = gw.audit.find(r => r.tool === 'say' && r.outcome === 'allow' && r.event === undefined)
  t.equal(record?.approvalId, approvalId)
  t.equal(record?.approver, 'grace')
})

t.test('2026-07-28 on the wire: the input_required result, and a retry whose approval was denied asks anew', async t => {
  const meta = { 'io.modelcontextprotocol/protocolVersion': '2026-07-28', 'io.modelcontextprotocol/clientInfo': { name: 'raw', version: '1' }, 'io.modelcontextprotocol/clientCapabilities': { elicitation: { url: {} } } }
  const send = async (params: Record<string, unknown>): Promise<Record<string, any>> => {
    const res = await request(gw.url('modern'), {
      method: 'POST',
      headers: { authorization: `Bearer ${agentToken()}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream', 'mcp-protocol-version': '2026-07-28', 'mcp-method': 'tools/call', 'mcp-name': 'say' },
      body: JSON.stringify({ jsonrpc: '2.0', id: 'r-1', method: 'tools/call', params: { name: 'say', arguments: { text: 'deny me' }, _meta: meta, ...params } })
    })
    t.equal(res.statusCode, 200)
    return await res.body.json() as Record<string, any>
  }
  const before = calls().length
  const first = await send({})
  t.equal(first.id, 'r-1')
  t.equal(first.result.resultType, 'input_required')
  const [id, input] = Object.entries(first.result.inputRequests as Record<string, any>)[0]!
  t.same(input, { method: 'elicitation/create', params: { mode: 'url', url: `${PUBLIC_URL}/approvals/${id}`, message: input.params.message } })
  t.match(input.params.message, /^Approval required: echo and say need an approver's yes/)
  t.equal(first.result.requestState, id)
  t.equal(await decide(id, approverToken('grace', ['approver']), 'deny'), 200)
  // The client says it accepted, but the approver said no: the retry asks for a new approval.
  const retried = await send({ inputResponses: { [id]: { action: 'accept' } }, requestState: id })
  t.equal(retried.result.resultType, 'input_required')
  t.not(retried.result.requestState, id, 'a denied approval is not reused')
  // A made-up request state changes nothing either.
  const forged = await send({ inputResponses: { AAAAAAAAAAAAAAAAAAAAAA: { action: 'accept' } }, requestState: 'AAAAAAAAAAAAAAAAAAAAAA' })
  t.equal(forged.result.resultType, 'input_required')
  t.equal(forged.result.requestState, retried.result.requestState, 'the call still waits for its own approval')
  t.equal(calls().length, before, 'nothing forwarded')
  t.equal(await decide(retried.result.requestState, approverToken('ursula', ['approver']), 'approve'), 403, 'the caller\'s own user may not approve it')
})
