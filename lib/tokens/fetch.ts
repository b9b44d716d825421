/**
 * A fetch that sends each request with its own ephemeral token, for the gateway's own
 * tools that talk to an upstream directly (`mcp-warden cedar schema`).
 */
import type { Identity } from '../identity.js'
import { messageBinding } from './binding.js'
import type { TokenMinter } from './minter.js'

export function mintingFetch (minter: TokenMinter, audience: string, subject: Pick<Identity, 'agentId' | 'userId'>): typeof fetch {
  return async (input, init = {}) => {
    const method = (init.method ?? 'GET').toUpperCase()
    const body = typeof init.body === 'string' ? JSON.parse(init.body) as unknown : undefined
    const { token } = minter.mint(subject, audience, messageBinding(method, body))
    const headers = new Headers(init.headers)
    headers.set('authorization', `Bearer ${token}`)
    return await fetch(input, { ...init, headers })
  }
}
