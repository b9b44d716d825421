// Refusing a hostile request body: 1 MiB of tiny values or deep nesting, parsed by
// parseMcpMessage (the gateway's message parser). "before" is the previous order of work
// (object members counted on the bytes, then the whole body parsed and walked, and only then
// refused); "after" is parseMcpMessage as built (members, values and depth counted in one pass
// over the bytes, refused before the parser runs). An ordinary tools/call is measured too, so
// that the cost of the pass on every request shows.
// Results in .scratch/bench/results/jsonrpc.json, or bench/results/jsonrpc.json with --write.
import { Bench } from 'tinybench'
import sjson from 'secure-json-parse'
import { benchOptions, report } from './common.mjs'
import { parseMcpMessage } from '../../dist/lib/jsonrpc.js'
import { jsonShape, jsonValueProblem, MAX_JSON_DEPTH, MAX_JSON_KEYS, MAX_JSON_VALUES } from '../../dist/lib/json-text.js'

// The previous check: object members only, counted on the bytes, then parse and walk.
function countJsonMembers (raw, limit) {
  let n = 0
  let inString = false
  for (let i = 0; i < raw.length; i++) {
    const c = raw[i]
    if (inString) {
      if (c === 0x5c) i++
      else if (c === 0x22) inString = false
    } else if (c === 0x22) {
      inString = true
    } else if (c === 0x3a && ++n > limit) {
      return n
    }
  }
  return n
}
const utf8 = new TextDecoder('utf-8', { fatal: true })
function before (raw) {
  if (raw.length > 4 * MAX_JSON_KEYS && countJsonMembers(raw, MAX_JSON_KEYS) > MAX_JSON_KEYS) return 'refused: keys'
  let data
  try { data = sjson.parse(utf8.decode(raw), undefined, { protoAction: 'error', constructorAction: 'error' }) } catch { return 'refused: parse' }
  return jsonValueProblem(data)?.kind ?? 'accepted'
}
function after (raw) {
  try { parseMcpMessage(raw); return 'accepted' } catch (err) { return `refused: ${err.message.slice(0, 60)}` }
}

const MiB = 1024 * 1024
const head = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"a":'
const fill = (unit) => unit.repeat(Math.floor((MiB - 200) / unit.length))
const bodies = {
  '1 MiB of [] repeated': `${head}[${fill('[],')}[]]}}}`,
  '1 MiB of [ nested (unclosed)': `${head}${fill('[')}`,
  '1 MiB of {} repeated': `${head}[${fill('{},')}{}]}}}`,
  '1 MiB of 0, repeated': `${head}[${fill('0,')}0]}}}`,
  '1 MiB string argument (accepted)': JSON.stringify({ jsonrpc: '2.0', id: 7, method: 'tools/call', params: { name: 'file_write', arguments: { text: 'lorem "ipsum" \\ dolor '.repeat(40_000) } } }),
  'an ordinary tools/call (180 B)': JSON.stringify({ jsonrpc: '2.0', id: 7, method: 'tools/call', params: { name: 'database_query', arguments: { sql: 'SELECT id, name FROM users WHERE id = 42', limit: 10 } } })
}

const bench = new Bench(benchOptions)
for (const [name, body] of Object.entries(bodies)) {
  const raw = Buffer.from(body)
  console.error(`  ${name}: before → ${before(raw)}; after → ${after(raw)}`)
  if (after(raw) === 'accepted') {
    bench.add(`parseMcpMessage: ${name}`, () => { after(raw) })
    bench.add(`its byte pass alone: ${name}`, () => { jsonShape(raw, { maxKeys: MAX_JSON_KEYS, maxValues: MAX_JSON_VALUES, maxDepth: MAX_JSON_DEPTH }) })
  } else {
    bench.add(`before: ${name}`, () => { before(raw) })
    bench.add(`after: ${name}`, () => { after(raw) })
  }
}
await bench.run()
report('jsonrpc', bench)
