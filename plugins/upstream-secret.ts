/**
 * upstream-secret: for legacy upstreams with `auth.type: secret`, injects a vaulted secret
 * (env:, file: or Vault KV v2) into one header of each allowed, forwarded message. The
 * agent never sees it; logs, errors and audit records never contain it.
 */
import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import type { GatewayConfig } from '../lib/config.js'
import { CredentialError } from '../lib/errors.js'
import { secretCredential, type SecretCredential } from '../lib/credentials/index.js'
import { addCredentialHook } from './credential-hook.js'

export interface UpstreamSecretOptions {
  config: GatewayConfig
}

async function upstreamSecret (app: FastifyInstance, opts: UpstreamSecretOptions): Promise<void> {
  const providers = new Map<string, SecretCredential>()
  for (const u of opts.config.upstreams.values()) if (u.auth.type === 'secret') providers.set(u.name, secretCredential(u.auth))
  if (providers.size === 0) return
  addCredentialHook(app, 'secret', (server) => providers.get(server.name), async ({ request, server }, p) => {
    try {
      return { headers: await p.headers() }
    } catch (err) {
      request.log.error({ server: server.name, secret: p.ref, error: (err as Error).message }, 'the upstream secret is unavailable')
      throw new CredentialError(server.name)
    }
  })
}

export default fp(upstreamSecret, { name: 'mcp-warden-upstream-secret', fastify: '5.x', dependencies: ['mcp-warden-context', 'mcp-warden-cedar-authz'] })
export { upstreamSecret }
