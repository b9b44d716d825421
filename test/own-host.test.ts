/**
 * Embedding: the plugins on a host of the user's own. The README's own-host example is
 * examples/own-host.ts, run here as it is; and each smaller composition either works or
 * fails ready() with a message that says what to register.
 */
import { spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import Fastify from 'fastify'
import { request } from 'undici'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import { validateConfig, type GatewayConfig } from '../lib/config.js'
import { freePort } from '../lib/http-body.js'
import identityPlugin from '../plugins/identity.js'
import mcpContextPlugin from '../plugins/mcp-context.js'
import cedarAuthzPlugin from '../plugins/cedar-authz.js'
import mcpProxyPlugin from '../plugins/mcp-proxy.js'
import ephemeralTokenPlugin from '../plugins/ephemeral-token.js'
import healthPlugin from '../plugins/health.js'
import { makeIssuer } from './fixtures/keys.js'
import { ALLOW_ALL, publicKeyFile } from './fixtures/gateway.js'
import { startRecordingUpstream, type RecordingUpstream } from './fixtures/upstream.js'

const ROOT = new URL('../', import.meta.url).pathname
const EXAMPLE = join(ROOT, 'examples', 'own-host.ts')
const issuer = makeIssuer('EdDSA')
let upstream: RecordingUpstream

t.before(async () => { upstream = await startRecordingUpstream() })
t.teardown(async () => { await upstream.close() })

function config (publicUrl: string, auth: 'ephemeral' | 'none' = 'ephemeral'): GatewayConfig {
  return validateConfig({
    publicUrl,
    identity: { issuer: issuer.issuer, publicKeyFile: publicKeyFile(issuer), algorithms: ['EdDSA'] },
    authorization: ALLOW_ALL,
    tokens: { keysDir: mkdtempSync(join(tmpdir(), 'mcpw-keys-')) },
    toolScan: { pins: join(mkdtempSync(join(tmpdir(), 'mcpw-pins-')), 'pins.json') },
    upstreams: { up: { url: upstream.url, auth: { type: auth } } }
  })
}

const MCP_HEADERS = { 'content-type': 'application/json', accept: 'application/json, text/event-stream' }
const initialize = { jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'embed-test', version: '1' } } }

t.test('the README shows examples/own-host.ts as it is', async t => {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8')
  const example = readFileSync(EXAMPLE, 'utf8')
  t.ok(readme.includes('```ts\n' + example + '```'), 'README.md holds the example verbatim in a ts block')
  for (const p of ['metricsPlugin', 'healthPlugin', 'identityPlugin', 'cedarAuthzPlugin', 'mcpProxyPlugin']) t.match(example, p)
})

t.test('the own-host example runs: health, readiness, metrics and an MCP call through it', async t => {
  const port = await freePort()
  const dir = mkdtempSync(join(tmpdir(), 'mcpw-own-host-'))
  const file = join(dir, 'gateway.json')
  const audit = join(dir, 'audit.log')
  writeFileSync(file, JSON.stringify({
    listen: { host: '127.0.0.1', port },
    identity: { issuer: issuer.issuer, publicKeyFile: publicKeyFile(issuer), algorithms: ['EdDSA'] },
    authorization: ALLOW_ALL,
    tokens: { keysDir: join(dir, 'keys') },
    toolScan: { pins: join(dir, 'pins.json') },
    audit: { destination: audit },
    upstreams: { up: { url: upstream.url } }
  }))
  const loader = import.meta.resolve('@tapjs/typescript/import')
  const child = spawn(process.execPath, ['--import', loader, EXAMPLE, file], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  child.stdout.on('data', (c: Buffer) => { output += c.toString() })
  child.stderr.on('data', (c: Buffer) => { output += c.toString() })
  const exited = new Promise<number | null>(resolve => { child.once('exit', code => { resolve(code) }) })
  t.teardown(async () => { child.kill('SIGTERM'); await exited })
  const base = `http://127.0.0.1:${port}`
  let up = false
  for (let i = 0; i < 150 && !up && child.exitCode === null; i++) {
    up = await request(`${base}/healthz`).then(async r => { await r.body.dump(); return r.statusCode === 200 }, () => false)
    if (!up) await new Promise(resolve => setTimeout(resolve, 100))
  }
  t.ok(up, `the example listens (output: ${output.slice(0, 500)})`)
  if (!up) return

  const ready = await request(`${base}/readyz`)
  t.equal(ready.statusCode, 200)
  t.match(await ready.body.json(), { status: 'ready', store: { kind: 'memory', available: true }, upstreams: ['up'] })

  const token = issuer.sign({ aud: `http://127.0.0.1:${port}/servers/up/mcp` })
  const client = new Client({ name: 'own-host', version: '1' })
  await client.connect(new StreamableHTTPClientTransport(new URL(`${base}/servers/up/mcp`), { requestInit: { headers: { authorization: `Bearer ${token}` } } }))
  t.teardown(async () => { await client.close() })
  t.ok((await client.listTools()).tools.some(x => x.name === 'echo'), 'tools listed through the own host')
  t.match(await client.callTool({ name: 'echo', arguments: { text: 'embedded' } }), { content: [{ text: 'embedded' }] })
  const call = upstream.received.findLast(r => (r.body as { method?: string }).method === 'tools/call')!
  t.not(call.headers.authorization, `Bearer ${token}`, 'the agent\'s token is not forwarded')
  t.match(call.headers.authorization, /^Bearer ey/, 'the upstream got a token minted by the gateway')

  const metrics = await request(`${base}/metrics`)
  t.equal(metrics.statusCode, 200)
  t.match(await metrics.body.text(), /mcp_warden_requests_total\{server="up",method="tools\/call"/)
  t.match(readFileSync(audit, 'utf8'), /"tool":"echo"/, 'the call is audited')
})

t.test('identity + Cedar + ephemeral tokens + proxy on a bare Fastify: a working gateway, no other plugin needed', async t => {
  const app = Fastify()
  t.teardown(async () => { await app.close() })
  const c = config('http://gw.test')
  await app.register(identityPlugin, { config: c })
  await app.register(cedarAuthzPlugin, { config: c })
  await app.register(ephemeralTokenPlugin, { config: c })
  await app.register(mcpProxyPlugin, { config: c })
  await app.ready()
  const token = issuer.sign({ aud: 'http://gw.test/servers/up/mcp' })
  const headers = { ...MCP_HEADERS, host: 'gw.test', authorization: `Bearer ${token}` }
  const init = await app.inject({ method: 'POST', url: '/servers/up/mcp', headers, payload: initialize })
  t.equal(init.statusCode, 200, 'initialize is parsed and forwarded')
  const session = String(init.headers['mcp-session-id'])
  const call = await app.inject({ method: 'POST', url: '/servers/up/mcp', headers: { ...headers, 'mcp-session-id': session, 'mcp-protocol-version': '2025-06-18' }, payload: { jsonrpc: '2.0', id: 2, method: 'tools/call', params: { name: 'echo', arguments: { text: 'bare' } } } })
  t.match(call.body, /"text":"bare"/)
  const bad = await app.inject({ method: 'POST', url: '/servers/up/mcp', headers: { ...headers, 'mcp-session-id': session }, payload: '{"jsonrpc":"2.0","id":3,' })
  t.equal(bad.statusCode, 400, 'the JSON-RPC parser is in place: unparseable JSON is refused')
  t.match(bad.json(), { error: { code: -32700 } })
  const refused = await app.inject({ method: 'POST', url: '/servers/up/mcp', headers: { ...MCP_HEADERS, host: 'gw.test' }, payload: initialize })
  t.equal(refused.statusCode, 401, 'identity is enforced')
})

t.test('a composition that cannot work fails ready() and says what to register', async t => {
  const c = config('http://gw.test')
  const cases: Array<[string, (app: ReturnType<typeof Fastify>) => Promise<void>, RegExp]> = [
    ['an ephemeral upstream without the ephemeral-token plugin', async app => {
      await app.register(identityPlugin, { config: c })
      await app.register(cedarAuthzPlugin, { config: c })
      await app.register(mcpProxyPlugin, { config: c })
    }, /upstream "up" \(auth\.type ephemeral\) needs ephemeralTokenPlugin \(mcp-warden-ephemeral-token\)/],
    ['the proxy without Cedar (nothing is forwarded undecided)', async app => {
      await app.register(identityPlugin, { config: c })
      await app.register(mcpProxyPlugin, { config: c })
    }, /mcp-warden-cedar-authz/],
    ['Cedar without identity', async app => {
      await app.register(mcpContextPlugin, { config: c })
      await app.register(cedarAuthzPlugin, { config: c })
    }, /mcp-warden-identity/],
    ['the request context registered twice', async app => {
      await app.register(identityPlugin, { config: c })
      await app.register(mcpContextPlugin, { config: c })
    }, /mcp-warden-context is registered twice/]
  ]
  for (const [what, register, message] of cases) {
    const app = Fastify()
    let err: Error | undefined
    try {
      await register(app)
      await app.ready()
    } catch (e) {
      err = e as Error
    }
    await app.close().catch(() => {})
    t.match(err?.message, message, what)
  }
})

t.test('an upstream with auth none needs no credential plugin', async t => {
  const app = Fastify()
  t.teardown(async () => { await app.close() })
  const c = config('http://gw.test', 'none')
  await app.register(identityPlugin, { config: c })
  await app.register(cedarAuthzPlugin, { config: c })
  await app.register(mcpProxyPlugin, { config: c })
  await app.ready()
  const res = await app.inject({ method: 'POST', url: '/servers/up/mcp', headers: { ...MCP_HEADERS, host: 'gw.test', authorization: `Bearer ${issuer.sign({ aud: 'http://gw.test/servers/up/mcp' })}` }, payload: initialize })
  t.equal(res.statusCode, 200)
})

t.test('health alone on a bare Fastify', async t => {
  const app = Fastify()
  t.teardown(async () => { await app.close() })
  await app.register(healthPlugin, { config: config('http://gw.test') })
  t.same((await app.inject('/healthz')).json(), { status: 'ok' })
  const ready = await app.inject('/readyz')
  t.equal(ready.statusCode, 200)
  t.same(ready.json(), { status: 'ready', upstreams: ['up'] }, 'no store registered: nothing to wait for')
})
