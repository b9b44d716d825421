/**
 * `mcp-warden approvals`: the approver's command, against the demo's real MCP servers behind a
 * real gateway with the reference policies; the agent calls with the real SDK client.
 */
import { execFile } from 'node:child_process'
import { createServer, type Server } from 'node:http'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import { McpError } from '@modelcontextprotocol/sdk/types.js'
import { demoConfig, startDemo, type Demo } from '../lib/demo/index.js'
import { approvalsCommand, ApprovalsUsageError, terminalSafe } from '../lib/cli-approvals.js'
import { main } from '../lib/cli.js'
import { freePort } from '../lib/free-port.js'
import { REFERENCE, startWithConfig, type TestGateway } from './fixtures/gateway.js'
import { inBusinessHours } from './fixtures/time.js'

const run = promisify(execFile)
const BIN = new URL('../dist/bin/mcp-warden.js', import.meta.url).pathname

const OPS = { agentId: 'ops-bot', userId: 'frank', roles: ['super_admin'], department: 'platform-ops' }
const GRACE = { userId: 'grace', roles: ['super_admin'], department: 'platform-ops' }
const FRANK = { userId: 'frank', roles: ['super_admin'], department: 'platform-ops' }
/** An argument value that tries to colour the approver's terminal and set its title. */
const HOSTILE = '\u001b[31mRED\u001b]0;title\u0007 \u009b2J \u202egnp.exe'
const UNSAFE_BYTES = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/ // eslint-disable-line no-control-regex

let demo: Demo
let gw: TestGateway
let apiPosts = 0

t.before(async () => {
  demo = await startDemo({ dataDir: mkdtempSync(join(tmpdir(), 'mcpw-cli-approvals-')), port: 0 })
  demo.upstreams.api.server.on('request', (req) => { if (req.method === 'POST') apiPosts++ })
  gw = await startWithConfig(demoConfig({
    dataDir: demo.dataDir,
    port: demo.config.listen.port,
    urls: { db: demo.upstreams.db.url, file: demo.upstreams.file.url, api: demo.upstreams.api.url },
    overrides: { authorization: { ...REFERENCE, timezone: inBusinessHours() } }
  }))
})
t.teardown(async () => { await gw.close(); await demo.close() })

function capture (): { io: { out: (l: string) => void, err: (l: string) => void }, out: string[], err: string[], text: () => string } {
  const out: string[] = []
  const err: string[] = []
  return { io: { out: l => out.push(l), err: l => err.push(l) }, out, err, text: () => [...out, ...err].join('\n') }
}

/** Runs the command in-process as an approver, with no MCP_WARDEN_* variables but those given. */
async function approvals (args: string[], token?: string, env: NodeJS.ProcessEnv = {}): Promise<{ code: number, out: string, err: string, all: string }> {
  const c = capture()
  const code = await approvalsCommand([...args, '--url', gw.base, ...(token !== undefined ? ['--token', token] : [])], c.io, env)
  return { code, out: c.out.join('\n'), err: c.err.join('\n'), all: c.text() }
}

async function approvalOf (p: Promise<unknown>): Promise<string> {
  try {
    await p
  } catch (err) {
    if (err instanceof McpError && err.code === -32003) return (err.data as { approvalId: string }).approvalId
    throw err
  }
  throw new Error('the call did not need an approval')
}

t.test('terminalSafe: controls and invisible characters are written as escapes, other text stays', async t => {
  t.equal(terminalSafe('\u001b[31mRED\u001b]0;title\u0007'), '\\u001b[31mRED\\u001b]0;title\\u0007', 'ESC and BEL (CSI, OSC) escaped')
  t.equal(terminalSafe('a\u009bb\u0085c\u007fd'), 'a\\u009bb\\u0085c\\u007fd', 'C1 controls and DEL')
  t.equal(terminalSafe('tab\there\r\nnext'), 'tab\\u0009here\\u000d\\u000anext', 'one line: tab, CR and LF escaped')
  t.equal(terminalSafe('one\ntwo\r', true), 'one\ntwo\\u000d', 'keepNewlines keeps LF only')
  t.equal(terminalSafe('abc\u202Egnp.exe\u2066x\u200Bz\u2028'), 'abc\\u202egnp.exe\\u2066x\\u200bz\\u2028', 'bidi controls, zero-width and line separators')
  t.equal(terminalSafe('tag\u{E0041}'), 'tag\\udb40\\udc41', 'astral format characters as a surrogate pair escape')
  t.equal(terminalSafe('lone \uD800 surrogate'), 'lone \\ud800 surrogate')
  t.equal(terminalSafe('naïve 東京 🙂 "quoted" \\ back'), 'naïve 東京 🙂 "quoted" \\ back', 'printable text is unchanged')
  const json = JSON.stringify({ v: 'x\u009b\u202e\u{E0041}y' })
  t.same(JSON.parse(terminalSafe(json)), JSON.parse(json), 'applied to JSON text, the JSON means the same')
})

t.test('list, show, approve: the approver sees the exact call, the agent\'s retry runs once', async t => {
  const client = new Client({ name: 'cli-approvals-test', version: '1' })
  await client.connect(new StreamableHTTPClientTransport(new URL(gw.url('api')), { requestInit: { headers: { authorization: `Bearer ${demo.token(OPS)}` } } }))
  t.teardown(async () => { await client.close() })
  const grace = demo.approverToken(GRACE)
  const frank = demo.approverToken(FRANK)

  const empty = await approvals(['list'], grace)
  t.equal(empty.code, 0)
  t.match(empty.out, /nothing is waiting/)

  const before = apiPosts
  const args = { userId: 'u-300' }
  const id = await approvalOf(client.callTool({ name: 'user_delete', arguments: args }))
  const hostileId = await approvalOf(client.callTool({ name: 'user_delete', arguments: { userId: HOSTILE } }))
  t.equal(apiPosts, before, 'nothing forwarded while they wait')

  const listed = await approvals(['list'], grace)
  t.equal(listed.code, 0, listed.err)
  t.match(listed.out, /2 waiting for approval/)
  t.match(listed.out, /ID\s+CALL\s+AGENT\s+USER\s+POLICY\s+EXPIRES/)
  const row = listed.out.split('\n').find(l => l.startsWith(id))
  t.ok(row, 'a row for the approval')
  t.match(row!, /api\/user_delete\s+ops-bot\s+frank\s+admin-tool-user-delete\s+in \d+m/)
  t.ok(listed.out.split('\n').some(l => l.startsWith(hostileId)), 'and for the other')

  const shown = await approvals(['show', id], grace)
  t.equal(shown.code, 0, shown.err)
  t.match(shown.out, new RegExp(`approval ${id}`))
  t.match(shown.out, /status\s+pending/)
  t.match(shown.out, /call\s+api\/user_delete/)
  t.match(shown.out, /agent\s+ops-bot/)
  t.match(shown.out, /user\s+frank/)
  t.match(shown.out, /department\s+platform-ops/)
  t.match(shown.out, /policies\s+admin-tool-user-delete/)
  t.match(shown.out, /who may approve\s+\S/)
  t.match(shown.out, /arguments sha256\s+[A-Za-z0-9_-]{43}/)
  t.match(shown.out, new RegExp(`page\\s+${gw.config.publicUrl}/approvals/${id}`))
  t.match(shown.out, /arguments:\n {2}\{\n {4}"userId": "u-300"\n {2}\}/, 'the arguments, pretty-printed')

  const byUrl = await approvals(['show', `${gw.config.publicUrl}/approvals/${id}`], grace)
  t.equal(byUrl.code, 0, 'the approval\'s URL works as its id')
  t.equal(byUrl.out, shown.out)

  const hostile = await approvals(['show', hostileId], grace)
  t.equal(hostile.code, 0, hostile.err)
  t.notMatch(hostile.all, UNSAFE_BYTES, 'no control byte, bidi control or ESC sequence reaches the terminal')
  t.match(hostile.out, '"userId": "\\u001b[31mRED\\u001b]0;title\\u0007 \\u009b2J \\u202egnp.exe"', 'the agent\'s escapes are shown as text')
  const hostileList = await approvals(['list'], grace)
  t.notMatch(hostileList.all, UNSAFE_BYTES)
  const hostileJson = await approvals(['show', hostileId, '--json'], grace)
  t.notMatch(hostileJson.all, UNSAFE_BYTES, '--json too')
  t.equal(JSON.parse(JSON.parse(hostileJson.out).approval.arguments).userId, HOSTILE, 'and its JSON still means the same')

  // The caller's own user may not decide, and so is not shown the call either.
  const ownShow = await approvals(['show', id], frank)
  t.equal(ownShow.code, 1)
  t.notMatch(ownShow.out, /u-300/, 'the arguments are not shown to someone who may not decide')
  t.match(ownShow.err, /you may not decide on this approval: You cannot approve a call made for your own user\./)
  const own = await approvals(['approve', id], frank)
  t.equal(own.code, 1, 'frank may not approve the call made for frank')
  t.match(own.err, /not approved: You cannot approve a call made for your own user\./)
  t.equal(own.out, '')
  t.equal(apiPosts, before, 'nothing forwarded')

  const ok = await approvals(['approve', id, '--reason', 'ticket OPS-1'], grace)
  t.equal(ok.code, 0, ok.err)
  t.match(ok.out, new RegExp(`^approved ${id}: api/user_delete for agent ops-bot, user frank`))
  t.match(ok.out, /arguments:\n {2}\{\n {4}"userId": "u-300"\n {2}\}/, 'what was approved')
  t.match(ok.out, /reason: ticket OPS-1/)
  t.match(ok.out, /runs once when it is made again/)
  t.ok(gw.audit.some(r => r.event === 'approval' && r.method === 'approvals/approve' && r.approver === 'grace' && r.reason.includes('OPS-1')), 'audited with the reason')

  const ran = await client.callTool({ name: 'user_delete', arguments: args })
  t.notOk(ran.isError, 'the agent\'s identical retry ran')
  t.ok(apiPosts > before, 'forwarded')
  t.equal(gw.audit.filter(r => r.tool === 'user_delete' && r.upstreamTokenId !== undefined).length, 1, 'exactly once')

  const decided = await approvals(['approve', id], grace)
  t.equal(decided.code, 1, 'a decided approval is not found any more')
  t.match(decided.err, /No approval is waiting under this address/)

  const denied = await approvals(['deny', hostileId, '--reason', 'not a user id'], grace)
  t.equal(denied.code, 0, denied.err)
  t.match(denied.out, new RegExp(`^denied ${hostileId}: api/user_delete`))
  t.match(denied.out, /stays refused/)
  t.notMatch(denied.all, UNSAFE_BYTES)

  const none = await approvals(['list'], grace)
  t.match(none.out, /nothing is waiting/)

  for (const r of [empty, listed, shown, hostile, ownShow, own, ok, denied]) {
    t.notOk(r.all.includes(grace) || r.all.includes(frank), 'the token is never printed')
  }
})

t.test('--json prints the gateway\'s JSON', async t => {
  const grace = demo.approverToken(GRACE)
  const list = await approvals(['list', '--json'], grace)
  t.equal(list.code, 0)
  t.same(JSON.parse(list.out), { approvals: [] })

  const client = new Client({ name: 'cli-approvals-json', version: '1' })
  await client.connect(new StreamableHTTPClientTransport(new URL(gw.url('api')), { requestInit: { headers: { authorization: `Bearer ${demo.token(OPS)}` } } }))
  t.teardown(async () => { await client.close() })
  const id = await approvalOf(client.callTool({ name: 'config_override', arguments: { key: 'mode', value: 'safe' } }))
  const listed = JSON.parse((await approvals(['list', '--json'], grace)).out) as { approvals: Array<{ id: string, tool: string }> }
  t.same(listed.approvals.map(a => [a.id, a.tool]), [[id, 'config_override']])
  const shown = JSON.parse((await approvals(['show', id, '--json'], grace)).out) as { approval: { arguments: string } }
  t.same(JSON.parse(shown.approval.arguments), { key: 'mode', value: 'safe' })
  const denied = await approvals(['deny', id, '--json'], grace)
  t.equal(denied.code, 0)
  t.match(JSON.parse(denied.out), { approval: { id, status: 'denied', approver: 'grace' } })
  const refused = await approvals(['deny', id, '--json'], grace)
  t.equal(refused.code, 1)
  t.match(JSON.parse(refused.out), { error: 'not_found' }, 'a refusal prints the gateway\'s JSON as well')
  t.match(refused.err, /No approval is waiting/)
})

t.test('refusals and failures: exit 1 with the gateway\'s message or the URL', async t => {
  const grace = demo.approverToken(GRACE)
  const unknown = await approvals(['deny', 'AAAAAAAAAAAAAAAAAAAAAA'], grace)
  t.equal(unknown.code, 1)
  t.match(unknown.err, /^mcp-warden approvals: not denied: No approval is waiting under this address: it may have expired, been decided already, or never existed\.$/)
  const showUnknown = await approvals(['show', 'AAAAAAAAAAAAAAAAAAAAAA'], grace)
  t.equal(showUnknown.code, 1)
  t.match(showUnknown.err, /No approval is waiting/)

  const agentToken = demo.token(OPS)
  const wrongAudience = await approvals(['list'], agentToken)
  t.equal(wrongAudience.code, 1, 'an agent token is not an approver token')
  t.match(wrongAudience.err, /the gateway refused the approver token: .*aud/)
  t.notOk(wrongAudience.all.includes(agentToken))

  const port = await freePort('127.0.0.1')
  const c = capture()
  t.equal(await approvalsCommand(['list', '--url', `http://127.0.0.1:${port}`, '--token', grace], c.io, {}), 1)
  t.match(c.err.join('\n'), new RegExp(`cannot reach the gateway at http://127\\.0\\.0\\.1:${port}/approvals: ECONNREFUSED`))

  // A server that never answers, and one that is not the gateway.
  const silent: Server = createServer(() => {})
  const other: Server = createServer((_req, res) => { res.writeHead(200, { 'content-type': 'text/html' }).end('<html>hello</html>') })
  await Promise.all([silent, other].map(async s => { await new Promise<void>(resolve => s.listen(0, '127.0.0.1', resolve)) }))
  t.teardown(async () => {
    silent.closeAllConnections(); other.closeAllConnections()
    await Promise.all([silent, other].map(async s => { await new Promise(resolve => s.close(resolve)) }))
  })
  const at = (s: Server): string => `http://127.0.0.1:${(s.address() as { port: number }).port}`
  const slow = capture()
  t.equal(await approvalsCommand(['list', '--url', at(silent), '--token', grace, '--timeout', '0.3'], slow.io, {}), 1)
  t.match(slow.err.join('\n'), new RegExp(`cannot reach the gateway at ${at(silent)}/approvals: no answer within 0.3 s`))
  const html = capture()
  t.equal(await approvalsCommand(['show', 'AAAAAAAAAAAAAAAAAAAAAA', '--url', `${at(other)}/`, '--token', grace], html.io, {}), 1)
  t.match(html.err.join('\n'), `${at(other)}/approvals/AAAAAAAAAAAAAAAAAAAAAA answered 200 without the approvals API's JSON: is ${at(other)} the gateway's public URL?`)

  const plain = capture()
  t.equal(await approvalsCommand(['list', '--url', 'http://gateway.invalid', '--token', grace, '--timeout', '0.5'], plain.io, {}), 1)
  t.match(plain.err.join('\n'), /warning: http:\/\/gateway\.invalid is plain http: the approver token crosses the network unencrypted/)
})

t.test('usage errors exit 2 and name what is missing; URL and token come from the environment too', async t => {
  const grace = demo.approverToken(GRACE)
  const cases: Array<[string[], NodeJS.ProcessEnv, RegExp]> = [
    [['list', '--url', gw.base], {}, /an approver token is required: --token JWT or MCP_WARDEN_APPROVER_TOKEN/],
    [['list', '--token', grace], {}, /--url URL or MCP_WARDEN_URL/],
    [['list', '--url', gw.base, '--token', 'not a jwt'], {}, /is not a JWT/],
    [['list', '--url', 'ftp://x', '--token', grace], {}, /http or https URL/],
    [['list', '--url', 'nope', '--token', grace], {}, /is not a URL/],
    [['list', '--url', 'http://u:p@127.0.0.1', '--token', grace], {}, /user name or password/],
    [['list', '--url', 'http://127.0.0.1?x=1', '--token', grace], {}, /without a query/],
    [['list', 'extra', '--url', gw.base, '--token', grace], {}, /list takes no arguments/],
    [['show', '--url', gw.base, '--token', grace], {}, /show needs the approval id/],
    [['approve', 'a', 'b', '--url', gw.base, '--token', grace], {}, /one approval id/],
    [['approve', '../../servers', '--url', gw.base, '--token', grace], {}, /is not an approval id/],
    [['show', 'AAAAAAAAAAAAAAAAAAAAAA', '--reason', 'x', '--url', gw.base, '--token', grace], {}, /--reason is for approve and deny/],
    [['deny', 'AAAAAAAAAAAAAAAAAAAAAA', '--reason', 'x'.repeat(501), '--url', gw.base, '--token', grace], {}, /at most 500/],
    [['list', '--timeout', '0', '--url', gw.base, '--token', grace], {}, /--timeout must be/],
    [['list', '--frobnicate'], {}, /Unknown option/],
    [['frobnicate'], {}, /unknown approvals command "frobnicate"/]
  ]
  for (const [args, env, message] of cases) {
    const c = capture()
    const label = args.map(a => a === grace ? '<token>' : a.slice(0, 40)).join(' ')
    const err = await approvalsCommand(args, c.io, env).then(() => null, (e: unknown) => e)
    t.ok(err instanceof ApprovalsUsageError, `${label}: a usage error`)
    t.match((err as Error).message, message, label)
    t.notOk((err as Error).message.includes(grace), 'the token is not in the message')
  }

  const viaMain = capture()
  const saved = process.env.MCP_WARDEN_APPROVER_TOKEN
  delete process.env.MCP_WARDEN_APPROVER_TOKEN
  t.teardown(() => { if (saved !== undefined) process.env.MCP_WARDEN_APPROVER_TOKEN = saved })
  t.equal(await main(['approvals', 'list', '--url', gw.base], viaMain.io), 2, 'a usage error exits 2')
  t.match(viaMain.err.join('\n'), /^mcp-warden approvals: an approver token is required: --token JWT or MCP_WARDEN_APPROVER_TOKEN$/)

  const c = capture()
  t.equal(await approvalsCommand(['list'], c.io, { MCP_WARDEN_URL: `${gw.base}/approvals/`, MCP_WARDEN_APPROVER_TOKEN: ` ${grace}\n` }), 0, 'from MCP_WARDEN_URL and MCP_WARDEN_APPROVER_TOKEN')
  t.match(c.out.join('\n'), /nothing is waiting/)
})

t.test('help', async t => {
  for (const args of [['approvals', '--help'], ['approvals', 'list', '--help'], ['approvals', 'help']]) {
    const c = capture()
    t.equal(await main(args, c.io), 0, args.join(' '))
    t.match(c.out.join('\n'), /^Usage: mcp-warden approvals <command>/)
    t.match(c.out.join('\n'), /MCP_WARDEN_APPROVER_TOKEN/)
  }
  const bare = capture()
  t.equal(await main(['approvals'], bare.io), 1)
  const top = capture()
  t.equal(await main(['--help'], top.io), 0)
  t.match(top.out.join('\n'), /\n {2}approvals {2}human approvals: list, show, approve, deny\n/)
})

t.test('the built command (dist/bin/mcp-warden.js approvals)', async t => {
  const client = new Client({ name: 'cli-approvals-bin', version: '1' })
  await client.connect(new StreamableHTTPClientTransport(new URL(gw.url('api')), { requestInit: { headers: { authorization: `Bearer ${demo.token(OPS)}` } } }))
  t.teardown(async () => { await client.close() })
  const id = await approvalOf(client.callTool({ name: 'user_delete', arguments: { userId: 'u-301' } }))
  const grace = demo.approverToken(GRACE)
  const env = { ...process.env, MCP_WARDEN_URL: '', MCP_WARDEN_APPROVER_TOKEN: '' }
  const listed = await run(process.execPath, [BIN, 'approvals', 'list', '--url', gw.base, '--token', grace], { env, timeout: 60_000 })
  t.match(listed.stdout, new RegExp(`${id}\\s+api/user_delete\\s+ops-bot\\s+frank`))
  const denied = await run(process.execPath, [BIN, 'approvals', 'deny', id], { env: { ...env, MCP_WARDEN_URL: gw.base, MCP_WARDEN_APPROVER_TOKEN: grace }, timeout: 60_000 })
  t.match(denied.stdout, new RegExp(`^denied ${id}: api/user_delete`))
  const again = await run(process.execPath, [BIN, 'approvals', 'deny', id, '--url', gw.base, '--token', grace], { env, timeout: 60_000 }).then(() => null, (e: { code: number, stderr: string }) => e)
  t.equal(again?.code, 1, 'a refusal exits 1')
  t.match(again?.stderr, /^mcp-warden approvals: not denied: No approval is waiting/)
})
