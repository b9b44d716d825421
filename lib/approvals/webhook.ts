/**
 * The approvals webhook (`approvals.notify`): a JSON POST for each new approval and each
 * decision, signed so that a receiver can trust it.
 *
 * Headers: `x-mcp-warden-timestamp` (seconds since the epoch) and
 * `x-mcp-warden-signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`. A receiver
 * recomputes the HMAC over the raw body, compares in constant time, and refuses timestamps
 * older than a few minutes (replay).
 */
import { createHmac, timingSafeEqual } from 'node:crypto'
import { request } from 'undici'
import { approvalView, type ApprovalRecord } from './types.js'

export const SIGNATURE_HEADER = 'x-mcp-warden-signature'
export const TIMESTAMP_HEADER = 'x-mcp-warden-timestamp'

export function signWebhook (secret: string, timestamp: number, body: string): string {
  return `v1=${createHmac('sha256', secret).update(`${timestamp}.${body}`).digest('hex')}`
}

/** For receivers (and tests): whether a signature is right for the body, and the timestamp recent. */
export function verifyWebhook (secret: string, headers: { signature?: string, timestamp?: string }, body: string, toleranceSeconds = 300, now = Date.now()): boolean {
  const ts = Number(headers.timestamp)
  if (!Number.isInteger(ts) || Math.abs(now / 1000 - ts) > toleranceSeconds || headers.signature === undefined) return false
  const want = Buffer.from(signWebhook(secret, ts, body))
  const got = Buffer.from(headers.signature)
  return want.length === got.length && timingSafeEqual(want, got)
}

export type WebhookEvent = 'approval.requested' | 'approval.decided'

/** The body of a notification: what an approver needs to find the call, not the arguments themselves. */
export function webhookBody (event: WebhookEvent, r: ApprovalRecord, url: string): string {
  return JSON.stringify({ event, approval: approvalView(r, url, false) })
}

/** Sends one notification; resolves with the receiver's status, rejects on a network failure or timeout. */
export async function sendWebhook (url: string, secret: string, body: string, timeoutMs: number): Promise<number> {
  const timestamp = Math.floor(Date.now() / 1000)
  const res = await request(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', [TIMESTAMP_HEADER]: String(timestamp), [SIGNATURE_HEADER]: signWebhook(secret, timestamp, body), 'user-agent': 'mcp-warden' },
    body,
    headersTimeout: timeoutMs,
    bodyTimeout: timeoutMs
  })
  await res.body.dump()
  return res.statusCode
}
