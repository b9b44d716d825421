/**
 * Demo upstream `api`: an operations API kept in memory.
 * Tools: metrics_fetch, payment_process, user_delete, config_override.
 */
import { randomUUID } from 'node:crypto'
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js'
import { z } from 'zod'

export interface ApiState {
  payments: Array<{ id: string, amount: number, currency: string, recipient: string }>
  users: Map<string, { name: string }>
  settings: Map<string, string>
}

export function createApiState (): ApiState {
  return {
    payments: [],
    users: new Map([['u-100', { name: 'alice' }], ['u-200', { name: 'bob' }], ['u-300', { name: 'carol' }]]),
    settings: new Map([['feature.newCheckout', 'off'], ['limits.dailyPayout', '10000']])
  }
}

const json = (value: unknown) => ({ content: [{ type: 'text' as const, text: JSON.stringify(value, null, 2) }] })
const failure = (message: string) => ({ isError: true, content: [{ type: 'text' as const, text: message }] })

export function createApiServer (state: ApiState): McpServer {
  const server = new McpServer({ name: 'demo-api', version: '1.0.0' })
  server.registerTool('metrics_fetch', {
    title: 'Fetch service metrics',
    description: 'Current request rate, error rate and latency of a service.',
    inputSchema: { service: z.string().min(1).default('checkout') },
    annotations: { readOnlyHint: true }
  }, async ({ service }) => {
    const load = process.cpuUsage()
    return json({ service, rps: 120 + (load.user % 50), errorRate: 0.002, latencyMs: { p50: 18, p99: 95 }, at: new Date().toISOString() })
  })
  server.registerTool('payment_process', {
    title: 'Process a payment',
    description: 'Pay an amount to a recipient.',
    inputSchema: { amount: z.number().positive().max(1_000_000), currency: z.string().regex(/^[A-Z]{3}$/), recipient: z.string().min(1) },
    annotations: { readOnlyHint: false, destructiveHint: false, idempotentHint: false }
  }, async ({ amount, currency, recipient }) => {
    const payment = { id: `pay_${randomUUID()}`, amount, currency, recipient }
    state.payments.push(payment)
    return json({ status: 'processed', ...payment })
  })
  server.registerTool('user_delete', {
    title: 'Delete a user',
    description: 'Delete a user account.',
    inputSchema: { userId: z.string().min(1) },
    annotations: { readOnlyHint: false, destructiveHint: true }
  }, async ({ userId }) => {
    if (!state.users.delete(userId)) return failure(`no user ${userId}`)
    return json({ deleted: userId })
  })
  server.registerTool('config_override', {
    title: 'Override a setting',
    description: 'Set a runtime setting of the service.',
    inputSchema: { key: z.string().min(1), value: z.string() },
    annotations: { readOnlyHint: false, destructiveHint: true }
  }, async ({ key, value }) => {
    const previous = state.settings.get(key) ?? null
    state.settings.set(key, value)
    return json({ key, value, previous })
  })
  return server
}
