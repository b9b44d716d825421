/**
 * What `npm install` does on a fresh machine that reaches only the npm registry: no package of
 * the lock file (dev dependencies included, since `npm install` installs them too) may need an
 * install script — a native build or a download of a prebuilt binary fails there.
 */
import { readFileSync } from 'node:fs'
import t from 'tap'

interface LockEntry { version?: string, hasInstallScript?: boolean, dev?: boolean, optional?: boolean, resolved?: string }
const lock = JSON.parse(readFileSync(new URL('../package-lock.json', import.meta.url), 'utf8')) as { lockfileVersion: number, packages: Record<string, LockEntry> }
const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as Record<string, unknown>

const name = (path: string): string => path.slice(path.lastIndexOf('node_modules/') + 'node_modules/'.length)

t.test('no package in package-lock.json has an install script', async t => {
  t.equal(lock.lockfileVersion, 3, 'the lock file lists every package with its flags')
  t.ok(Object.keys(lock.packages).length > 100, 'the lock file lists the installed tree')
  const scripted = Object.entries(lock.packages)
    .filter(([path, entry]) => path !== '' && entry.hasInstallScript === true)
    .map(([path, entry]) => `${name(path)}@${entry.version ?? '?'}${entry.dev === true ? ' (dev)' : ''}`)
  t.same(scripted, [], scripted.length > 0 ? `packages with install scripts: ${scripted.join(', ')}` : 'none')
})

t.test('every package comes from the npm registry, not from git or a URL', async t => {
  const elsewhere = Object.entries(lock.packages)
    .filter(([path, entry]) => path !== '' && entry.resolved !== undefined && !entry.resolved.startsWith('https://registry.npmjs.org/'))
    .map(([path, entry]) => `${name(path)}: ${entry.resolved!}`)
  t.same(elsewhere, [], elsewhere.join(', '))
})

t.test('package.json allows no install script either', async t => {
  t.notOk('allowScripts' in pkg, 'no allowScripts list: there is nothing to allow')
  const deps = { ...(pkg.dependencies as Record<string, string>), ...(pkg.devDependencies as Record<string, string>) }
  t.notOk('better-sqlite3' in deps, 'the demo database is SQLite in WebAssembly (sql.js)')
})
