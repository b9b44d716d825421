import { mkdtempSync, symlinkSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import { startDemo, type Demo } from '../lib/demo/index.js'
import { DemoDatabase } from '../lib/demo/db.js'
import { ALLOW_ALL, startWithConfig, type TestGateway } from './fixtures/gateway.js'

let demo: Demo
let gw: TestGateway

t.before(async () => {
  // These tests are about the demo servers themselves: every call is allowed here
  // (test/cedar-e2e.test.ts covers the reference policies in front of them).
  demo = await startDemo({ dataDir: mkdtempSync(join(tmpdir(), 'mcpw-demo-')), port: 0, overrides: { authorization: ALLOW_ALL } })
  gw = await startWithConfig(demo.config)
})
t.teardown(async () => { await gw.close(); await demo.close() })

async function agent (server: string, role = 'readonly'): Promise<Client> {
  const token = demo.tokens().find(a => a.role === role)!.token
  const client = new Client({ name: 'demo-test', version: '1' })
  await client.connect(new StreamableHTTPClientTransport(new URL(gw.url(server)), { requestInit: { headers: { authorization: `Bearer ${token}` } } }))
  t.teardown(async () => { await client.close() })
  return client
}

const text = (r: unknown): string => ((r as { content: Array<{ text: string }> }).content[0]!.text)

t.test('the demo servers list their tools through the gateway', async t => {
  const expected: Record<string, string[]> = {
    db: ['database_drop', 'database_insert', 'database_query'],
    file: ['file_read', 'file_write'],
    api: ['config_override', 'metrics_fetch', 'payment_process', 'user_delete']
  }
  for (const [server, tools] of Object.entries(expected)) {
    const c = await agent(server)
    t.same((await c.listTools()).tools.map(x => x.name).sort(), tools, server)
  }
  t.equal(demo.tokens().length, 6, 'a token per demo role')
})

t.test('db: a real SQLite database; database_query is read-only', async t => {
  const c = await agent('db')
  const rows = JSON.parse(text(await c.callTool({ name: 'database_query', arguments: { sql: 'SELECT name FROM customers WHERE tier = ? ORDER BY id', params: ['gold'] } })))
  t.same(rows, [{ name: 'Ada Lovelace' }, { name: 'Grace Hopper' }])
  const write = await c.callTool({ name: 'database_query', arguments: { sql: 'DELETE FROM customers' } })
  t.equal(write.isError, true)
  t.match(text(write), /read-only/)
  const inserted = await c.callTool({ name: 'database_insert', arguments: { table: 'orders', values: { customer_id: 2, amount: 9.5, status: 'new' } } })
  t.match(JSON.parse(text(inserted)), { inserted: 1 })
  const bad = await c.callTool({ name: 'database_insert', arguments: { table: 'orders', values: { nope: 1 } } })
  t.match(text(bad), /unknown: nope/)
  const count = JSON.parse(text(await c.callTool({ name: 'database_query', arguments: { sql: "SELECT count(*) AS n FROM orders WHERE status = 'new'" } })))
  t.same(count, [{ n: 1 }])
  await c.callTool({ name: 'database_insert', arguments: { table: 'customers', values: { name: 'Tmp', email: 't@x', tier: 'none' } } })
  t.same(JSON.parse(text(await c.callTool({ name: 'database_drop', arguments: { table: 'orders' } }))), { dropped: 'orders' })
  t.match(text(await c.callTool({ name: 'database_query', arguments: { sql: 'SELECT * FROM orders' } })), /no such table/)
})

t.test('db: database_query refuses every write and every pragma, however it is spelled, and the file keeps every change', async t => {
  const file = join(mkdtempSync(join(tmpdir(), 'mcpw-db-')), 'demo.db')
  const db = await DemoDatabase.open(file)
  const writes = [
    'DELETE FROM customers',
    'DELETE FROM customers RETURNING id',
    'WITH x AS (SELECT 1) INSERT INTO orders (customer_id, amount, status) SELECT 1, 1, \'x\' RETURNING id',
    'UPDATE customers SET tier = \'none\' RETURNING *',
    'SELECT 1; DROP TABLE customers',
    'SELECT 1; PRAGMA query_only = 0',
    'SELECT 1 /* ; */; PRAGMA foreign_keys = OFF',
    'PRAGMA query_only = 0',
    'PRAGMA table_info(customers)',
    'PRAGMA hard_heap_limit = 50000',
    'PRAGMA foreign_keys = OFF; SELECT 1',
    '/* comment */ PRAGMA foreign_keys = OFF',
    '-- comment\nPRAGMA query_only = ON; SELECT 1',
    'CREATE TABLE t AS SELECT 1',
    `ATTACH '${file}.other' AS other`,
    `VACUUM INTO '${file}.copy'`,
    'VACUUM'
  ]
  for (const sql of writes) {
    const r = await db.query(sql)
    t.equal(r.ok, false, `${sql}: refused`)
    if (!r.ok) t.match(r.message, /read-only statement/, `${sql}: says what the tool does`)
  }
  t.same(await db.query('SELECT count(*) AS n FROM customers'), { ok: true, value: [{ n: 3 }] }, 'nothing was changed')
  t.match(await db.query('SELEC 1'), { ok: false, message: /read-only statement/ })
  t.match(await db.query('SELECT * FROM nowhere'), { ok: false, message: /^SQL error: no such table/ })
  t.match(await db.insert('orders', { customer_id: 99, amount: 1, status: 'x' }), { ok: false, message: /FOREIGN KEY/ }, 'foreign keys are still enforced after the refused pragmas')
  t.match(await db.insert('orders', { customer_id: 2, amount: 1, status: 'kept' }), { ok: true, value: { inserted: 1 } }, 'writes still work (no heap limit or query_only left behind)')
  t.match(await db.query('SELECT x\'00ff\' AS b'), { ok: true, value: [{ b: { $blob: 'AP8=' } }] }, 'a blob comes back as base64')
  await db.close()
  const again = await DemoDatabase.open(file)
  t.teardown(async () => { await again.close() })
  t.same(await again.query("SELECT count(*) AS n FROM orders WHERE status = 'kept'"), { ok: true, value: [{ n: 1 }] }, 'the insert is in the file')
})

t.test('db: a statement that never ends, or grows without bound, is stopped and the database goes on', async t => {
  const db = await DemoDatabase.open(join(mkdtempSync(join(tmpdir(), 'mcpw-db-')), 'demo.db'), { timeoutMs: 1000 })
  t.teardown(async () => { await db.close() })
  const tick = Date.now()
  let beats = 0
  const heartbeat = setInterval(() => { beats++ }, 50)
  const endless = await db.query('WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) AS n FROM c')
  clearInterval(heartbeat)
  t.match(endless, { ok: false, message: /ran longer than 1000 ms and was stopped/ })
  t.ok(beats >= 10, `this process kept running meanwhile (${beats} heartbeats in ${Date.now() - tick} ms)`)
  t.match(await db.query('SELECT length(randomblob(900000000)) AS n'), { ok: false, message: /out of memory|too big|stopped/ }, 'SQLite\'s heap is capped')
  t.match(await db.query('WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 12) SELECT printf(\'%.*c\', 3000000, \'x\') AS s FROM c'), { ok: false, message: /larger than 1048576 bytes/ }, 'a result is capped')
  t.same(await db.query('SELECT count(*) AS n FROM customers'), { ok: true, value: [{ n: 3 }] }, 'and the next query is answered')
})

t.test('file: the sandbox cannot be left', async t => {
  const c = await agent('file')
  t.match(text(await c.callTool({ name: 'file_read', arguments: { path: 'data/report.csv' } })), /month,revenue/)
  t.match(text(await c.callTool({ name: 'file_write', arguments: { path: 'notes/today.txt', content: 'hello' } })), /wrote 5 bytes/)
  t.equal(text(await c.callTool({ name: 'file_read', arguments: { path: 'notes/today.txt' } })), 'hello')
  symlinkSync('/etc', join(demo.dataDir, 'sandbox', 'escape'))
  for (const path of ['../demo.db', '/etc/passwd', 'data/../../demo-issuer.key.pem', 'escape/hostname']) {
    const r = await c.callTool({ name: 'file_read', arguments: { path } })
    t.equal(r.isError, true, `${path} refused`)
    t.match(text(r), /outside the sandbox/)
  }
  const w = await c.callTool({ name: 'file_write', arguments: { path: 'escape/evil', content: 'x' } })
  t.match(text(w), /outside the sandbox/)
})

t.test('api: metrics, payments, users, settings', async t => {
  const c = await agent('api')
  t.match(JSON.parse(text(await c.callTool({ name: 'metrics_fetch', arguments: { service: 'search' } }))), { service: 'search', latencyMs: { p50: Number } })
  t.match(JSON.parse(text(await c.callTool({ name: 'payment_process', arguments: { amount: 12.5, currency: 'EUR', recipient: 'acme' } }))), { status: 'processed', amount: 12.5, id: /^pay_/ })
  const badPayment = await c.callTool({ name: 'payment_process', arguments: { amount: -1, currency: 'EUR', recipient: 'acme' } })
  t.equal(badPayment.isError, true, 'the input schema is enforced')
  t.same(JSON.parse(text(await c.callTool({ name: 'user_delete', arguments: { userId: 'u-200' } }))), { deleted: 'u-200' })
  t.match(text(await c.callTool({ name: 'user_delete', arguments: { userId: 'u-200' } })), /no user u-200/)
  t.same(JSON.parse(text(await c.callTool({ name: 'config_override', arguments: { key: 'feature.newCheckout', value: 'on' } }))), { key: 'feature.newCheckout', value: 'on', previous: 'off' })
})

t.test('the demo servers cannot be bypassed: without the gateway\'s token they refuse', async t => {
  const { request } = await import('undici')
  const agentToken = demo.tokens()[0]!.token
  for (const server of ['db', 'file', 'api'] as const) {
    for (const authorization of [undefined, `Bearer ${agentToken}`]) {
      const res = await request(demo.upstreams[server].url, {
        method: 'POST',
        headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream', ...(authorization !== undefined ? { authorization } : {}) },
        body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'database_drop', arguments: { table: 'customers' } } })
      })
      const body = await res.body.json() as { error: { message: string } }
      t.equal(res.statusCode, 401, `${server} ${authorization === undefined ? 'without a token' : 'with the agent\'s own token'}: 401`)
      t.match(body.error.message, /^Unauthorized: /)
    }
  }
})
