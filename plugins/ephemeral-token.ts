/**
 * ephemeral-token: for upstreams with `auth.type: ephemeral`, mints one token per
 * forwarded message after the Cedar decision allowed it (DESIGN.md §8) and hands it to the
 * proxy as `Authorization: Bearer`. No allow decision, or a failure to mint: nothing is
 * forwarded (fail closed). Also serves the signer's public keys at /.well-known/jwks.json.
 *
 * Keys live in tokens.keysDir (created, 0600, on first start; shared by replicas) and are
 * re-read when the folder changes, every 30 s, and on SIGHUP (wired by buildGateway), so `mcp-warden keys rotate`
 * takes effect without a restart.
 */
import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import type { GatewayConfig } from '../lib/config.js'
import { CredentialError } from '../lib/errors.js'
import { messageBinding } from '../lib/tokens/binding.js'
import { createGatewayTokens, type GatewayTokens } from '../lib/tokens/gateway-tokens.js'
import { watchAndReload } from '../lib/reload.js'
import { provide } from './decorations.js'
import { addCredentialHook } from './credential-hook.js'

export interface EphemeralTokenOptions {
  config: GatewayConfig
  /** The gateway's signing keys and minter (buildGateway creates them); default: opened from config.tokens. */
  tokens?: GatewayTokens
}

async function ephemeralToken (app: FastifyInstance, opts: EphemeralTokenOptions): Promise<void> {
  const tokens = opts.tokens ?? createGatewayTokens(opts.config.tokens, app.log)
  const { minter, keys, reload } = tokens
  provide(app, 'tokens', tokens)
  app.decorateRequest('mcpUpstreamToken', null)

  // The folder is watched and re-read every 30 s (the interval and SIGHUP still reload where it cannot be watched).
  const watching = watchAndReload({ paths: [opts.config.tokens.keysDir], reload, debounceMs: 0, everyMs: 30_000 })
  app.addHook('onClose', async () => { watching.close() })

  app.get('/.well-known/jwks.json', async (_request, reply) => {
    void reply.header('cache-control', 'public, max-age=30')
    return keys.jwks()
  })

  addCredentialHook(app, 'mint', (server) => server.auth.type === 'ephemeral' ? server : undefined, ({ request, identity, server }) => {
    try {
      const minted = minter.mint(identity, server.resource, messageBinding(request.method, request.mcp?.message))
      request.mcpUpstreamToken = minted.claims
      return { headers: { authorization: `Bearer ${minted.token}` } }
    } catch (err) {
      request.log.error({ error: (err as Error).message, server: server.name }, 'minting an ephemeral token failed')
      throw new CredentialError(server.name)
    }
  })
}

export default fp(ephemeralToken, {
  name: 'mcp-warden-ephemeral-token',
  fastify: '5.x',
  dependencies: ['mcp-warden-context', 'mcp-warden-identity', 'mcp-warden-cedar-authz']
})
export { ephemeralToken }
