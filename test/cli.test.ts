import { execFile } from 'node:child_process'
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import { createVerifier } from 'fast-jwt'
import { main, start } from '../lib/cli.js'
import { makeIssuer } from './fixtures/keys.js'
import { ALLOW_ALL } from './fixtures/gateway.js'

const run = promisify(execFile)
const BIN = new URL('../dist/bin/mcp-warden.js', import.meta.url).pathname
const dir = mkdtempSync(join(tmpdir(), 'mcpw-cli-'))

function capture (): { io: { out: (l: string) => void, err: (l: string) => void }, out: string[], err: string[] } {
  const out: string[] = []
  const err: string[] = []
  return { io: { out: l => out.push(l), err: l => err.push(l) }, out, err }
}

t.test('--help on every command', async t => {
  for (const args of [['--help'], ['start', '--help'], ['token', '--help'], ['client', '--help']]) {
    const c = capture()
    t.equal(await main(args, c.io), 0, args.join(' '))
    t.match(c.out.join('\n'), /Usage: mcp-warden/)
  }
  const c = capture()
  t.equal(await main(['frobnicate'], c.io), 2)
  t.match(c.err.join('\n'), /unknown command "frobnicate"/)
})

t.test('token signs an agent JWT the gateway would accept', async t => {
  const issuer = makeIssuer('RS256')
  const keyFile = join(dir, 'issuer.key.pem')
  writeFileSync(keyFile, issuer.privateKeyPem)
  const c = capture()
  t.equal(await main(['token', '--key', keyFile, '--issuer', issuer.issuer, '--agent', 'bot-9', '--user', 'alice', '--role', 'analyst', '--role', 'engineer',
    '--department', 'finance', '--audience', 'http://gw/servers/db/mcp', '--ttl', '120', '--kid', 'k-1'], c.io), 0)
  const verify = createVerifier({ key: issuer.publicKeyPem, algorithms: ['RS256'], complete: true })
  const { header, payload } = verify(c.out[0]!)
  t.match(header, { alg: 'RS256', kid: 'k-1' })
  t.match(payload, { iss: issuer.issuer, sub: 'bot-9', agentId: 'bot-9', userId: 'alice', roles: ['analyst', 'engineer'], department: 'finance', aud: 'http://gw/servers/db/mcp' })
  t.equal(payload.exp - payload.iat, 120)

  const missing = capture()
  t.equal(await main(['token', '--key', keyFile, '--issuer', 'x', '--agent', 'a'], missing.io), 2)
  t.match(missing.err.join(''), /--audience is required/)
  const badKey = capture()
  t.equal(await main(['token', '--key', join(dir, 'nope.pem'), '--issuer', 'x', '--agent', 'a', '--audience', 'y'], badKey.io), 2)
  t.match(badKey.err.join(''), /cannot read --key/)
})

t.test('start refuses a bad config and names the field (the real binary)', async t => {
  const file = join(dir, 'bad.yaml')
  writeFileSync(file, `identity: { issuer: https://idp, jwksUri: https://idp/jwks, algorithms: [RS256, HS256] }\nauthorization: { schema: ${ALLOW_ALL.schema}, policies: ${ALLOW_ALL.policies} }\nupstreams: { db: { url: "http://127.0.0.1:1/mcp" } }\n`)
  const err = await run('node', [BIN, 'start', '--config', file]).then(() => null, (e: { code: number, stderr: string }) => e)
  t.ok(err, 'exits non-zero')
  t.equal(err!.code, 1)
  t.match(err!.stderr, /identity\.algorithms\[1\]: HS256 is never accepted/)

  const unknown = join(dir, 'unknown.yaml')
  writeFileSync(unknown, `identity: { issuer: https://idp, jwksUri: https://idp/jwks }\nauthorization: { schema: ${ALLOW_ALL.schema}, policies: ${ALLOW_ALL.policies} }\nupstreams: { db: { url: "http://127.0.0.1:1/mcp", auth: { type: none, tokn: 1 } } }\n`)
  const err2 = await run('node', [BIN, 'start', '--config', unknown]).then(() => null, (e: { stderr: string }) => e)
  t.match(err2!.stderr, /upstreams\.db\.auth\.tokn: unknown key/)
})

/** Listening TCP servers of this process (the demo's three, the gateway, stdio bridges), once the handles closed by now are gone (up to 2 s). */
async function listening (expected = 0): Promise<number> {
  const count = (): number => process.getActiveResourcesInfo().filter(r => r === 'TCPServerWrap').length
  for (let i = 0; i < 100 && count() > expected; i++) await new Promise(resolve => setTimeout(resolve, 20))
  return count()
}

/** A demo data folder whose signing-key file is corrupt: the demo's gateway config is refused after its servers started. */
function brokenDemoDir (): string {
  const d = mkdtempSync(join(tmpdir(), 'mcpw-broken-demo-'))
  mkdirSync(join(d, 'keys'))
  writeFileSync(join(d, 'keys', 'keys.json'), '{ not json')
  return d
}

/** A config with a stdio upstream (its bridge listens on loopback) and a policy that fails schema validation. */
function brokenPolicyConfig (): string {
  const d = mkdtempSync(join(tmpdir(), 'mcpw-broken-policy-'))
  mkdirSync(join(d, 'policies'))
  writeFileSync(join(d, 'policies', 'bad.cedar'), 'permit (principal, action == Mcp::Action::"no_such_action", resource);\n')
  const file = join(d, 'gateway.yaml')
  writeFileSync(file, [
    'listen: { host: 127.0.0.1, port: 0 }',
    'identity: { issuer: https://idp, jwksUri: https://idp/jwks }',
    `authorization: { schema: ${ALLOW_ALL.schema}, policies: ${join(d, 'policies')}, watch: false }`,
    `tokens: { keysDir: ${join(d, 'keys')} }`,
    `upstreams: { fixture: { command: [${JSON.stringify(process.execPath)}, ${JSON.stringify(new URL('./fixtures/stdio-server.mjs', import.meta.url).pathname)}] } }`,
    ''
  ].join('\n'))
  return file
}

t.test('start refuses a --host or --port that is not one, before anything starts', async t => {
  for (const args of [['--port', ''], ['--port', '1e3'], ['--port', '0x4000'], ['--port', '70000'], ['--host', ''], ['--host', ' '], ['--host', 'a b']]) {
    const c = capture()
    t.equal(await main(['start', ...args, '--data-dir', join(dir, 'never')], c.io), 2, `${args.join(' ')}: usage error`)
    t.match(c.err.join('\n'), /--(port|host) must be/, `${args.join(' ')}: says why`)
  }
})

t.test('a refused boot exits non-zero with the reason and leaves no port open (the real binary)', async t => {
  for (const [what, args, reason] of [
    ['the demo, its gateway config refused after its servers started', ['start', '--port', '0', '--data-dir', brokenDemoDir()], /tokens\.keysDir: cannot use .* for the signing keys/],
    ['a config whose policies fail validation, after its stdio bridge started', ['start', '--config', brokenPolicyConfig()], /no_such_action|policy|Cedar/i]
  ] as const) {
    const started = Date.now()
    const err = await run('node', [BIN, ...args], { timeout: 30_000 }).then(() => null, (e: { code: number | null, killed: boolean, signal: string | null, stderr: string }) => e)
    t.ok(err, `${what}: exits non-zero`)
    t.equal(err!.killed, false, `${what}: exits by itself (not killed after 30 s)`)
    t.equal(err!.code, 1, `${what}: exit code 1`)
    t.match(err!.stderr, reason, `${what}: the reason is printed`)
    t.ok(Date.now() - started < 30_000, `${what}: within ${Date.now() - started} ms`)
  }
})

t.test('a refused boot closes every server it had opened (in process)', async t => {
  const before = await listening(Infinity)
  const c = capture()
  await t.rejects(start(['--port', '0', '--data-dir', brokenDemoDir()], c.io), /tokens\.keysDir/)
  t.equal(await listening(before), before, 'the demo servers are closed again')
  await t.rejects(start(['--config', brokenPolicyConfig()], c.io))
  t.equal(await listening(before), before, 'the stdio bridge is closed again')
})

t.test('start with a config serves it; start without one runs the demo, and client talks to it', async t => {
  const c = capture()
  const running = await start(['--port', '0', '--data-dir', join(dir, 'demo')], c.io)
  t.ok(running)
  t.teardown(async () => { await running!.close() })
  const banner = c.out.join('\n')
  t.match(banner, /listening on http:\/\/127\.0\.0\.1:\d+ \(embedded demo\)/)
  for (const server of ['db', 'file', 'api']) t.match(banner, new RegExp(`/servers/${server}/mcp`))
  for (const role of ['READONLY', 'READWRITE', 'ANALYST', 'ENGINEER', 'PAYMENT_ADMIN', 'SUPER_ADMIN']) t.match(banner, new RegExp(`export TOKEN_${role}=ey`))
  t.match(banner, /npx mcp-warden client http:\/\/127\.0\.0\.1:\d+\/servers\/db\/mcp --token "\$TOKEN_READONLY" call database_query/)

  const token = /export TOKEN_READONLY=(\S+)/.exec(banner)![1]!
  const url = `${running!.config.publicUrl}/servers/db/mcp`
  const listed = capture()
  t.equal(await main(['client', url, '--token', token, 'list'], listed.io), 0)
  t.same(JSON.parse(listed.out.join('\n')).tools.map((x: { name: string }) => x.name), ['database_query'], 'a readonly agent sees only what it may call')
  const called = capture()
  t.equal(await main(['client', url, '--token', token, 'call', 'database_query', '{"sql":"SELECT count(*) AS n FROM customers"}'], called.io), 0)
  t.match(JSON.parse(called.out.join('\n')).content[0].text, /"n": 3/)
  const refused = capture()
  t.equal(await main(['client', url, '--token', 'garbage', 'list'], refused.io), 1)
  t.match(refused.err.join(''), /401|Invalid token/)
})

t.test('keys: list and rotate', async t => {
  const keysDir = join(dir, 'keys')
  const first = capture()
  t.equal(await main(['keys', 'list', '--keys-dir', keysDir], first.io), 0)
  t.match(first.out.join('\n'), /^\d{4}-\d\d-\d\d-[0-9a-f]{10} {2}activates 1970-01-01T00:00:00\.000Z {2}\(signing\) {2}\(published\)$/)
  const rotated = capture()
  t.equal(await main(['keys', 'rotate', '--keys-dir', keysDir, '--activate-in', '120'], rotated.io), 0)
  t.match(rotated.out.join('\n'), /new key \S+ in .*: published now, signs from /)
  const listed = capture()
  await main(['keys', 'list', '--keys-dir', keysDir], listed.io)
  const lines = listed.out
  t.equal(lines.length, 2)
  t.match(lines[0], /\(signing\) {2}\(published\)$/, 'the old key signs until the new one activates')
  t.match(lines[1], / {2}\(published\)$/)
  t.notMatch(lines[1], /signing/)
  const bad = capture()
  t.equal(await main(['keys', 'rotate', '--keys-dir', keysDir, '--activate-in', 'soon'], bad.io), 2)
  t.match(bad.err.join(''), /--activate-in must be a whole number/)
})
