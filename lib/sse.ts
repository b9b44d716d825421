/**
 * Server-Sent Events carrying JSON-RPC messages: splitting a stream into events as it
 * arrives (multi-byte characters split across chunks are decoded whole), reading the message
 * an event carries, and a streaming rewrite of those messages.
 */
import { Transform } from 'node:stream'
import { StringDecoder } from 'node:string_decoder'

export type MessageTransform = (message: Record<string, unknown>) => Promise<Record<string, unknown>> | Record<string, unknown>

/** Accumulates decoded text and hands back the complete events (blank-line separated). */
class EventSplitter {
  readonly #decoder = new StringDecoder('utf8')
  #buffer = ''

  push (chunk: Buffer | string): string[] {
    this.#buffer += typeof chunk === 'string' ? chunk : this.#decoder.write(chunk)
    const events: string[] = []
    for (;;) {
      const m = /\r?\n\r?\n/.exec(this.#buffer)
      if (m === null) return events
      events.push(this.#buffer.slice(0, m.index))
      this.#buffer = this.#buffer.slice(m.index + m[0].length)
    }
  }

  /** What is left when the stream ends (an event without its closing blank line). */
  end (): string {
    const rest = this.#buffer + this.#decoder.end()
    this.#buffer = ''
    return rest
  }
}

/** The JSON-RPC message (a JSON object) in an event's data lines, or undefined. */
export function eventMessage (block: string): Record<string, unknown> | undefined {
  const data = block.split(/\r?\n/).filter(l => l.startsWith('data:')).map(l => l.slice(l.startsWith('data: ') ? 6 : 5))
  if (data.length === 0) return undefined
  let message: unknown
  try { message = JSON.parse(data.join('\n')) } catch { return undefined }
  return message !== null && typeof message === 'object' && !Array.isArray(message) ? message as Record<string, unknown> : undefined
}

/** The JSON-RPC messages of an SSE stream, in order, as they arrive. */
export async function * sseMessages (stream: AsyncIterable<Buffer | string>): AsyncGenerator<Record<string, unknown>> {
  const splitter = new EventSplitter()
  for await (const chunk of stream) {
    for (const block of splitter.push(chunk)) {
      const m = eventMessage(block)
      if (m !== undefined) yield m
    }
  }
  const last = eventMessage(splitter.end())
  if (last !== undefined) yield last
}

async function rewriteEvent (block: string, transform: MessageTransform): Promise<string> {
  const message = eventMessage(block)
  if (message === undefined) return block
  const out = await transform(message)
  if (out === message) return block
  const kept = block.split(/\r?\n/).filter(l => !l.startsWith('data:'))
  return [...kept, `data: ${JSON.stringify(out)}`].join('\n')
}

/** Rewrites each message of an SSE stream; ids, event names and non-JSON events are kept. */
export function sseTransform (transform: MessageTransform): Transform {
  const splitter = new EventSplitter()
  return new Transform({
    async transform (chunk: Buffer, _enc, done) {
      try {
        let out = ''
        for (const block of splitter.push(chunk)) out += `${await rewriteEvent(block, transform)}\n\n`
        done(null, out === '' ? undefined : out)
      } catch (err) {
        done(err as Error)
      }
    },
    async flush (done) {
      try {
        const rest = splitter.end()
        done(null, rest === '' ? undefined : await rewriteEvent(rest, transform))
      } catch (err) {
        done(err as Error)
      }
    }
  })
}
