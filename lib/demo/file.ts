/**
 * Demo upstream `file`: a sandbox folder. Tools: file_read, file_write.
 * Paths are relative to the sandbox; anything that resolves outside it (`..`,
 * absolute paths, symbolic links) is refused.
 */
import { mkdir, readFile, realpath, stat, writeFile } from 'node:fs/promises'
import { existsSync, mkdirSync, writeFileSync } from 'node:fs'
import { dirname, isAbsolute, join, relative, resolve, sep } from 'node:path'
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js'
import { z } from 'zod'

const MAX_BYTES = 1024 * 1024
const failure = (message: string) => ({ isError: true, content: [{ type: 'text' as const, text: message }] })

export function seedSandbox (root: string): void {
  mkdirSync(join(root, 'data'), { recursive: true })
  const readme = join(root, 'README.txt')
  if (!existsSync(readme)) writeFileSync(readme, 'This is the mcp-warden demo sandbox. Files under data/ are sample data.\n')
  const report = join(root, 'data', 'report.csv')
  if (!existsSync(report)) writeFileSync(report, 'month,revenue\n2026-09,10400\n2026-10,11850\n')
}

/** Resolves a sandbox-relative path; null when it would leave the sandbox. */
async function inside (root: string, path: string): Promise<string | null> {
  if (isAbsolute(path) || path.includes('\0')) return null
  const realRoot = await realpath(root)
  const target = resolve(realRoot, path)
  const rel = relative(realRoot, target)
  if (rel === '' || rel.startsWith('..') || isAbsolute(rel)) return null
  // Follow links of the part of the path that exists.
  let existing = target
  while (!existsSync(existing)) existing = dirname(existing)
  const real = await realpath(existing)
  if (real !== realRoot && !real.startsWith(realRoot + sep)) return null
  return target
}

export function createFileServer (root: string): McpServer {
  const server = new McpServer({ name: 'demo-file', version: '1.0.0' })
  server.registerTool('file_read', {
    title: 'Read a file',
    description: 'Read a UTF-8 text file from the sandbox. The path is relative to the sandbox, e.g. data/report.csv.',
    inputSchema: { path: z.string().min(1) },
    annotations: { readOnlyHint: true }
  }, async ({ path }) => {
    const file = await inside(root, path)
    if (file === null) return failure(`${path} is outside the sandbox`)
    try {
      const s = await stat(file)
      if (!s.isFile()) return failure(`${path} is not a file`)
      if (s.size > MAX_BYTES) return failure(`${path} is larger than ${MAX_BYTES} bytes`)
      return { content: [{ type: 'text' as const, text: await readFile(file, 'utf8') }] }
    } catch {
      return failure(`${path} does not exist`)
    }
  })
  server.registerTool('file_write', {
    title: 'Write a file',
    description: 'Write a UTF-8 text file in the sandbox, creating folders as needed.',
    inputSchema: { path: z.string().min(1), content: z.string().max(MAX_BYTES) },
    annotations: { readOnlyHint: false, destructiveHint: true }
  }, async ({ path, content }) => {
    const file = await inside(root, path)
    if (file === null) return failure(`${path} is outside the sandbox`)
    await mkdir(dirname(file), { recursive: true })
    await writeFile(file, content)
    return { content: [{ type: 'text' as const, text: `wrote ${Buffer.byteLength(content)} bytes to ${path}` }] }
  })
  return server
}
