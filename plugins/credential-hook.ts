/**
 * The one preHandler of the credential plugins (ephemeral-token, token-exchange,
 * upstream-secret): for a request to one of the plugin's upstreams, once the agent is verified
 * and Cedar allowed the message, the plugin's `obtain` gives the upstream's credential for this
 * one message (`request.upstreamAuth`), timed as its stage. No allow decision: nothing is
 * obtained and nothing is forwarded (fail closed); `obtain` throws its own refusal when it
 * cannot obtain one. In shadow mode a message Cedar did not allow is forwarded, so it gets the
 * upstream's usual credential too (no decision at all still gets none).
 */
import type { FastifyInstance, FastifyRequest } from 'fastify'
import type { UpstreamConfig } from '../lib/config.js'
import type { Decision } from '../lib/cedar/engine.js'
import type { UpstreamAuth } from '../lib/credentials/index.js'
import { CredentialError } from '../lib/errors.js'
import type { Identity } from '../lib/identity.js'
import { startStage, type Stage } from '../lib/timing.js'
import { declareShared, provided } from './decorations.js'
import { startUpstreamSpan } from '../lib/tracing.js'

export interface CredentialRequest {
  readonly request: FastifyRequest
  readonly identity: Identity
  /** The decision the credential is for: an allow, or any decision in shadow mode. */
  readonly decision: Decision
  readonly server: UpstreamConfig
}

export function addCredentialHook<T> (app: FastifyInstance, stage: Stage, entryFor: (server: UpstreamConfig) => T | undefined,
  obtain: (r: CredentialRequest, entry: T) => Promise<UpstreamAuth> | UpstreamAuth): void {
  declareShared(app, 'upstreamAuth')
  app.addHook('preHandler', async (request) => {
    const target = request.mcpTarget
    const identity = request.identity
    if (target === null || identity === null) return
    const entry = entryFor(target.server)
    if (entry === undefined) return
    const decision = request.decision
    if (decision === null || (!decision.allowed && request.mcpShadow == null)) throw new CredentialError(target.server.name)
    // With tracing on, the trace context goes into the message now: a token bound to the
    // message is bound to what the upstream receives.
    const tracer = provided(app, 'tracer') ?? null
    if (tracer !== null) startUpstreamSpan(tracer, request, { 'mcp_warden.server': target.server.name })
    const done = startStage(request, stage)
    try {
      request.upstreamAuth = await obtain({ request, identity, decision, server: target.server }, entry)
    } finally {
      done()
    }
  })
}
