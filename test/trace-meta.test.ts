/**
 * lib/trace-meta.ts: `params._meta.traceparent` set on a message's bytes. Every case is checked
 * two ways: the edited text parses to the message with exactly that _meta, and every byte outside
 * the edit is the agent's.
 */
import t from 'tap'
import { withTraceMeta } from '../lib/trace-meta.js'

const TP = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'
const run = (text: string, carrier: { traceparent: string, tracestate?: string } = { traceparent: TP }): string =>
  Buffer.from(withTraceMeta(Buffer.from(text), carrier)).toString('utf8')

t.test('params absent, empty, or without _meta: _meta is added', async t => {
  t.same(JSON.parse(run('{"jsonrpc":"2.0","id":1,"method":"tools/list"}')), { params: { _meta: { traceparent: TP } }, jsonrpc: '2.0', id: 1, method: 'tools/list' })
  t.same(JSON.parse(run('{"jsonrpc":"2.0","id":1,"method":"ping","params":{ }}')).params, { _meta: { traceparent: TP } })
  const text = '{"jsonrpc":"2.0","id":"x","method":"tools/call","params":{"name":"a","arguments":{"n":1e3}}}'
  const out = run(text, { traceparent: TP, tracestate: 'a=1' })
  t.same(JSON.parse(out).params, { _meta: { traceparent: TP, tracestate: 'a=1' }, name: 'a', arguments: { n: 1000 } })
  t.equal(out.replace(`"_meta":{"traceparent":"${TP}","tracestate":"a=1"},`, ''), text, 'nothing else changed')
})

t.test('an existing _meta: traceparent replaced or added, other members kept as they were', async t => {
  const text = '{"jsonrpc":"2.0","method":"notifications/progress","params":{"_meta":{"traceparent":"00-aa-bb-01","x":[1,{"traceparent":"inner"}]},"progress":1}}'
  const out = run(text)
  t.equal(out, text.replace('"00-aa-bb-01"', `"${TP}"`))
  t.equal(run('{"id":1,"method":"m","params":{"_meta":{}}}'), `{"id":1,"method":"m","params":{"_meta":{"traceparent":"${TP}"}}}`)
  t.equal(run('{"id":1,"method":"m","params":{"_meta":{"progressToken":"p"}}}'), `{"id":1,"method":"m","params":{"_meta":{"traceparent":"${TP}","progressToken":"p"}}}`)
  t.equal(run('{"id":1,"method":"m","params":{"_meta":{"tracestate":"old"}}}', { traceparent: TP, tracestate: 'new' }), `{"id":1,"method":"m","params":{"_meta":{"traceparent":"${TP}","tracestate":"new"}}}`)
})

t.test('keys written with escapes are the keys a parser reads', async t => {
  const text = '{"id":1,"method":"m","\\u0070arams":{"\\u005fmeta":{"trace\\u0070arent":"old"},"s":"\\"}{"}}'
  const parsed = JSON.parse(run(text))
  t.same(parsed.params, { _meta: { traceparent: TP }, s: '"}{' })
  t.equal(Object.keys(parsed.params._meta).length, 1, 'replaced, not added beside')
})

t.test('strings holding braces, quotes and backslashes do not mislead the scan', async t => {
  const text = '{"method":"m","id":"{\\"params\\":{}}","x":"\\\\","params":{"a":"_meta\\"","b":{"_meta":1},"_meta":{"k":"}"}}}'
  const parsed = JSON.parse(run(text))
  t.same(parsed.params, { a: '_meta"', b: { _meta: 1 }, _meta: { traceparent: TP, k: '}' } })
  t.equal(parsed.id, '{"params":{}}')
})

t.test('params or _meta that is not an object: the message is left as it is', async t => {
  for (const text of [
    '{"id":1,"method":"m","params":[1,2]}',
    '{"id":1,"method":"m","params":{"_meta":null}}',
    '{"id":1,"method":"m","params":{"_meta":"x"}}',
    '[1]'
  ]) t.equal(run(text), text)
})
