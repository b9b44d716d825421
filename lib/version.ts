import { existsSync, readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

/** The package's folder and version: the nearest package.json above this module (source or dist). */
function findPackage (): { root: string, version: string } {
  let dir = dirname(fileURLToPath(import.meta.url))
  for (;;) {
    const file = join(dir, 'package.json')
    if (existsSync(file)) {
      const pkg = JSON.parse(readFileSync(file, 'utf8')) as { name?: string, version?: string }
      if (pkg.name === 'mcp-warden' && typeof pkg.version === 'string') return { root: dir, version: pkg.version }
    }
    const up = dirname(dir)
    if (up === dir) throw new Error('mcp-warden: cannot find its package.json')
    dir = up
  }
}

const pkg = findPackage()
export const VERSION = pkg.version
/** The package's folder: the shipped cedar/ schema, policies and tests live there. */
export const PACKAGE_ROOT = pkg.root
