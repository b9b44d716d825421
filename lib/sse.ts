/**
 * Server-Sent Events carrying JSON-RPC messages, read with eventsource-parser (the parser the
 * MCP SDK itself uses, written to the HTML standard: CR, LF and CRLF line ends, a leading BOM,
 * multi-line data, comments, `retry`). Bytes are decoded as UTF-8 across chunk boundaries, each
 * chunk is parsed once (linear in the stream's length), and an event may not grow past a limit.
 */
import { Transform } from 'node:stream'
import { StringDecoder } from 'node:string_decoder'
import { createParser, type EventSourceMessage, type EventSourceParser } from 'eventsource-parser'
import { jsonRpcMessage } from './jsonrpc.js'

export type MessageTransform = (message: Record<string, unknown>) => Promise<Record<string, unknown>> | Record<string, unknown>

/** The largest event (or run of bytes without one) read from an upstream by default. */
export const DEFAULT_MAX_EVENT_BYTES = 16 * 1024 * 1024

export class SseLimitError extends Error {
  override name = 'SseLimitError'
}

export type SseItem = { kind: 'event', event: EventSourceMessage } | { kind: 'retry', ms: number }

/** Feeds decoded chunks to the parser; hands back what each chunk completed. */
export class EventReader {
  readonly #decoder = new StringDecoder('utf8')
  readonly #parser: EventSourceParser
  #out: SseItem[] = []
  #pending = 0
  #first = true

  constructor (private readonly maxEventBytes = DEFAULT_MAX_EVENT_BYTES) {
    this.#parser = createParser({
      onEvent: (event) => { this.#out.push({ kind: 'event', event }); this.#pending = 0 },
      onRetry: (ms) => { this.#out.push({ kind: 'retry', ms }) }
    })
  }

  push (chunk: Buffer | string): SseItem[] {
    this.#pending += chunk.length
    let text = typeof chunk === 'string' ? chunk : this.#decoder.write(chunk)
    if (this.#first && text !== '') {
      // The standard's UTF-8 decode step drops one leading byte order mark.
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1)
      this.#first = false
    }
    this.#parser.feed(text)
    if (this.#pending > this.maxEventBytes) throw new SseLimitError(`an event of the stream is larger than ${this.maxEventBytes} bytes`)
    return this.#take()
  }

  /**
   * What the end of the stream completes. A final CR still ends its line (the parser waits to
   * see whether LF follows); an event without its closing blank line is discarded, as the
   * standard says.
   */
  end (): SseItem[] {
    const rest = this.#decoder.end()
    if (rest !== '') this.#parser.feed(rest)
    this.#parser.feed('\n')
    this.#parser.reset()
    return this.#take()
  }

  #take (): SseItem[] {
    const out = this.#out
    this.#out = []
    return out
  }
}

/** The JSON-RPC message (a JSON object) an event's data carries, or undefined. */
export function eventMessage (data: string): Record<string, unknown> | undefined {
  let message: unknown
  try { message = JSON.parse(data) } catch { return undefined }
  return message !== null && typeof message === 'object' && !Array.isArray(message) ? message as Record<string, unknown> : undefined
}

/** An event as SSE text. */
export function formatEvent (e: { id?: string | undefined, event?: string | undefined, data: string }): string {
  return `${e.id !== undefined ? `id: ${e.id}\n` : ''}${e.event !== undefined ? `event: ${e.event}\n` : ''}${e.data.split('\n').map(l => `data: ${l}`).join('\n')}\n\n`
}

/** The JSON-RPC messages of an SSE stream, in order, as they arrive; other events are skipped. */
export async function * sseMessages (stream: AsyncIterable<Buffer | string>, maxEventBytes = DEFAULT_MAX_EVENT_BYTES): AsyncGenerator<Record<string, unknown>> {
  const reader = new EventReader(maxEventBytes)
  for await (const chunk of stream) {
    for (const item of reader.push(chunk)) {
      const m = item.kind === 'event' ? eventMessage(item.event.data) : undefined
      if (m !== undefined) yield m
    }
  }
  for (const item of reader.end()) {
    const m = item.kind === 'event' ? eventMessage(item.event.data) : undefined
    if (m !== undefined) yield m
  }
}

/**
 * Rewrites each message of an SSE stream; ids, event names, `retry` and events without data
 * are kept. An event whose data is not one JSON object is not a message and is not passed on;
 * an event past the size limit ends the stream with an error.
 */
export function sseTransform (transform: MessageTransform, maxEventBytes = DEFAULT_MAX_EVENT_BYTES): Transform {
  const reader = new EventReader(maxEventBytes)
  const render = async (items: SseItem[]): Promise<string> => {
    let out = ''
    for (const item of items) {
      if (item.kind === 'retry') { out += `retry: ${item.ms}\n\n`; continue }
      // An event without data carries only its id (a resumption point, e.g. a priming event):
      // passed on as it is. Data that is not one JSON object is not a message: not passed on.
      if (item.event.data === '') { out += formatEvent(item.event); continue }
      // Only a JSON-RPC message, and only its members, is passed on.
      const message = jsonRpcMessage(eventMessage(item.event.data))
      if (message === undefined) continue
      out += formatEvent({ id: item.event.id, event: item.event.event, data: JSON.stringify(await transform(message)) })
    }
    return out
  }
  return new Transform({
    async transform (chunk: Buffer, _enc, done) {
      try {
        const out = await render(reader.push(chunk))
        done(null, out === '' ? undefined : out)
      } catch (err) {
        done(err as Error)
      }
    },
    async flush (done) {
      try {
        const out = await render(reader.end())
        done(null, out === '' ? undefined : out)
      } catch (err) {
        done(err as Error)
      }
    }
  })
}
