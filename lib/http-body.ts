/**
 * HTTP bodies: reading one whole under a size limit (requests to the gateway's own small hosts,
 * answers of upstreams, identity providers and JWKS endpoints), and writing a JSON-RPC error body.
 * `freePort` moved to lib/free-port.ts; it is re-exported here so its importers need not change.
 */
import type { IncomingMessage, ServerResponse } from 'node:http'

export { freePort } from './free-port.js'

/** A body went past the limit it was read under (the stream is destroyed). */
export class BodyLimitError extends Error {
  override name = 'BodyLimitError'
  constructor (readonly limit: number) { super(`the body is larger than ${limit} bytes`) }
}

/** Reads a body whole, at most `limit` bytes: beyond them the stream is destroyed and BodyLimitError thrown. */
export async function readAtMost (body: AsyncIterable<unknown> & { destroy: () => unknown }, limit: number): Promise<Buffer> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of body) {
    size += (chunk as Buffer).length
    if (size > limit) {
      body.destroy()
      throw new BodyLimitError(limit)
    }
    chunks.push(chunk as Buffer)
  }
  return Buffer.concat(chunks)
}

/** Reads a request body, refusing more than `limit` bytes. */
export async function readBody (req: IncomingMessage, limit = 4 * 1024 * 1024): Promise<Buffer> {
  return await readAtMost(req, limit)
}

/** Answers with a JSON-RPC error body (id null). */
export function sendError (res: ServerResponse, status: number, code: number, message: string): void {
  res.writeHead(status, { 'content-type': 'application/json' })
  res.end(JSON.stringify({ jsonrpc: '2.0', id: null, error: { code, message } }))
}
