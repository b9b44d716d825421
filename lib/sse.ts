/**
 * A streaming rewrite of Server-Sent Events carrying JSON-RPC messages: each event's data is
 * parsed, passed to a transform, and written back with its id and event name kept; events
 * that are not JSON pass through untouched. Events are handled in order, as they arrive.
 */
import { Transform } from 'node:stream'

export type MessageTransform = (message: Record<string, unknown>) => Promise<Record<string, unknown>> | Record<string, unknown>

async function rewriteEvent (block: string, transform: MessageTransform): Promise<string> {
  const lines = block.split(/\r?\n/)
  const data = lines.filter(l => l.startsWith('data:')).map(l => l.slice(l.startsWith('data: ') ? 6 : 5))
  if (data.length === 0) return block
  let message: unknown
  try { message = JSON.parse(data.join('\n')) } catch { return block }
  if (message === null || typeof message !== 'object' || Array.isArray(message)) return block
  const out = await transform(message as Record<string, unknown>)
  if (out === message) return block
  const kept = lines.filter(l => !l.startsWith('data:'))
  return [...kept, `data: ${JSON.stringify(out)}`].join('\n')
}

export function sseTransform (transform: MessageTransform): Transform {
  let buffer = ''
  return new Transform({
    async transform (chunk: Buffer, _enc, done) {
      buffer += chunk.toString('utf8')
      try {
        let out = ''
        for (;;) {
          const m = /\r?\n\r?\n/.exec(buffer)
          if (m === null) break
          const block = buffer.slice(0, m.index)
          buffer = buffer.slice(m.index + m[0].length)
          out += `${await rewriteEvent(block, transform)}\n\n`
        }
        done(null, out === '' ? undefined : out)
      } catch (err) {
        done(err as Error)
      }
    },
    async flush (done) {
      try {
        done(null, buffer === '' ? undefined : await rewriteEvent(buffer, transform))
      } catch (err) {
        done(err as Error)
      }
    }
  })
}
