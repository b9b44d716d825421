// The coverage floor of the test suite: tap writes .tap/report/coverage-summary.json (the
// json-summary report of package.json's tap config); below any of these totals, this exits 1.
// The floors sit just under what the suite covers, so coverage cannot drop unnoticed; raise them
// as tests are added. Run by `npm test` after tap.
import { readFileSync } from 'node:fs'

const FLOOR = { lines: 95, statements: 95, functions: 95, branches: 87 }
const file = new URL('../.tap/report/coverage-summary.json', import.meta.url)
let total
try {
  total = JSON.parse(readFileSync(file, 'utf8')).total
} catch (err) {
  console.error(`coverage-check: no coverage summary (${err.message}); run the suite with tap first`)
  process.exit(1)
}
const low = Object.entries(FLOOR).filter(([k, floor]) => total[k].pct < floor)
for (const [k, floor] of Object.entries(FLOOR)) console.log(`coverage ${k}: ${total[k].pct} % (floor ${floor} %)`)
if (low.length > 0) {
  console.error(`coverage-check: below the floor: ${low.map(([k, f]) => `${k} ${total[k].pct} % < ${f} %`).join(', ')}`)
  process.exit(1)
}
