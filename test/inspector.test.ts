/**
 * The MCP Inspector CLI (2.x, on Node 22) against the gateway: the README's one-liner, on a
 * server route and on the aggregated endpoint.
 */
import { execFile } from 'node:child_process'
import t from 'tap'
// @ts-expect-error: a plain JavaScript script without type declarations
import { inspector, node22 } from '../scripts/node22.mjs'
import { makeIssuer } from './fixtures/keys.js'
import { startGateway, type TestGateway } from './fixtures/gateway.js'
import { startRecordingUpstream, type RecordingUpstream } from './fixtures/upstream.js'

const issuer = makeIssuer('EdDSA')
let up: RecordingUpstream
let gw: TestGateway
let node: string
let cli: string

t.before(async () => {
  node = node22() as string
  cli = inspector() as string
  up = await startRecordingUpstream()
  gw = await startGateway({ issuer, upstreams: { rec: { url: up.url } } })
})
t.teardown(async () => { await gw.close(); await up.close() })

async function run (args: string[]): Promise<{ code: number, out: string, err: string }> {
  return await new Promise(resolve => {
    execFile(node, [cli, '--cli', ...args], { timeout: 60_000, env: { ...process.env, MCP_CATALOG_PATH: `${gw.config.tokens.keysDir}/inspector-catalog.json` } }, (err, out, stderr) => {
      resolve({ code: err === null ? 0 : (err as { code?: number }).code ?? 1, out, err: stderr })
    })
  })
}

t.test('tools/list and tools/call on a server route', async t => {
  const header = `Authorization: Bearer ${issuer.sign({ aud: gw.resource('rec') })}`
  const list = await run([gw.url('rec'), '--method', 'tools/list', '--header', header])
  t.equal(list.code, 0, list.err)
  t.same((JSON.parse(list.out) as { tools: Array<{ name: string }> }).tools.map(x => x.name).sort(), ['add_tool', 'count', 'echo'])
  const call = await run([gw.url('rec'), '--method', 'tools/call', '--tool-name', 'echo', '--tool-arg', 'text=from the inspector', '--header', header])
  t.equal(call.code, 0, call.err)
  t.match(JSON.parse(call.out), { content: [{ type: 'text', text: 'from the inspector' }] })
  t.ok(gw.audit.some(a => a.tool === 'echo' && a.outcome === 'allow'))
})

t.test('on the aggregated endpoint', async t => {
  const header = `Authorization: Bearer ${issuer.sign({ aud: `${gw.config.publicUrl}/mcp` })}`
  const list = await run([`${gw.base}/mcp`, '--method', 'tools/list', '--header', header])
  t.equal(list.code, 0, list.err)
  t.same((JSON.parse(list.out) as { tools: Array<{ name: string }> }).tools.map(x => x.name).sort(), ['rec__add_tool', 'rec__count', 'rec__echo'])
})

t.test('without a token: refused, and the Inspector turns to the OAuth flow the 401 points to', async t => {
  const n = up.received.length
  const r = await run([gw.url('rec'), '--method', 'tools/list'])
  t.not(r.code, 0)
  t.match(r.out + r.err, /auth_required/)
  t.equal(up.received.length, n, 'nothing forwarded')
})
