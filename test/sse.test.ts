import t from 'tap'
import { Readable } from 'node:stream'
import { eventMessage, sseMessages, sseTransform } from '../lib/sse.js'

// "é" is two bytes in UTF-8: these chunks split it, and split an event across chunks.
const text = 'id: 1\nevent: message\ndata: {"jsonrpc":"2.0","method":"notifications/message","params":{"data":"café"}}\n\n' +
  'data: not json\n\n' +
  'data: {"jsonrpc":"2.0","id":7,"result":{"ok":true}}'
const bytes = Buffer.from(text)
const cut = bytes.indexOf(Buffer.from('é')) + 1
const chunks = [bytes.subarray(0, cut), bytes.subarray(cut, cut + 40), bytes.subarray(cut + 40)]

t.test('sseMessages: the messages of a stream, whole even when chunks split a character or an event', async t => {
  const got: unknown[] = []
  for await (const m of sseMessages(Readable.from(chunks))) got.push(m)
  t.same(got, [
    { jsonrpc: '2.0', method: 'notifications/message', params: { data: 'café' } },
    { jsonrpc: '2.0', id: 7, result: { ok: true } }
  ], 'non-JSON events are skipped; the last event needs no closing blank line')
})

t.test('sseTransform: rewrites messages, keeps ids, event names and non-JSON events', async t => {
  const stream = Readable.from(chunks).pipe(sseTransform(m => m.id === 7 ? { ...m, result: { ok: false } } : m))
  let out = ''
  for await (const c of stream) out += (c as Buffer).toString()
  t.match(out, /^id: 1\nevent: message\ndata: \{"jsonrpc":"2.0","method":"notifications\/message","params":\{"data":"café"\}\}\n\n/)
  t.match(out, /\n\ndata: not json\n\n/)
  t.match(out, /data: \{"jsonrpc":"2.0","id":7,"result":\{"ok":false\}\}$/)
})

t.test('eventMessage: only a JSON object is a message', async t => {
  t.same(eventMessage('data: {"a":1}'), { a: 1 })
  t.same(eventMessage('data:{"a":\ndata: 1}'), { a: 1 }, 'multi-line data is joined')
  t.equal(eventMessage('data: [1]'), undefined)
  t.equal(eventMessage('id: 3'), undefined)
  t.equal(eventMessage('data: nope'), undefined)
})
