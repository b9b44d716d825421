/**
 * The official conformance suite (server scenarios, Node 22) against the conformance fixture,
 * directly and through the gateway: the two tables must be the same, check for check.
 * Also: a stream that the server closes mid-call is resumed through the gateway.
 */
import t from 'tap'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import { LoggingMessageNotificationSchema } from '@modelcontextprotocol/sdk/types.js'
// @ts-expect-error: a plain JavaScript script without type declarations
import { runConformance } from '../scripts/conformance.mjs'
// @ts-expect-error: a plain JavaScript fixture without type declarations
import { startConformanceServer } from './fixtures/conformance-server.mjs'
import { makeIssuer } from './fixtures/keys.js'
import { withGateway } from './fixtures/gateway.js'

interface Row { scenario: string, direct: string, gateway: string, directChecks: string, gatewayChecks: string, gatewayErrors: string[] }

t.test('every scenario that passes directly passes through the gateway, with the same checks', async t => {
  const { rows, ok, audit } = await runConformance() as { rows: Row[], ok: boolean, audit: Array<Record<string, unknown>> }
  t.ok(rows.length >= 30, `${rows.length} scenarios ran`)
  t.ok(rows.filter(r => r.direct === 'pass').length >= 30, 'the fixture passes them directly')
  for (const r of rows) {
    if (r.direct !== 'pass') continue
    t.equal(`${r.gateway} (${r.gatewayChecks})`, `${r.direct} (${r.directChecks})`, `${r.scenario}${r.gatewayErrors.length > 0 ? `: ${r.gatewayErrors.join('; ')}` : ''}`)
  }
  t.ok(ok)
  t.ok(audit.some(a => a.method === 'tools/call' && a.tool === 'test_sampling' && a.outcome === 'allow'), 'the calls went through the pipeline and were audited')
  t.ok(audit.some(a => a.method === null && a.httpMethod === 'POST' && a.outcome === 'allow'), 'including the client\'s answers to the server\'s sampling and elicitation requests')
})

t.test('a stream the server closes mid-call is resumed through the gateway (Last-Event-ID)', async t => {
  const resumed: string[] = []
  const fixture = await startConformanceServer((method: string, headers: Record<string, string>) => {
    if (method === 'GET' && headers['last-event-id'] !== undefined) resumed.push(headers['last-event-id'])
  }) as { url: string, close: () => Promise<void> }
  const issuer = makeIssuer('EdDSA')
  const gw = await withGateway(t, { issuer, upstreams: { conformance: { url: fixture.url, defaultSensitivity: 'low' } } }, fixture)
  const client = new Client({ name: 'resume-test', version: '1' })
  await client.connect(new StreamableHTTPClientTransport(new URL(gw.url('conformance')), {
    requestInit: { headers: { authorization: `Bearer ${issuer.sign({ aud: gw.resource('conformance') })}` } },
    reconnectionOptions: { initialReconnectionDelay: 50, maxReconnectionDelay: 200, reconnectionDelayGrowFactor: 1, maxRetries: 5 }
  }))
  const r = await client.callTool({ name: 'test_reconnection', arguments: {} })
  t.same(r.content, [{ type: 'text', text: 'Reconnection test completed' }], 'the result arrived on the resumed stream')
  t.ok(resumed.length >= 1, `the server saw a GET with Last-Event-ID ${resumed[0] ?? ''} from the gateway`)
  await client.close()
  await new Promise(resolve => setTimeout(resolve, 200))
  // Audit records are written when a response ends: the resumed GET stream has ended now.
  t.ok(gw.audit.some(a => a.httpMethod === 'GET' && a.outcome === 'allow'), 'the resumption (GET with Last-Event-ID) went through the gateway')
})

t.test('prompts and resources of the fixture through the aggregated endpoint', async t => {
  const fixture = await startConformanceServer() as { url: string, close: () => Promise<void> }
  const issuer = makeIssuer('EdDSA')
  const gw = await withGateway(t, { issuer, upstreams: { conformance: { url: fixture.url, defaultSensitivity: 'low', prefix: 'conf' } } }, fixture)
  const client = new Client({ name: 'aggregate-prompts', version: '1' })
  await client.connect(new StreamableHTTPClientTransport(new URL(`${gw.base}/mcp`), {
    requestInit: { headers: { authorization: `Bearer ${issuer.sign({ aud: `${gw.config.publicUrl}/mcp` })}` } }
  }))
  t.teardown(async () => { await client.close() })
  const prompts = (await client.listPrompts()).prompts.map(p => p.name).sort()
  t.same(prompts, ['conf__test_prompt_with_arguments', 'conf__test_prompt_with_embedded_resource', 'conf__test_prompt_with_image', 'conf__test_simple_prompt'], 'prompts under the configured prefix')
  const got = await client.getPrompt({ name: 'conf__test_prompt_with_arguments', arguments: { arg1: 'hello', arg2: 'world' } })
  t.same(got.messages[0]!.content, { type: 'text', text: "Prompt with arguments: arg1='hello', arg2='world'" })
  const resources = (await client.listResources()).resources.map(r => r.uri).sort()
  t.same(resources, ['test://static-binary', 'test://static-text', 'test://watched-resource'], 'resources keep their URIs')
  const read = await client.readResource({ uri: 'test://static-text' })
  t.match(read.contents[0], { uri: 'test://static-text', text: 'This is the content of the static text resource.' })
  t.same((await client.listResourceTemplates()).resourceTemplates.map(r => r.uriTemplate), ['test://template/{id}/data'])
  await t.rejects(client.readResource({ uri: 'test://never-listed' }), /Unknown resource/)
  t.ok(gw.audit.some(a => a.server === 'conformance' && a.method === 'prompts/get' && a.prompt === 'test_prompt_with_arguments' && a.outcome === 'allow'), 'decided and audited as the real prompt')
  t.ok(gw.audit.some(a => a.server === 'conformance' && a.method === 'resources/read' && a.uri === 'test://static-text'))

  // Progress and log messages of a call are relayed on the call's stream.
  const progress: number[] = []
  await client.callTool({ name: 'conf__test_tool_with_progress', arguments: {} }, undefined, { onprogress: (p) => { progress.push(p.progress) } })
  t.same(progress, [0, 50, 100], 'progress relayed through /mcp')
  const logs: unknown[] = []
  client.setNotificationHandler(LoggingMessageNotificationSchema, (n) => { logs.push(n.params.data) })
  await client.callTool({ name: 'conf__test_tool_with_logging', arguments: {} })
  t.same(logs, ['Tool execution started', 'Tool processing data', 'Tool execution completed'], 'log messages relayed through /mcp')
  // A request of the upstream to the agent cannot cross a stateless endpoint: it fails at once, clearly.
  const started = Date.now()
  await t.rejects(client.callTool({ name: 'conf__test_sampling', arguments: { prompt: 'x' } }), /sampling\/createMessage is not available through the aggregated endpoint \/mcp; use \/servers\/conformance\/mcp/)
  t.ok(Date.now() - started < 5000, 'without waiting for a timeout')
})
