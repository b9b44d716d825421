/**
 * HTTP bodies of the gateway's own small hosts (the stdio bridge, the demo servers): reading a
 * request body under a size limit, and writing a JSON-RPC error body.
 * `freePort` moved to lib/free-port.ts; it is re-exported here so its importers need not change.
 */
import type { IncomingMessage, ServerResponse } from 'node:http'

export { freePort } from './free-port.js'

/** Reads a request body, refusing more than `limit` bytes. */
export async function readBody (req: IncomingMessage, limit = 4 * 1024 * 1024): Promise<Buffer> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of req) {
    size += (chunk as Buffer).length
    if (size > limit) throw new Error('body too large')
    chunks.push(chunk as Buffer)
  }
  return Buffer.concat(chunks)
}

/** Answers with a JSON-RPC error body (id null). */
export function sendError (res: ServerResponse, status: number, code: number, message: string): void {
  res.writeHead(status, { 'content-type': 'application/json' })
  res.end(JSON.stringify({ jsonrpc: '2.0', id: null, error: { code, message } }))
}
