import { mkdtempSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { request } from 'undici'
import { makeIssuer } from './fixtures/keys.js'
import { ALLOW_ALL, publicKeyFile, withGateway } from './fixtures/gateway.js'
import { startRecordingUpstream } from './fixtures/upstream.js'
import { validateConfig } from '../lib/config.js'

const issuer = makeIssuer('EdDSA')

const post = async (url: string, body: unknown, token?: string) => {
  const res = await request(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream', ...(token !== undefined ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify(body)
  })
  await res.body.dump()
  return res.statusCode
}

t.test('one record per MCP message, with who, what, outcome and why — and no token', async t => {
  const up = await startRecordingUpstream()
  const gw = await withGateway(t, { issuer, upstreams: { echo: { url: up.url } } }, up)
  const token = issuer.sign({ aud: gw.resource('echo'), agentId: 'bot-1', userId: 'alice' })
  const initialize = { jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'a', version: '1' } } }
  t.equal(await post(gw.url('echo'), initialize, token), 200)
  t.equal(await post(gw.url('echo'), initialize), 401)
  t.equal(await post(gw.url('echo'), [initialize], token), 400)
  await new Promise(resolve => setTimeout(resolve, 20))
  t.equal(gw.audit.length, 3)
  const [ok, unauth, batch] = gw.audit
  t.match(ok, {
    requestId: String, decisionId: /^[0-9a-f-]{36}$/, agentId: 'bot-1', userId: 'alice', server: 'echo', httpMethod: 'POST',
    method: 'initialize', rpcId: 1, outcome: 'allow', reason: 'forwarded', policies: ['allow-all'], policyVersion: /^[0-9a-f]{16}$/, status: 200, durationMs: Number
  })
  t.ok(!Number.isNaN(Date.parse(ok!.time)))
  t.match(unauth, { agentId: null, decisionId: null, outcome: 'deny', status: 401, reason: /Authentication required/, policyVersion: ok!.policyVersion })
  t.match(batch, { agentId: 'bot-1', outcome: 'deny', status: 400, reason: /batches/ })
  const everything = JSON.stringify(gw.audit) + gw.log.join('\n')
  t.notOk(everything.includes(token), 'the agent token is in no audit record and no log line')
  t.notOk(everything.includes(token.split('.')[2]!), 'not even its signature')
  t.ok(gw.log.length > 0, 'the operational log was captured')
})

t.test('a tools/call record names the tool; a file destination receives JSON lines', async t => {
  const up = await startRecordingUpstream()
  const dir = mkdtempSync(join(tmpdir(), 'mcpw-audit-'))
  const file = join(dir, 'sub', 'audit.log')
  const config = validateConfig({
    publicUrl: 'http://gateway.test:8080',
    identity: { issuer: issuer.issuer, publicKeyFile: publicKeyFile(issuer), algorithms: ['EdDSA'] },
    authorization: ALLOW_ALL,
    upstreams: { echo: { url: up.url } },
    audit: { destination: file }
  })
  const { buildGateway } = await import('../lib/gateway.js')
  const app = await buildGateway(config, { logger: false })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const url = `http://127.0.0.1:${(app.server.address() as { port: number }).port}/servers/echo/mcp`
  const token = issuer.sign({ aud: 'http://gateway.test:8080/servers/echo/mcp' })
  await post(url, { jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'a', version: '1' } } }, token)
  // Without a session the upstream refuses the call; the record still names the tool.
  await post(url, { jsonrpc: '2.0', id: 2, method: 'tools/call', params: { name: 'echo', arguments: { text: 'hi' } } }, token)
  await app.close()
  await up.close()
  const lines = readFileSync(file, 'utf8').trim().split('\n').map(l => JSON.parse(l))
  t.equal(lines.length, 3)
  t.match(lines[1], { method: 'tools/list', rpcId: 'mcp-warden-list-1' }, 'the gateway listing the tools as the caller is audited as the caller\'s')
  t.match(lines[2], { method: 'tools/call', tool: 'echo', rpcId: 2 })
})
