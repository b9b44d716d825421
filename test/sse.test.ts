import t from 'tap'
import { Readable } from 'node:stream'
import { EventReader, eventMessage, sseMessages, sseTransform, SseLimitError } from '../lib/sse.js'

// "é" is two bytes in UTF-8: these chunks split it, and split an event across chunks.
const text = 'id: 1\nevent: message\ndata: {"jsonrpc":"2.0","method":"notifications/message","params":{"data":"café"}}\n\n' +
  'data: not json\n\n' +
  'data: {"jsonrpc":"2.0","id":7,"result":{"ok":true}}\r\n\r\n' +
  'data: {"jsonrpc":"2.0","id":8,"result":{"cut":"off"}}'
const bytes = Buffer.from(text)
const cut = bytes.indexOf(Buffer.from('é')) + 1
const chunks = [bytes.subarray(0, cut), bytes.subarray(cut, cut + 40), bytes.subarray(cut + 40)]

const collect = async (input: Array<string | Buffer>): Promise<unknown[]> => {
  const got: unknown[] = []
  for await (const m of sseMessages(Readable.from(input))) got.push(m)
  return got
}

t.test('sseMessages: the messages of a stream, whole even when chunks split a character or an event', async t => {
  t.same(await collect(chunks), [
    { jsonrpc: '2.0', method: 'notifications/message', params: { data: 'café' } },
    { jsonrpc: '2.0', id: 7, result: { ok: true } }
  ], 'non-JSON events are skipped; an event cut off without its blank line is discarded (HTML standard)')
})

t.test('the HTML standard\'s line ends, BOM, comments and fields, as a hostile upstream would send them', async t => {
  const m = '{"jsonrpc":"2.0","id":1,"result":{"tools":[]}}'
  const vectors: Array<[string, string]> = [
    ['LF', `data: ${m}\n\n`],
    ['CRLF', `data: ${m}\r\n\r\n`],
    ['bare CR', `data: ${m}\r\r`],
    ['mixed', `event: message\rdata: ${m}\r\n\n`],
    ['a leading BOM', `\ufeffdata: ${m}\n\n`],
    ['no space after the colon', `data:${m}\n\n`],
    ['a comment and an unknown field first', `: keep-alive\nfoo: bar\ndata: ${m}\n\n`],
    ['data over two lines', 'data: {"jsonrpc":"2.0","id":1,\ndata: "result":{"tools":[]}}\n\n'],
    ['one byte per chunk', `data: ${m}\r\n\r\n`]
  ]
  for (const [what, stream] of vectors) {
    const input = what === 'one byte per chunk' ? [...Buffer.from(stream)].map(b => Buffer.from([b])) : [stream]
    t.same(await collect(input), [JSON.parse(m)], what)
  }
  t.same(await collect(['data: [1,2]\n\n', 'data: 3\n\n']), [], 'an array or a number is not a message')
})

t.test('sseTransform: rewrites messages, keeps ids and event names, drops what is not a message', async t => {
  const stream = Readable.from(chunks).pipe(sseTransform(m => m.id === 7 ? { ...m, result: { ok: false } } : m))
  let out = ''
  for await (const c of stream) out += (c as Buffer).toString()
  t.match(out, /^id: 1\nevent: message\ndata: \{"jsonrpc":"2.0","method":"notifications\/message","params":\{"data":"café"\}\}\n\n/)
  t.notMatch(out, /not json/, 'an event that is not a JSON-RPC message is not passed on')
  t.match(out, /data: \{"jsonrpc":"2.0","id":7,"result":\{"ok":false\}\}\n\n$/)
  const cr = Readable.from(['data: {"jsonrpc":"2.0","id":2,"result":{}}\r\r']).pipe(sseTransform(m => ({ ...m, seen: true })))
  let crOut = ''
  for await (const c of cr) crOut += (c as Buffer).toString()
  t.equal(crOut, 'data: {"jsonrpc":"2.0","id":2,"result":{},"seen":true}\n\n', 'bare-CR events are rewritten too (never passed through unread)')
})

t.test('an event past the size limit is an error, and reading is linear', async t => {
  const reader = new EventReader(1024)
  t.throws(() => reader.push('data: ' + 'x'.repeat(2000)), SseLimitError)
  // 8 MB in 64 KB chunks: each chunk is parsed once.
  const big = `data: {"jsonrpc":"2.0","id":1,"result":{"s":"${'x'.repeat(8 * 1024 * 1024)}"}}\n\n`
  const parts: string[] = []
  for (let i = 0; i < big.length; i += 65536) parts.push(big.slice(i, i + 65536))
  const started = Date.now()
  const got = await collect(parts)
  t.equal((got[0] as { result: { s: string } }).result.s.length, 8 * 1024 * 1024)
  t.comment(`8 MB event in ${Date.now() - started} ms`)
})

t.test('eventMessage: only a JSON object is a message', async t => {
  t.same(eventMessage('{"a":1}'), { a: 1 })
  t.equal(eventMessage('[1]'), undefined)
  t.equal(eventMessage('nope'), undefined)
  t.equal(eventMessage('null'), undefined)
})
