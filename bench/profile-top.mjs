// node bench/profile-top.mjs DIR_OR_FILE [n]: the hottest functions of a V8 CPU profile
// (the newest *.cpuprofile in DIR, or FILE) by self time, and the self time per package
// (a dependency in node_modules, mcp-warden's own dist/, Node's internals, or the engine).
import { readdirSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'

/** The newest .cpuprofile of a folder, or the file itself. */
export function newestProfile (target) {
  return statSync(target).isDirectory()
    ? readdirSync(target).filter(f => f.endsWith('.cpuprofile')).map(f => join(target, f)).sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs)[0]
    : target
}

function where (cf) {
  const url = cf.url ?? ''
  const nm = url.lastIndexOf('node_modules/')
  if (nm >= 0) { const rest = url.slice(nm + 13).split('/'); return rest[0].startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0] }
  if (url.includes('/dist/')) return `mcp-warden ${url.slice(url.indexOf('/dist/') + 6)}`
  if (url.startsWith('node:')) return 'node internals'
  return url === '' ? `(${cf.functionName || 'engine'})` : url
}

/** Self time by package and by function, as percentages of the sampled time. */
export function summarise (file, n = 30) {
  const prof = JSON.parse(readFileSync(file, 'utf8'))
  const byId = new Map(prof.nodes.map(node => [node.id, node]))
  const self = new Map()
  for (let i = 0; i < prof.samples.length; i++) {
    const id = prof.samples[i]
    self.set(id, (self.get(id) ?? 0) + (prof.timeDeltas[i] ?? 0))
  }
  const total = [...self.values()].reduce((a, b) => a + b, 0)
  const fns = new Map()
  const pkgs = new Map()
  for (const [id, us] of self) {
    const cf = byId.get(id).callFrame
    const key = `${cf.functionName || '(anonymous)'}  ${where(cf)}:${cf.lineNumber + 1}`
    fns.set(key, (fns.get(key) ?? 0) + us)
    const pkg = where(cf).replace(/^mcp-warden .*/, 'mcp-warden (dist)')
    pkgs.set(pkg, (pkgs.get(pkg) ?? 0) + us)
  }
  const pct = (us) => +(100 * us / total).toFixed(1)
  return {
    sampledSeconds: +(total / 1e6).toFixed(2),
    byPackage: [...pkgs].sort((a, b) => b[1] - a[1]).slice(0, 15).map(([name, us]) => ({ name, percent: pct(us) })),
    functions: [...fns].sort((a, b) => b[1] - a[1]).slice(0, n).map(([name, us]) => ({ name: name.slice(0, 120), percent: pct(us) }))
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const [target, n = '30'] = process.argv.slice(2)
  const file = newestProfile(target)
  const s = summarise(file, Number(n))
  const show = (p) => `${p.toFixed(1).padStart(5)} %`
  console.log(`${file}: ${s.sampledSeconds} s sampled`)
  console.log('\nself time by package:')
  for (const x of s.byPackage) console.log(`${show(x.percent)}  ${x.name}`)
  console.log(`\nhottest functions (self time), top ${n}:`)
  for (const x of s.functions) console.log(`${show(x.percent)}  ${x.name}`)
}
