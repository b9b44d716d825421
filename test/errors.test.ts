import { readFileSync } from 'node:fs'
import t from 'tap'
import { errorCatalog } from '../lib/errors.js'

t.test('every error code is unique and documented with its status and JSON-RPC code', async t => {
  const doc = readFileSync(new URL('../docs/errors.md', import.meta.url), 'utf8')
  const catalog = errorCatalog()
  t.ok(catalog.size >= 15)
  for (const [code, { statusCode, rpcCode }] of catalog) {
    t.match(code, /^MCPW_ERR_[A-Z]+_[A-Z_]+$/, `${code} follows the naming scheme`)
    const row = doc.split('\n').find(l => l.startsWith(`| \`${code}\` |`))
    t.ok(row, `${code} is documented`)
    if (code === 'MCPW_ERR_CONFIG_INVALID' || code === 'MCPW_ERR_PLUGIN_MISSING') continue // boot errors: no HTTP answer
    t.match(row, new RegExp(`\\| ${statusCode} \\| ${rpcCode} \\|`), `${code}: HTTP ${statusCode}, JSON-RPC ${rpcCode}`)
  }
  const documented = [...doc.matchAll(/^\| `(MCPW_ERR_[A-Z_]+)`/gm)].map(m => m[1])
  t.same(documented.filter(c => !catalog.has(c!)), [], 'no documented code is missing from the code')
})
