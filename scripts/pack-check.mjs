// The package as a user gets it, outside this clone: `npm pack`, install the tarball into an
// empty folder, then
//   1. a consumer TypeScript project (strict, skipLibCheck: false) compiles against the packed
//      .d.ts files: the README's own-host example and the package's other entry points;
//   2. without the demo's optional libraries, `npx mcp-warden start` says which to install; with
//      them, `npx mcp-warden start --port <free>` starts the embedded demo from there, /healthz
//      answers, and `npx mcp-warden client … list` lists tools with a token the banner printed.
// Run: npm run test:pack   (CI runs it after npm test). Exit code 1 on the first failure.
import { execFileSync, spawn } from 'node:child_process'
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { freePort } from '../dist/lib/http-body.js'

const ROOT = new URL('../', import.meta.url).pathname
const work = mkdtempSync(join(tmpdir(), 'mcpw-pack-'))
const app = join(work, 'app')
mkdirSync(app)
const started = Date.now()
const step = (what) => { console.log(`[pack-check ${((Date.now() - started) / 1000).toFixed(1)} s] ${what}`) }
const fail = (what) => { console.error(`pack-check: FAILED: ${what}`); process.exitCode = 1; throw new Error(what) }
const run = (cmd, args, cwd) => execFileSync(cmd, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 * 1024 * 1024 })

let child
try {
  step('npm pack')
  const packed = JSON.parse(run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', work], ROOT))[0]
  const files = new Set(packed.files.map(f => f.path))
  for (const need of ['dist/bin/mcp-warden.js', 'dist/lib/index.js', 'dist/lib/index.d.ts', 'dist/lib/upstream.d.ts', 'rules/tool-scan.json', 'cedar/schema.cedarschema', 'cedar/policies/00-connect.cedar', 'README.md']) {
    if (!files.has(need)) fail(`the tarball lacks ${need}`)
  }
  for (const f of files) if (f.startsWith('test/') || f.startsWith('dist/test/') || f.startsWith('.scratch/') || f.startsWith('.mcp-warden/')) fail(`the tarball holds ${f}`)
  step(`${packed.filename}: ${packed.entryCount} files, ${(packed.size / 1024).toFixed(0)} KiB`)

  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'mcp-warden-consumer', version: '1.0.0', private: true, type: 'module' }, null, 2))
  step('npm install <tarball> typescript @types/node (into an empty folder)')
  const devTypes = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).devDependencies
  run('npm', ['install', '--no-audit', '--no-fund', join(work, packed.filename), `typescript@${devTypes.typescript}`, `@types/node@${devTypes['@types/node']}`], app)

  const lock = JSON.parse(readFileSync(join(app, 'package-lock.json'), 'utf8'))
  const scripted = Object.entries(lock.packages).filter(([k, v]) => k !== '' && v.hasInstallScript === true).map(([k]) => k)
  if (scripted.length > 0) fail(`the consumer's lock file lists packages with install scripts: ${scripted.join(', ')}`)
  step('no package of the installed tree has an install script')

  step('tsc (strict, skipLibCheck: false) against the packed .d.ts files')
  writeFileSync(join(app, 'tsconfig.json'), JSON.stringify({
    compilerOptions: { target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, skipLibCheck: false, noEmit: true, types: ['node'] },
    include: ['*.ts']
  }, null, 2))
  copyFileSync(join(ROOT, 'examples', 'own-host.ts'), join(app, 'own-host.ts'))
  writeFileSync(join(app, 'entry-points.ts'), [
    "import { createUpstreamVerifier } from 'mcp-warden/upstream'",
    "import identity from 'mcp-warden/plugins/identity'",
    "import { buildGateway, validateConfig, type GatewayConfig } from 'mcp-warden'",
    'export const verifier = createUpstreamVerifier',
    'export const plugin = identity',
    'export async function build (config: GatewayConfig) { return await buildGateway(config) }',
    'export const validate = validateConfig',
    ''
  ].join('\n'))
  try {
    run(process.execPath, [join(app, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', app], app)
  } catch (err) {
    fail(`the consumer project does not compile:\n${err.stdout}${err.stderr}`)
  }

  // sql.js is a dependency (the console's index and the demo's database); zod, the demo's other
  // library, comes with the MCP SDK: the demo runs from an installed package as it is.
  const port = await freePort()
  const adminPort = await freePort()
  step(`npx mcp-warden start --port ${port} --admin-port ${adminPort} (from the consumer folder)`)
  child = spawn('npx', ['--no-install', 'mcp-warden', 'start', '--port', String(port), '--admin-port', String(adminPort), '--data-dir', join(work, 'demo')], { cwd: app, stdio: ['ignore', 'pipe', 'pipe'], detached: true })
  let out = ''
  child.stdout.on('data', c => { out += c })
  child.stderr.on('data', c => { out += c })
  const base = `http://127.0.0.1:${port}`
  let healthy = false
  for (let i = 0; i < 300 && !healthy && child.exitCode === null; i++) {
    healthy = await fetch(`http://127.0.0.1:${adminPort}/healthz`).then(r => r.ok, () => false)
    if (!healthy) await new Promise(resolve => setTimeout(resolve, 200))
  }
  if (!healthy) fail(`/healthz did not answer within 60 s; output:\n${out}`)
  const token = /export TOKEN_READONLY=(\S+)/.exec(out)?.[1]
  if (token === undefined) fail(`the banner printed no TOKEN_READONLY; output:\n${out}`)
  step('npx mcp-warden client … list (the printed readonly token)')
  const listed = JSON.parse(run('npx', ['--no-install', 'mcp-warden', 'client', `${base}/servers/db/mcp`, '--token', token, 'list'], app))
  const names = listed.tools.map(x => x.name)
  if (names.join(',') !== 'database_query') fail(`the readonly agent should see database_query alone, saw ${names.join(', ')}`)
  step(`tools listed: ${names.join(', ')}`)
  console.log('pack-check: passed')
} catch (err) {
  if (process.exitCode !== 1) { console.error(`pack-check: FAILED: ${err.stack ?? err}`); process.exitCode = 1 }
} finally {
  if (child !== undefined && child.exitCode === null) {
    try { process.kill(-child.pid, 'SIGTERM') } catch {}
    await new Promise(resolve => { child.once('exit', resolve); setTimeout(resolve, 10_000) })
  }
  rmSync(work, { recursive: true, force: true })
}
