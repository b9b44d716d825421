/**
 * stdio upstreams: the official filesystem and memory servers, and a fixture that reports its
 * environment and can crash, spawned by the gateway per client session and reached through
 * both the per-server routes and the aggregated endpoint.
 */
import { mkdtempSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import t from 'tap'
import { request } from 'undici'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import { makeIssuer } from './fixtures/keys.js'
import { startGateway, type TestGateway } from './fixtures/gateway.js'
import { validateConfig } from '../lib/config.js'
import { ALLOW_ALL } from './fixtures/gateway.js'
import { childEnv, spawnLine } from '../lib/stdio-bridge.js'

const require = createRequire(import.meta.url)
const bin = (pkg: string): string => join(dirname(require.resolve(`${pkg}/package.json`)), 'dist/index.js')
const FIXTURE = new URL('./fixtures/stdio-server.mjs', import.meta.url).pathname
const ROOT = new URL('../', import.meta.url).pathname

const issuer = makeIssuer('EdDSA')
const files = mkdtempSync(join(tmpdir(), 'mcpw-fs-'))
writeFileSync(join(files, 'hello.txt'), 'hello from the filesystem server\n')
const memoryFile = join(mkdtempSync(join(tmpdir(), 'mcpw-mem-')), 'memory.jsonl')
let gw: TestGateway

t.before(async () => {
  process.env.MCPW_TEST_GATEWAY_SECRET = 'must-not-reach-the-child'
  gw = await startGateway({
    issuer,
    upstreams: {
      fs: { command: [process.execPath, bin('@modelcontextprotocol/server-filesystem'), files] },
      mem: { command: [process.execPath, bin('@modelcontextprotocol/server-memory')], env: { MEMORY_FILE_PATH: memoryFile } },
      fixture: { command: [process.execPath, FIXTURE], cwd: ROOT, env: { FIXTURE_MODE: 'test' }, envPass: ['PATH', 'LANG'], idleSeconds: 6, processLimits: { openFiles: 256 } }
    }
  })
})
t.teardown(async () => { await gw.close(); delete process.env.MCPW_TEST_GATEWAY_SECRET })

const token = (aud: string, agentId = 'stdio-bot'): string => issuer.sign({ aud, agentId, sub: agentId })
async function connect (server: string): Promise<{ client: Client, transport: StreamableHTTPClientTransport }> {
  const url = server === '*' ? `${gw.base}/mcp` : gw.url(server)
  const aud = server === '*' ? `${gw.config.publicUrl}/mcp` : gw.resource(server)
  const client = new Client({ name: 'stdio-test', version: '1' })
  const transport = new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers: { authorization: `Bearer ${token(aud)}` } } })
  await client.connect(transport)
  return { client, transport }
}
/** Whether a process is gone within `ms` (polled: a process takes a moment to exit). */
async function gone (pid: number, ms = 10_000): Promise<boolean> {
  const end = Date.now() + ms
  for (;;) {
    try { process.kill(pid, 0) } catch { return true }
    if (Date.now() > end) return false
    await new Promise(resolve => setTimeout(resolve, 50))
  }
}
const text = (r: unknown): string => (r as { content: Array<{ text: string }> }).content[0]!.text

t.test('the filesystem and memory servers, listed and called through their routes', async t => {
  const fs = await connect('fs')
  t.teardown(async () => { await fs.client.close() })
  const fsTools = (await fs.client.listTools()).tools.map(x => x.name)
  t.ok(fsTools.includes('read_text_file') && fsTools.includes('list_directory'), `filesystem tools: ${fsTools.length}`)
  t.match(text(await fs.client.callTool({ name: 'read_text_file', arguments: { path: join(files, 'hello.txt') } })), /hello from the filesystem server/)
  const outside = await fs.client.callTool({ name: 'read_text_file', arguments: { path: '/etc/hostname' } })
  t.equal(outside.isError, true, 'the server still applies its own allowed folders')

  const mem = await connect('mem')
  t.teardown(async () => { await mem.client.close() })
  t.ok((await mem.client.listTools()).tools.some(x => x.name === 'create_entities'))
  await mem.client.callTool({ name: 'create_entities', arguments: { entities: [{ name: 'mcp-warden', entityType: 'gateway', observations: ['spawns stdio servers'] }] } })
  t.match(text(await mem.client.callTool({ name: 'read_graph', arguments: {} })), /spawns stdio servers/)
  t.ok(gw.audit.some(a => a.server === 'mem' && a.tool === 'create_entities' && a.outcome === 'allow' && a.upstreamTokenId !== undefined), 'audited, with an ephemeral token for the bridge')
})

t.test('the aggregated endpoint shows exactly the union of the per-server lists, and routes calls', async t => {
  const perServer: string[] = []
  for (const server of ['fs', 'mem', 'fixture']) {
    const c = await connect(server)
    perServer.push(...(await c.client.listTools()).tools.map(x => `${server}__${x.name}`))
    await c.client.close()
  }
  const agg = await connect('*')
  t.teardown(async () => { await agg.client.close() })
  t.same((await agg.client.listTools()).tools.map(x => x.name).sort(), perServer.sort())
  t.match(text(await agg.client.callTool({ name: 'fs__read_text_file', arguments: { path: join(files, 'hello.txt') } })), /hello from the filesystem server/)
  t.match(text(await agg.client.callTool({ name: 'mem__read_graph', arguments: {} })), /mcp-warden/)
})

t.test('one process per session, an explicit environment, ended with the session', async t => {
  const bridge = gw.app.mcpWarden.stdioBridges.get('fixture')!
  const before = bridge.spawned
  const a = await connect('fixture')
  const b = await connect('fixture')
  t.equal(bridge.spawned, before + 2, 'each session has its own process')
  const infoA = JSON.parse(text(await a.client.callTool({ name: 'whoami', arguments: {} }))) as { env: string[], cwd: string, pid: number, openFiles: string | null }
  const infoB = JSON.parse(text(await b.client.callTool({ name: 'whoami', arguments: {} }))) as { pid: number }
  t.not(infoA.pid, infoB.pid)
  t.equal(infoA.cwd, ROOT.replace(/\/$/, ''), 'cwd as configured')
  t.notOk(infoA.env.includes('MCPW_TEST_GATEWAY_SECRET'), 'the gateway\'s environment does not leak')
  t.notOk(infoA.env.includes('HOME'), 'nor variables the config did not allow')
  t.ok(infoA.env.includes('FIXTURE_MODE') && infoA.env.includes('PATH'), 'the configured ones are there')
  if (spawnLine(gw.config.upstreams.get('fixture')!.stdio!).limited) t.equal(infoA.openFiles, '256', 'processLimits.openFiles is in force (prlimit)')
  else t.comment('prlimit is not available here: the limit could not be applied')
  await a.transport.terminateSession()
  await a.client.close()
  t.ok(await gone(infoA.pid), 'the process of a deleted session is gone')
  t.doesNotThrow(() => process.kill(infoB.pid, 0), 'the other session\'s process runs on')
  await b.client.close()
})

t.test('a crashing server: the session gets a clear error, the process is reaped, the session is gone', async t => {
  const c = await connect('fixture')
  const sid = c.transport.sessionId!
  const { pid } = JSON.parse(text(await c.client.callTool({ name: 'whoami', arguments: {} }))) as { pid: number }
  await t.rejects(c.client.callTool({ name: 'crash', arguments: {} }), /MCP server "fixture" process exited: fatal: the fixture was asked to crash/)
  t.ok(await gone(pid), 'reaped')
  const res = await request(gw.url('fixture'), {
    method: 'POST',
    headers: { authorization: `Bearer ${token(gw.resource('fixture'))}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream', 'mcp-session-id': sid, 'mcp-protocol-version': '2025-06-18' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 9, method: 'tools/list' })
  })
  t.equal(res.statusCode, 404, 'the session ended with its process')
  await res.body.dump()
  await c.client.close().catch(() => {})
})

t.test('an idle session ends, with its process', async t => {
  const c = await connect('fixture')
  const { pid } = JSON.parse(text(await c.client.callTool({ name: 'whoami', arguments: {} }))) as { pid: number }
  t.ok(await gone(pid, 15_000), 'ended after idleSeconds')
  await c.client.close().catch(() => {})
})

t.test('the bridge takes only the gateway\'s tokens for that server', async t => {
  const bridge = gw.app.mcpWarden.stdioBridges.get('fixture')!
  const spawnedBefore = bridge.spawned
  const res = await request(bridge.url, {
    method: 'POST',
    headers: { authorization: `Bearer ${token(gw.resource('fixture'))}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'local-attacker', version: '1' } } })
  })
  t.equal(res.statusCode, 401, 'an agent token sent straight to the bridge is refused')
  await res.body.dump()
  t.equal(bridge.spawned, spawnedBefore, 'and spawns nothing')
})

t.test('config: stdio keys, no shell, the environment and limits', async t => {
  const base = { identity: { issuer: 'https://idp.test', jwksUri: 'https://idp.test/jwks' }, authorization: ALLOW_ALL }
  t.throws(() => validateConfig({ ...base, upstreams: { x: {} } }), { message: /upstreams\.x: set exactly one of url \(Streamable HTTP\) and command \(stdio\)/ })
  t.throws(() => validateConfig({ ...base, upstreams: { x: { url: 'http://h/mcp', command: ['node'] } } }), { message: /upstreams\.x: set exactly one of url/ })
  t.throws(() => validateConfig({ ...base, upstreams: { x: { url: 'http://h/mcp', envPass: ['PATH'] } } }), { message: /upstreams\.x\.envPass: only used with command/ })
  t.throws(() => validateConfig({ ...base, upstreams: { x: { command: [] } } }), { message: /upstreams\.x\.command/ })
  t.throws(() => validateConfig({ ...base, upstreams: { x: { command: ['node'], cwd: '/no/such/folder' } } }), { message: /upstreams\.x\.cwd: \/no\/such\/folder is not a folder/ })
  for (const type of ['secret', 'exchange']) {
    t.throws(() => validateConfig({ ...base, upstreams: { x: { command: ['node'], auth: { type } } } }), { message: /upstreams\.x\.auth\.type: a stdio upstream is reached through the gateway's own bridge, .*use ephemeral or none/ }, `auth ${type} refused`)
  }
  // `none`: the server takes no credential of its own; its bridge still takes only the gateway's tokens.
  t.equal(validateConfig({ ...base, upstreams: { x: { command: ['node'], auth: { type: 'none' } } } }).upstreams.get('x')!.auth.type, 'ephemeral', 'auth none is accepted and the bridge still takes ephemeral tokens')
  t.throws(() => validateConfig({ ...base, upstreams: { x: { command: ['node'], env: { 'BAD NAME': 'x' } } } }), { message: /upstreams\.x\.env/ })
  const c = validateConfig({ ...base, upstreams: { x: { command: ['node', 'server.js', '--flag; rm -rf /'], env: { A: '1' }, processLimits: { memoryMb: 256, cpuSeconds: 30 } } } })
  const u = c.upstreams.get('x')!
  t.equal(u.resource, 'urn:mcp-warden:stdio:x', 'a resource of its own for the tokens')
  t.same(u.stdio!.envPass, ['PATH'])
  const line = spawnLine(u.stdio!)
  if (line.limited) {
    t.match(line.command, /prlimit$/)
    t.same(line.args, [`--as=${256 * 1024 * 1024}`, '--cpu=30', '--', 'node', 'server.js', '--flag; rm -rf /'], 'limits through prlimit; arguments as they are')
  } else {
    t.same([line.command, ...line.args], ['node', 'server.js', '--flag; rm -rf /'], 'arguments as they are (no prlimit here)')
  }
  const env = childEnv(u.stdio!)
  t.equal(env.A, '1')
  t.equal(env.HOME, undefined)
  t.equal(env.PATH, process.env.PATH)
})
