/**
 * The deployment files (Dockerfile, deploy/kubernetes, deploy/otel-collector.yaml) agree with
 * the gateway and with CI: the image is built with CI's commands and runs as a non-root user;
 * the ConfigMap's config passes the gateway's own loader with its files where the Deployment
 * mounts them; probes, ports, Services and the Ingress point where that config listens. Then the
 * gateway really starts from a copy laid out like the runtime image, its volumes laid out like
 * the kubelet's, writing nothing outside the pod's writable volume, and the probes' paths answer
 * on the admin port and not on the public one.
 */
import t from 'tap'
import { spawn, execFile } from 'node:child_process'
import { once } from 'node:events'
import { cpSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join, relative } from 'node:path'
import { createServer } from 'node:http'
import { connect, type AddressInfo } from 'node:net'
import { createInterface } from 'node:readline'
import { promisify } from 'node:util'
import { parse, parseAllDocuments, stringify } from 'yaml'
import { request } from 'undici'
import { loadConfig } from '../lib/config.js'
import { ensureKeys } from '../lib/tokens/keys.js'
import { freePort } from '../lib/free-port.js'
import { hostCheck } from '../plugins/mcp-context.js'
import { redisAvailable, startRedis } from './fixtures/redis.js'

const ROOT = new URL('../', import.meta.url).pathname
const K8S = join(ROOT, 'deploy', 'kubernetes')
const BIN = join(ROOT, 'dist', 'bin', 'mcp-warden.js')
const work = mkdtempSync(join(tmpdir(), 'mcpw-deploy-'))
const run = promisify(execFile)
t.teardown(() => { rmSync(work, { recursive: true, force: true }) })

// ---------------------------------------------------------------------------------------------
// Reading the files

type Obj = Record<string, any>

/** Every object of deploy/kubernetes/*.yaml (and optional/), parsed as Kubernetes does (YAML 1.1: 0440 is octal). */
function manifests (): Array<{ file: string, doc: Obj }> {
  const out: Array<{ file: string, doc: Obj }> = []
  for (const dir of [K8S, join(K8S, 'optional')]) {
    for (const name of readdirSync(dir).filter(n => n.endsWith('.yaml')).sort()) {
      for (const d of parseAllDocuments(readFileSync(join(dir, name), 'utf8'), { version: '1.1' })) {
        if (d.errors.length > 0) throw new Error(`${name}: ${d.errors[0]!.message}`)
        const doc = d.toJS() as Obj | null
        if (doc !== null) out.push({ file: relative(K8S, join(dir, name)), doc })
      }
    }
  }
  return out
}

const all = manifests()
function one (kind: string, name?: string): Obj {
  const found = all.filter(m => m.doc.kind === kind && (name === undefined || m.doc.metadata?.name === name))
  if (found.length !== 1) throw new Error(`expected one ${kind}${name !== undefined ? ` ${name}` : ''}, found ${found.length}`)
  return found[0]!.doc
}

const deployment = one('Deployment', 'mcp-warden')
const pod = deployment.spec.template.spec as Obj
const container = pod.containers[0] as Obj
const configMap = one('ConfigMap', 'mcp-warden-config')
const policiesMap = one('ConfigMap', 'mcp-warden-policies')
const configText = configMap.data['config.yaml'] as string

interface Instruction { keyword: string, args: string }
interface Stage { name: string, from: string, instructions: Instruction[] }

/** The Dockerfile's stages: line continuations joined, comments dropped, ARG defaults substituted in FROM. */
function dockerfile (): Stage[] {
  const lines = readFileSync(join(ROOT, 'Dockerfile'), 'utf8').split('\n').filter(l => !/^\s*#/.test(l))
  const joined: string[] = []
  let current = ''
  for (const line of lines) {
    if (line.trimEnd().endsWith('\\')) { current += line.trimEnd().slice(0, -1) + ' '; continue }
    current += line
    if (current.trim() !== '') joined.push(current.trim().replace(/\s+/g, ' '))
    current = ''
  }
  const args = new Map<string, string>()
  const stages: Stage[] = []
  for (const line of joined) {
    const [keyword = '', ...rest] = line.split(' ')
    const text = rest.join(' ')
    if (keyword.toUpperCase() === 'ARG' && stages.length === 0) {
      const [k, v = ''] = text.split('=')
      args.set(k!, v)
    } else if (keyword.toUpperCase() === 'FROM') {
      const m = /^(\S+)(?: AS (\S+))?$/i.exec(text)
      if (m === null) throw new Error(`cannot read FROM ${text}`)
      const from = m[1]!.replace(/\$\{(\w+)\}/g, (_all, k: string) => args.get(k) ?? '')
      stages.push({ name: m[2] ?? String(stages.length), from, instructions: [] })
    } else {
      if (stages.length === 0) throw new Error(`${keyword} before the first FROM`)
      stages.at(-1)!.instructions.push({ keyword: keyword.toUpperCase(), args: text })
    }
  }
  return stages
}

const stages = dockerfile()
const stage = (name: string): Stage => {
  const s = stages.find(x => x.name === name)
  if (s === undefined) throw new Error(`the Dockerfile has no stage ${name}`)
  return s
}
const runs = (s: Stage): string[] => s.instructions.filter(i => i.keyword === 'RUN').map(i => i.args)
const jsonForm = (s: Stage, keyword: string): string[] => {
  const i = s.instructions.filter(x => x.keyword === keyword).at(-1)
  if (i === undefined) throw new Error(`stage ${s.name} has no ${keyword}`)
  return JSON.parse(i.args) as string[]
}
/** `npm ci` commands of a RUN line, as sets of their flags. */
const npmCi = (line: string): Array<Set<string>> => line.split('&&').map(c => c.trim().split(' ')).filter(w => w[0] === 'npm' && w[1] === 'ci').map(w => new Set(w.slice(2)))

// ---------------------------------------------------------------------------------------------
// The pod's volumes, laid out like the kubelet does, under a root folder

const mounts = container.volumeMounts as Array<{ name: string, mountPath: string, subPath?: string, readOnly?: boolean }>
const volumes = new Map((pod.volumes as Obj[]).map(v => [v.name as string, v]))

/** The mount a path of the container is on. */
function mountOf (path: string): { name: string, mountPath: string, subPath?: string, readOnly?: boolean } | undefined {
  return mounts.filter(m => path === m.mountPath || path.startsWith(m.mountPath + '/')).sort((a, b) => b.mountPath.length - a.mountPath.length)[0]
}

/**
 * ConfigMap and Secret volumes as the kubelet writes them: the files in a time-stamped folder,
 * `..data` a link to it, each name a link through `..data`. An update writes a new folder, swaps
 * `..data` by renaming a new link over it, and removes the links of names no longer there.
 */
function atomicDir (dir: string, files: Record<string, string | Buffer>): void {
  const stamp = `..2026_01_01_00_00_00.${String(process.hrtime.bigint())}`
  mkdirSync(join(dir, stamp), { recursive: true })
  for (const [name, content] of Object.entries(files)) writeFileSync(join(dir, stamp, name), content)
  const old = existsSync(join(dir, '..data')) ? readlinkSync(join(dir, '..data')) : undefined
  symlinkSync(stamp, join(dir, '..data_tmp'))
  renameSync(join(dir, '..data_tmp'), join(dir, '..data'))
  for (const name of Object.keys(files)) if (lstatSync(join(dir, name), { throwIfNoEntry: false }) === undefined) symlinkSync(join('..data', name), join(dir, name))
  for (const name of readdirSync(dir)) if (!name.startsWith('..') && !(name in files)) rmSync(join(dir, name))
  if (old !== undefined) rmSync(join(dir, old), { recursive: true })
}

/**
 * Lays the container's volume mounts out under `root`: ConfigMaps from the manifests (the config
 * file replaced by `config`), Secrets from `secrets`, emptyDirs empty. Returns the writable folders.
 */
function layOut (root: string, config: string, secrets: Record<string, Record<string, string | Buffer>>): string[] {
  const writable: string[] = []
  for (const m of mounts) {
    const v = volumes.get(m.name)
    if (v === undefined) throw new Error(`volumeMount ${m.name} has no volume`)
    const at = join(root, m.mountPath)
    let files: Record<string, string | Buffer>
    if (v.configMap !== undefined) {
      const data = one('ConfigMap', v.configMap.name).data as Record<string, string>
      files = v.configMap.name === configMap.metadata.name ? { ...data, 'config.yaml': config } : data
    } else if (v.secret !== undefined) {
      const s = secrets[v.secret.secretName]
      if (s === undefined) throw new Error(`no test content for Secret ${String(v.secret.secretName)}`)
      files = s
    } else if (v.emptyDir !== undefined) {
      mkdirSync(at, { recursive: true })
      writable.push(at)
      continue
    } else {
      throw new Error(`volume ${m.name}: only configMap, secret and emptyDir are laid out here`)
    }
    if (m.subPath !== undefined) {
      mkdirSync(dirname(at), { recursive: true })
      writeFileSync(at, files[m.subPath]!)
    } else {
      atomicDir(at, files)
    }
  }
  return writable
}

/** Every `env:NAME` secret reference of a parsed config. */
function envRefs (value: unknown): string[] {
  if (typeof value === 'string') return value.startsWith('env:') ? [value.slice(4)] : []
  if (value !== null && typeof value === 'object') return Object.values(value).flatMap(envRefs)
  return []
}

/**
 * The ConfigMap's config with every absolute path moved under `root` (each must be on one of the
 * container's mounts: the image holds no file the config names), then `adapt`ed.
 */
function configUnder (root: string, adapt: (c: Obj) => void = () => {}): { text: string, offMount: string[] } {
  const offMount: string[] = []
  const move = (value: unknown): unknown => {
    if (typeof value === 'string') {
      const m = /^(file:)?(\/.*)$/.exec(value)
      if (m === null) return value
      if (mountOf(m[2]!) === undefined) offMount.push(m[2]!)
      return `${m[1] ?? ''}${join(root, m[2]!)}`
    }
    if (Array.isArray(value)) return value.map(move)
    if (value !== null && typeof value === 'object') return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, move(v)]))
    return value
  }
  const c = move(parse(configText)) as Obj
  adapt(c)
  return { text: stringify(c), offMount }
}

/** The keys Secret's files: a keys folder with its first key (what `mcp-warden keys list` makes of an empty folder). */
function keysSecret (): Record<string, Buffer> {
  const dir = mkdtempSync(join(work, 'keys-'))
  ensureKeys(dir)
  return Object.fromEntries(readdirSync(dir).map(f => [f, readFileSync(join(dir, f))]))
}

/** The secrets the container's env takes from Secrets, with test values. */
function secretEnv (): Record<string, string> {
  return Object.fromEntries((container.env as Obj[]).filter(e => e.valueFrom?.secretKeyRef !== undefined).map(e => [e.name as string, `test-${String(e.valueFrom.secretKeyRef.key)}`]))
}

function withEnv<T> (env: Record<string, string>, fn: () => T): T {
  const saved = Object.fromEntries(Object.keys(env).map(k => [k, process.env[k]]))
  Object.assign(process.env, env)
  try { return fn() } finally {
    for (const [k, v] of Object.entries(saved)) { if (v === undefined) Reflect.deleteProperty(process.env, k); else process.env[k] = v }
  }
}

const configPath = (): string => {
  const args = container.args as string[]
  return args[args.indexOf('--config') + 1]!
}

// ---------------------------------------------------------------------------------------------

t.test('the image is built with the commands CI runs', async t => {
  const ci = readFileSync(join(ROOT, '.ci', 'run'), 'utf8').split('\n').map(l => l.trim())
  const install = ci.find(l => /^npm (install|ci)\b/.test(l))
  t.ok(install, '.ci/run installs with npm')
  const ciFlags = install!.split(' ').filter(w => w.startsWith('--'))
  t.ok(ciFlags.length > 0, 'CI passes flags to its install')
  t.ok(ci.includes('npm test'), '.ci/run runs npm test')
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string>, bin: Record<string, string>, engines: { node: string }, files: string[] }
  t.match(pkg.scripts.test, /^npm run build &&/, 'npm test starts by building: CI builds with npm run build')

  const build = stage('build')
  const buildRuns = runs(build)
  const installAt = buildRuns.findIndex(r => npmCi(r).length > 0)
  t.ok(installAt >= 0, 'the build stage installs with npm ci (the lock file, as CI)')
  const flags = npmCi(buildRuns[installAt]!)[0]!
  for (const f of ciFlags) t.ok(flags.has(f), `the build stage's install has CI's ${f}`)
  t.notOk([...flags].some(f => f.startsWith('--omit')), 'the build stage installs the dev dependencies (tsc)')
  const buildAt = buildRuns.indexOf('npm run build')
  t.ok(buildAt > installAt, 'then npm run build')

  // The build stage copies everything tsc compiles before it builds.
  const tsBuild = JSON.parse(readFileSync(join(ROOT, 'tsconfig.build.json'), 'utf8')) as { extends: string, include: string[] }
  const instructions = build.instructions
  const buildIndex = instructions.findIndex(i => i.keyword === 'RUN' && i.args === 'npm run build')
  const copied = instructions.slice(0, buildIndex).filter(i => i.keyword === 'COPY').flatMap(i => i.args.split(' ').slice(0, -1))
  for (const need of [...tsBuild.include, 'tsconfig.build.json', tsBuild.extends.replace(/^\.\//, ''), 'package.json', 'package-lock.json']) {
    t.ok(copied.includes(need), `the build stage copies ${need} before building`)
  }

  // Nothing the Dockerfile copies from the context is excluded by .dockerignore.
  const ignored = readFileSync(join(ROOT, '.dockerignore'), 'utf8').split('\n').map(l => l.trim()).filter(l => l !== '' && !l.startsWith('#'))
  // .dockerignore patterns: `**/` any folders, `*` within a name; a folder's pattern covers what is in it.
  const globRe = (p: string): RegExp => new RegExp('^' + p.replace(/[.+^${}()|[\]\\]/g, '\\$&').split('**/').map(part => part.replace(/\*/g, '[^/]*')).join('(?:.*/)?') + '(?:/.*)?$')
  const fromContext = new Set(stages.flatMap(s => s.instructions).filter(i => i.keyword === 'COPY' && !i.args.startsWith('--from')).flatMap(i => i.args.split(' ').slice(0, -1)))
  for (const src of fromContext) {
    t.ok(existsSync(join(ROOT, src)), `${src} exists`)
    t.notOk(ignored.some(p => globRe(p).test(src)), `.dockerignore keeps ${src} in the context`)
  }
  for (const out of ['node_modules', 'dist', '.git']) t.ok(ignored.some(p => globRe(p).test(out)), `.dockerignore keeps the local ${out} out`)

  // The base image's Node is one the package supports.
  const major = /^node:(\d+)/.exec(build.from)?.[1]
  t.ok(major !== undefined, `the build stage is on the official node image (${build.from})`)
  t.ok(pkg.engines.node.split('||').some(r => r.trim().startsWith(`^${major!}.`)), `Node ${major!} is in engines (${pkg.engines.node})`)
  t.ok(stages.every(s => s.from === build.from), 'every stage is on the same Node image')

  // The package does not ship the deployment files.
  t.notOk(pkg.files.some(f => f === 'deploy' || f.startsWith('deploy/') || f === 'Dockerfile'), 'package.json files leaves deploy/ and the Dockerfile out')
})

t.test('the runtime stage holds what runs, as a non-root user, with the config the Deployment mounts', async t => {
  const rt = stages.at(-1)!
  t.equal(rt.name, 'runtime', 'the last stage is the runtime image')
  const deps = stage('deps')
  const ci = runs(deps).flatMap(npmCi)
  t.equal(ci.length, 1, 'the deps stage runs one npm ci')
  for (const f of ['--omit=dev', '--ignore-scripts']) t.ok(ci[0]!.has(f), `npm ci ${f}`)

  const copies = rt.instructions.filter(i => i.keyword === 'COPY').map(i => i.args.split(' '))
  const sources = copies.flatMap(c => c.slice(0, -1).filter(w => !w.startsWith('--')).map(w => w.split('/').at(-1)!))
  t.same(sources.sort(), ['cedar', 'dist', 'node_modules', 'package.json', 'rules'], 'only package.json, node_modules, dist, cedar and rules')
  t.ok(copies.some(c => c[0] === '--from=deps' && c[1] === '/app/node_modules'), 'node_modules are the production ones')
  t.ok(copies.some(c => c[0] === '--from=build' && c[1] === '/app/dist'), 'dist is the build stage\'s')

  const user = rt.instructions.filter(i => i.keyword === 'USER').at(-1)?.args
  t.ok(user !== undefined && !/^(root|0)(:|$)/.test(user), `runs as a non-root user (${String(user)})`)
  const uid = Number(user!.split(':')[0])
  t.ok(Number.isInteger(uid) && uid > 0, 'a numeric uid, which runAsNonRoot can check')
  t.equal(pod.securityContext.runAsUser, uid, 'the Deployment runs as the image\'s user')

  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { bin: Record<string, string> }
  t.same(jsonForm(rt, 'ENTRYPOINT'), ['node', pkg.bin['mcp-warden']], 'the entry point is the package\'s bin')
  const cmd = jsonForm(rt, 'CMD')
  t.same(cmd, container.args, 'the Deployment\'s args are the image\'s command')
  t.same(cmd.slice(0, 2), ['start', '--config'], 'the command starts the gateway with a config file')
  const mount = mounts.find(m => m.mountPath === cmd[2])
  t.ok(mount !== undefined && mount.subPath === 'config.yaml' && volumes.get(mount.name)?.configMap?.name === configMap.metadata.name, `the --config file ${String(cmd[2])} is the ConfigMap's config.yaml`)

  const healthcheck = rt.instructions.find(i => i.keyword === 'HEALTHCHECK')
  t.ok(healthcheck !== undefined && /CMD \[/.test(healthcheck.args), 'a HEALTHCHECK in exec form')
})

t.test('the ConfigMap\'s config passes the gateway\'s loader, its files where the Deployment mounts them', async t => {
  const root = mkdtempSync(join(work, 'static-'))
  const { text, offMount } = configUnder(root)
  t.same(offMount, [], 'every file the config names is on a volume the Deployment mounts')
  layOut(root, text, { 'mcp-warden-keys': keysSecret() })
  const refs = envRefs(parse(configText))
  t.ok(refs.length > 0, 'the config takes secrets from the environment')
  const env = container.env as Obj[]
  for (const name of refs) {
    t.ok(env.some(e => e.name === name && e.valueFrom?.secretKeyRef !== undefined), `${name} is set from a Secret`)
  }
  const loaded = withEnv(secretEnv(), () => loadConfig(join(root, configPath())))

  // Nothing is written to the image: state in Redis, audit on stdout, keys and policies read-only.
  t.match(loaded.store, /^rediss?:\/\//, 'store is Redis: sessions, limits and tool pins are shared and not on disk')
  t.equal(loaded.audit.destination, 'stdout', 'audit records go to stdout')
  for (const [what, path] of [['tokens.keysDir', parse(configText).tokens.keysDir], ['authorization.policies', parse(configText).authorization.policies]] as const) {
    const m = mountOf(path as string)!
    t.equal(m.readOnly, true, `${what} is on a read-only mount`)
  }
  t.ok(volumes.get(mountOf(parse(configText).tokens.keysDir as string)!.name)?.secret !== undefined, 'the signing keys are a Secret')

  // Reachable: both listeners on every address of the pod.
  t.equal(loaded.listen.host, '0.0.0.0', 'the public listener is on every address of the pod')
  t.equal(loaded.admin?.listen.host, '0.0.0.0', 'so is the admin listener')
  // The probes and Prometheus address the admin listener by the pod's IP: its Host check must let them in.
  const adminUrl = loaded.console.url ?? `http://${loaded.admin!.listen.host}:${loaded.admin!.listen.port}`
  t.doesNotThrow(() => { hostCheck(adminUrl)(`10.0.0.7:${loaded.admin!.listen.port}`) }, 'a probe\'s Host (the pod IP) is accepted by the admin listener')

  // Behind the Ingress.
  const publicUrl = new URL(loaded.publicUrl)
  t.equal(publicUrl.protocol, 'https:', 'publicUrl is https (TLS ends at the Ingress)')
  const ingress = one('Ingress')
  t.ok(ingress.spec.rules.some((r: Obj) => r.host === publicUrl.hostname), 'the Ingress serves publicUrl\'s host')
  t.ok(ingress.spec.tls.some((x: Obj) => x.hosts.includes(publicUrl.hostname)), 'with TLS')

  // Traces to the collector of deploy/otel-collector.yaml.
  const collector = parse(readFileSync(join(ROOT, 'deploy', 'otel-collector.yaml'), 'utf8')) as Obj
  const receiver = collector.receivers.otlp.protocols.http.endpoint as string
  t.equal(new URL(loaded.telemetry!.otlp!.tracesUrl).port, receiver.split(':').at(-1), 'telemetry.otlp.endpoint is the collector\'s OTLP/HTTP port')
  t.ok(collector.service.pipelines.traces.receivers.includes('otlp'), 'the collector\'s traces pipeline takes OTLP')

  // The policies ConfigMap is the reference set of cedar/, as the command in its header makes it.
  const expected: Record<string, string> = { 'schema.cedarschema': readFileSync(join(ROOT, 'cedar', 'schema.cedarschema'), 'utf8') }
  for (const f of readdirSync(join(ROOT, 'cedar', 'policies')).filter(n => n.endsWith('.cedar'))) expected[f] = readFileSync(join(ROOT, 'cedar', 'policies', f), 'utf8')
  t.same(policiesMap.data, expected, 'mcp-warden-policies holds cedar/schema.cedarschema and cedar/policies')
  t.equal(loaded.authorization.schema, join(root, mountOf(parse(configText).authorization.schema as string)!.mountPath, 'schema.cedarschema'))
})

t.test('probes, ports, Services and the Ingress point where the config listens', async t => {
  const cfg = parse(configText) as Obj
  const ports = new Map((container.ports as Obj[]).map(p => [p.name as string, p.containerPort as number]))
  t.equal(ports.get('http'), cfg.listen.port, 'container port http is listen.port')
  t.equal(ports.get('admin'), cfg.admin.listen.port, 'container port admin is admin.listen.port')
  const exposed = stages.at(-1)!.instructions.filter(i => i.keyword === 'EXPOSE').flatMap(i => i.args.split(' ').map(Number))
  t.same(exposed.sort(), [...ports.values()].sort(), 'the image EXPOSEs the same ports')

  const port = (p: string | number): number => typeof p === 'number' ? p : ports.get(p)!
  // Started once the public port accepts connections: the admin listener opens before it.
  t.equal(port(container.startupProbe?.tcpSocket?.port), cfg.listen.port, 'the startup probe waits for the public port')
  for (const [probe, path] of [['livenessProbe', '/healthz'], ['readinessProbe', '/readyz']] as const) {
    const p = container[probe] as Obj | undefined
    t.ok(p?.httpGet !== undefined, `${probe} is an HTTP GET`)
    t.equal(p!.httpGet.path, path, `${probe} asks ${path}`)
    t.equal(port(p!.httpGet.port), cfg.admin.listen.port, `${probe} asks the admin port`)
    t.notOk(p!.httpGet.httpHeaders?.some((h: Obj) => /^host$/i.test(h.name)), `${probe} sends the kubelet's own Host`)
  }
  const ann = deployment.spec.template.metadata.annotations as Record<string, string>
  t.equal(Number(ann['prometheus.io/port']), cfg.admin.listen.port, 'Prometheus scrapes the admin port')
  t.equal(ann['prometheus.io/path'], '/metrics')

  const labels = deployment.spec.template.metadata.labels as Record<string, string>
  const selects = (sel: Record<string, string>): boolean => Object.entries(sel).every(([k, v]) => labels[k] === v)
  t.ok(selects(deployment.spec.selector.matchLabels), 'the Deployment selects its pods')
  const services = all.filter(m => m.doc.kind === 'Service').map(m => m.doc)
  for (const s of services) {
    t.ok(selects(s.spec.selector), `Service ${String(s.metadata.name)} selects the gateway pods`)
    t.not(s.spec.sessionAffinity, 'ClientIP', `Service ${String(s.metadata.name)} is not sticky`)
    for (const p of s.spec.ports as Obj[]) t.ok(ports.has(p.targetPort), `Service ${String(s.metadata.name)} port ${String(p.name)} targets a named container port`)
  }
  const publicSvc = services.find(s => s.spec.ports.some((p: Obj) => p.targetPort === 'http'))!
  const adminSvc = services.find(s => s.spec.ports.some((p: Obj) => p.targetPort === 'admin'))!
  t.not(publicSvc.metadata.name, adminSvc.metadata.name, 'the admin port has its own Service')
  t.notOk(publicSvc.spec.ports.some((p: Obj) => p.targetPort === 'admin'), 'the public Service does not route the admin port')
  t.equal(adminSvc.spec.type, 'ClusterIP', 'the admin Service is cluster-internal')

  const backends = (one('Ingress').spec.rules as Obj[]).flatMap(r => r.http.paths.map((p: Obj) => p.backend.service))
  t.ok(backends.length > 0 && backends.every(b => b.name === publicSvc.metadata.name && publicSvc.spec.ports.some((p: Obj) => p.name === b.port.name && p.targetPort === 'http')), 'the Ingress sends to the public port only')

  const monitor = one('ServiceMonitor')
  t.ok(Object.entries(monitor.spec.selector.matchLabels as Record<string, string>).every(([k, v]) => adminSvc.metadata.labels[k] === v), 'the ServiceMonitor selects the admin Service')
  t.ok(monitor.spec.selector.matchLabels['app.kubernetes.io/component'] === 'admin' && publicSvc.metadata.labels['app.kubernetes.io/component'] !== 'admin', 'and not the public one')
  t.equal(monitor.spec.endpoints[0].port, adminSvc.spec.ports[0].name)

  t.ok(selects(one('PodDisruptionBudget').spec.selector.matchLabels), 'the PodDisruptionBudget covers the gateway pods')
  const np = one('NetworkPolicy')
  t.ok(selects(np.spec.podSelector.matchLabels), 'the NetworkPolicy covers the gateway pods')
  for (const rule of np.spec.ingress as Obj[]) {
    for (const p of rule.ports as Obj[]) t.ok(ports.has(p.port), `NetworkPolicy port ${String(p.port)} is a container port`)
    if (rule.ports.some((p: Obj) => p.port === 'admin')) t.ok(Array.isArray(rule.from) && rule.from.length > 0, 'the admin port is open to chosen sources only')
  }
  t.ok(deployment.spec.replicas >= 2, 'several replicas')
  t.equal(deployment.spec.strategy.rollingUpdate.maxUnavailable, 0, 'a rollout keeps every replica until its successor is ready')
})

t.test('the pod is non-root, read-only, without capabilities', async t => {
  t.equal(pod.securityContext.runAsNonRoot, true)
  t.equal(pod.securityContext.seccompProfile.type, 'RuntimeDefault')
  t.equal(pod.automountServiceAccountToken, false, 'no Kubernetes API token in the pod')
  const sc = container.securityContext as Obj
  t.equal(sc.readOnlyRootFilesystem, true, 'read-only root file system')
  t.equal(sc.allowPrivilegeEscalation, false)
  t.equal(sc.runAsNonRoot, true)
  t.same(sc.capabilities.drop, ['ALL'], 'drops every capability')
  t.notOk(sc.capabilities.add, 'adds none')
  t.equal(sc.seccompProfile.type, 'RuntimeDefault')
  t.notOk(sc.privileged, 'not privileged')
  for (const m of mounts) {
    const v = volumes.get(m.name)!
    if (v.emptyDir !== undefined) t.ok(v.emptyDir.sizeLimit, `emptyDir ${m.name} has a size limit`)
    else t.equal(m.readOnly, true, `${m.mountPath} is mounted read-only`)
  }
  const keys = [...volumes.values()].find(v => v.secret?.secretName === 'mcp-warden-keys')!
  t.equal(keys.secret.defaultMode & 0o007, 0, 'the signing keys are not readable by others')
  t.ok(container.resources.requests.cpu !== undefined && container.resources.requests.memory !== undefined, 'resource requests')
  const limitMi = Number(/^(\d+)Mi$/.exec(container.resources.limits.memory as string)?.[1])
  const heap = Number(/--max-old-space-size=(\d+)/.exec((container.env as Obj[]).find(e => e.name === 'NODE_OPTIONS')?.value as string ?? '')?.[1])
  t.ok(heap > 0 && heap < limitMi, `the V8 heap (${heap} MiB) is below the memory limit (${limitMi} MiB)`)
})

// ---------------------------------------------------------------------------------------------
// Really started

/** Paths, sizes and modification times of every file and link under `dir` (not following links). */
function snapshot (dir: string, skip: readonly string[]): string[] {
  const out: string[] = []
  const walk = (d: string): void => {
    for (const name of readdirSync(d)) {
      const p = join(d, name)
      if (skip.includes(p)) continue
      const st = statSync(p, { throwIfNoEntry: false })
      out.push(st === undefined ? `${relative(dir, p)} (dangling link)` : `${relative(dir, p)} ${st.size} ${st.mtimeMs}`)
      if (st?.isDirectory() === true && !name.startsWith('..')) walk(p)
    }
  }
  walk(dir)
  return out.sort()
}

t.test('started like the image: the probes answer on the admin port and not on the public one', { skip: existsSync(BIN) ? false : 'dist/ is missing: run npm run build (CI builds before tap)' }, async t => {
  if (!redisAvailable()) throw new Error('this test needs redis-server on the PATH (apt-get install -y redis-server)')
  // A stand-in for the collector: the gateway may post spans to it.
  const collector = createServer((req, res) => { req.resume(); req.on('end', () => { res.writeHead(200, { 'content-type': 'application/json' }).end('{}') }) })
  await new Promise<void>(resolve => collector.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { collector.close() })

  // The image's /app: package.json, node_modules, dist, cedar, rules, nothing else.
  const app = join(work, 'app')
  mkdirSync(app)
  for (const part of ['package.json', 'dist', 'cedar', 'rules']) cpSync(join(ROOT, part), join(app, part), { recursive: true })
  symlinkSync(join(ROOT, 'node_modules'), join(app, 'node_modules'))
  const appBin = join(app, 'dist', 'bin', 'mcp-warden.js')

  // Redis, and (meanwhile) the keys Secret made as docs/deploy.md says: `mcp-warden keys list
  // --keys-dir DIR` creates the first key.
  const gen = join(work, 'keys-cli')
  const [redisStart, listing] = await Promise.allSettled([startRedis(), run(process.execPath, [appBin, 'keys', 'list', '--keys-dir', gen], { cwd: app, env: { PATH: process.env.PATH ?? '' } })])
  if (redisStart.status === 'fulfilled') t.teardown(() => redisStart.value.close())
  if (redisStart.status === 'rejected') throw redisStart.reason
  if (listing.status === 'rejected') throw listing.reason
  const redis = redisStart.value
  const listed = listing.value
  const kid = /^(\S+)\s+activates .*\(signing\)/m.exec(listed.stdout)?.[1]
  t.ok(kid, `keys list created a signing key (${listed.stdout.trim()})`)
  const secret = Object.fromEntries(readdirSync(gen).map(f => [f, readFileSync(join(gen, f))]))

  const [httpPort, adminPort] = [await freePort('0.0.0.0'), await freePort('0.0.0.0')]
  const root = join(work, 'pod')
  const { text } = configUnder(root, c => {
    c.listen.port = httpPort
    c.admin.listen.port = adminPort
    c.store = redis.url
    c.telemetry.otlp.endpoint = `http://127.0.0.1:${(collector.address() as AddressInfo).port}`
  })
  const writable = layOut(root, text, { 'mcp-warden-keys': secret })
  const home = join(work, 'home')
  mkdirSync(home)
  const keysMount = join(root, mountOf((parse(configText) as Obj).tokens.keysDir as string)!.mountPath)
  const before = { app: snapshot(app, [join(app, 'node_modules')]), root: snapshot(root, writable), home: snapshot(home, []) }

  const env: Record<string, string> = {
    PATH: process.env.PATH ?? '',
    HOME: home,
    TMPDIR: writable.find(w => w.endsWith('/tmp')) ?? writable[0]!,
    ...Object.fromEntries((container.env as Obj[]).filter(e => typeof e.value === 'string').map(e => [e.name as string, e.value as string])),
    ...secretEnv()
  }
  const started = Date.now()
  const child = spawn(process.execPath, [appBin, ...container.args as string[]].map(a => a === configPath() ? join(root, a) : a), { cwd: app, env, stdio: ['ignore', 'pipe', 'pipe'] })
  let stderr = ''
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
  const stdout: string[] = []
  createInterface({ input: child.stdout }).on('line', l => stdout.push(l))
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL') })

  const admin = `http://127.0.0.1:${adminPort}`
  const pub = `http://127.0.0.1:${httpPort}`
  // The kubelet's probes and Prometheus send the pod's address as Host; clients of the public port, publicUrl's host.
  const get = async (base: string, path: string, host: string): Promise<{ status: number, text: string }> => {
    const res = await request(base + path, { headers: { host } })
    return { status: res.statusCode, text: await res.body.text() }
  }
  const podHost = `10.0.0.7:${adminPort}`
  const publicHost = new URL((parse(configText) as Obj).publicUrl as string).host

  // The startup probe: a TCP connection to the public port, every 200 ms here.
  const output = (): string => `${stderr}${stdout.slice(-20).join('\n')}`
  const connects = async (p: number): Promise<boolean> => await new Promise(resolve => {
    const socket = connect(p, '127.0.0.1')
    socket.once('connect', () => { socket.destroy(); resolve(true) })
    socket.once('error', () => { resolve(false) })
  })
  for (;;) {
    if (child.exitCode !== null) throw new Error(`the gateway exited with ${String(child.exitCode)}: ${output()}`)
    if (await connects(httpPort)) break
    if (Date.now() - started > 30_000) throw new Error(`the public port did not listen within 30 s: ${output()}`)
    await new Promise(resolve => setTimeout(resolve, 200))
  }
  t.pass(`the startup probe passes ${Date.now() - started} ms after the start`)

  const probes = [container.livenessProbe.httpGet.path, container.readinessProbe.httpGet.path, deployment.spec.template.metadata.annotations['prometheus.io/path']] as string[]
  for (const path of new Set(probes)) {
    let r = await get(admin, path, podHost)
    // Readiness waits for Redis.
    for (let i = 0; i < 50 && r.status === 503; i++) { await new Promise(resolve => setTimeout(resolve, 100)); r = await get(admin, path, podHost) }
    t.equal(r.status, 200, `admin ${path}: 200`)
    t.equal((await get(pub, path, publicHost)).status, 404, `public ${path}: 404`)
  }
  const ready = JSON.parse((await get(admin, '/readyz', podHost)).text) as Obj
  t.match(ready, { status: 'ready', store: { kind: 'redis', available: true } }, '/readyz: ready, Redis available')
  t.match((await get(admin, '/metrics', podHost)).text, /^mcp_warden_/m, 'Prometheus text')

  // The signing key is the Secret's: the gateway made none of its own.
  const jwks = JSON.parse((await get(pub, '/.well-known/jwks.json', publicHost)).text) as { keys: Array<{ kid: string }> }
  t.same(jwks.keys.map(k => k.kid), [kid], 'the JWKS publishes the Secret\'s key')

  // Key rotation as docs/deploy.md does it: the Secret's files to a folder, `keys rotate` there,
  // the Secret replaced; the kubelet swaps the volume's files and the gateway picks the new key
  // up by itself: published at once, signing only from its activation time.
  const rotating = mkdtempSync(join(work, 'rotate-'))
  for (const [f, content] of Object.entries(secret)) writeFileSync(join(rotating, f), content)
  const rotated = await run(process.execPath, [appBin, 'keys', 'rotate', '--keys-dir', rotating, '--activate-in', '300'], { cwd: app, env: { PATH: process.env.PATH ?? '' } })
  const newKid = /^new key (\S+) /.exec(rotated.stdout)?.[1]
  t.ok(newKid, `keys rotate added a key (${rotated.stdout.trim()})`)
  atomicDir(keysMount, Object.fromEntries(readdirSync(rotating).map(f => [f, readFileSync(join(rotating, f))])))
  let kids: string[] = []
  for (let i = 0; i < 100 && kids.length < 2; i++) {
    await new Promise(resolve => setTimeout(resolve, 100))
    kids = (JSON.parse((await get(pub, '/.well-known/jwks.json', publicHost)).text) as { keys: Array<{ kid: string }> }).keys.map(k => k.kid)
  }
  t.same(kids.sort(), [kid!, newKid!].sort(), 'after the Secret update the JWKS publishes the old and the new key')

  // An MCP request without a token: refused, and audited as a JSON line on stdout.
  const refused = await request(`${pub}/servers/db/mcp`, { method: 'POST', headers: { host: publicHost, 'content-type': 'application/json', accept: 'application/json, text/event-stream' }, body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'ping' }) })
  await refused.body.dump()
  t.equal(refused.statusCode, 401, 'an MCP request without a token: 401')
  for (let i = 0; i < 50 && !stdout.some(l => l.includes('"outcome"')); i++) await new Promise(resolve => setTimeout(resolve, 50))
  const records = (): Obj[] => stdout.filter(l => l.startsWith('{')).map(l => JSON.parse(l) as Obj).filter(r => 'outcome' in r && 'httpMethod' in r)
  t.match(records()[0], { server: 'db', outcome: 'deny', status: 401 }, 'the audit record is on stdout')

  // Policies: a ConfigMap update reaches the running replica. The policy version that decides is
  // in every audit record; an unauthenticated request is enough to read it.
  const policyVersion = async (): Promise<unknown> => {
    const n = records().length
    const res = await request(`${pub}/servers/db/mcp`, { method: 'POST', headers: { host: publicHost, 'content-type': 'application/json' }, body: '{"jsonrpc":"2.0","id":1,"method":"ping"}' })
    await res.body.dump()
    for (let i = 0; i < 50 && records().length === n; i++) await new Promise(resolve => setTimeout(resolve, 50))
    return records().at(-1)?.policyVersion
  }
  const v1 = await policyVersion()
  t.ok(typeof v1 === 'string' && v1 !== '', `the records name the policy version (${String(v1)})`)
  const policiesMount = join(root, mountOf((parse(configText) as Obj).authorization.policies as string)!.mountPath)
  const broken = { ...policiesMap.data as Record<string, string>, '50-broken.cedar': 'permit (principal, action, resource' }
  atomicDir(policiesMount, broken)
  for (let i = 0; i < 100 && !stdout.some(l => l.includes('Cedar policy set refused')); i++) await new Promise(resolve => setTimeout(resolve, 50))
  t.ok(stdout.some(l => l.includes('Cedar policy set refused')), 'a policy set that does not compile is refused')
  t.equal(await policyVersion(), v1, 'and the previous one stays in force')
  const added = { ...policiesMap.data as Record<string, string>, '50-added.cedar': (policiesMap.data['00-connect.cedar'] as string).replace(/@id\("([^"]+)"\)/, '@id("$1-again")') }
  atomicDir(policiesMount, added)
  let v2 = v1
  for (let i = 0; i < 100 && v2 === v1; i++) { await new Promise(resolve => setTimeout(resolve, 50)); v2 = await policyVersion() }
  t.not(v2, v1, 'a valid update is in force without a restart')

  // What the kubelet changed is the new baseline of the mounted volumes.
  before.root = snapshot(root, writable)

  // The image's HEALTHCHECK: 0 against the admin listener, 1 against the public one.
  const [exe, ...hcArgs] = JSON.parse(/CMD (\[.*\])$/.exec(stages.at(-1)!.instructions.find(i => i.keyword === 'HEALTHCHECK')!.args)![1]!) as string[]
  t.equal(exe, 'node', 'the HEALTHCHECK runs node (the image has no curl)')
  const healthcheck = async (url: string): Promise<number> => await run(process.execPath, hcArgs, { env: { PATH: env.PATH!, MCPW_HEALTHCHECK_URL: url } }).then(() => 0, (e: { code: number }) => e.code)
  t.equal(await healthcheck(`${admin}/healthz`), 0, 'HEALTHCHECK passes on the admin listener')
  t.equal(await healthcheck(`${pub}/healthz`), 1, 'HEALTHCHECK fails where /healthz is not served')

  // Redis away: not ready (the Services stop sending), still alive (no restart); back: ready.
  await redis.stop()
  let down = await get(admin, '/readyz', podHost)
  for (let i = 0; i < 100 && down.status !== 503; i++) { await new Promise(resolve => setTimeout(resolve, 50)); down = await get(admin, '/readyz', podHost) }
  t.equal(down.status, 503, 'readiness fails while Redis is unreachable')
  t.equal((await get(admin, '/healthz', podHost)).status, 200, 'liveness does not')
  await redis.start()
  let up = await get(admin, '/readyz', podHost)
  for (let i = 0; i < 100 && up.status !== 200; i++) { await new Promise(resolve => setTimeout(resolve, 50)); up = await get(admin, '/readyz', podHost) }
  t.equal(up.status, 200, 'ready again once Redis is back')

  // SIGTERM (what the kubelet sends after preStop): a clean exit.
  child.kill('SIGTERM')
  const [code] = await Promise.race([once(child, 'exit'), new Promise(resolve => setTimeout(resolve, 10_000, ['timeout']))]) as [unknown]
  t.equal(code, 0, 'exits 0 on SIGTERM')

  // Nothing was written outside the pod's writable volume.
  t.same(snapshot(app, [join(app, 'node_modules')]), before.app, 'the image\'s /app is unchanged')
  t.same(snapshot(root, writable), before.root, 'the mounted config, policies and keys are unchanged, and no file appeared beside them')
  t.same(snapshot(home, []), before.home, 'nothing in HOME')
})
