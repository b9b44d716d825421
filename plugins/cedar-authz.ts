/**
 * cedar-authz: every MCP message is decided by Cedar in preHandler, after identity and
 * parsing and before anything is forwarded. A deny (or an engine error, which denies) is
 * answered with the JSON-RPC error -32003 "Access denied: <advice or reason>" and the
 * decision id; nothing reaches the upstream.
 *
 * tools/call → call_tool on Mcp::Tool::"<server>/<tool>"; resources/read, /subscribe,
 * /unsubscribe → read_resource; prompts/get → get_prompt; everything else (initialize,
 * ping, lists, notifications, responses, GET streams, DELETE) → connect on the Server.
 *
 * Shadow mode (`authorization.mode: shadow`, or `upstreams.<name>.mode: shadow`): every
 * decision is made exactly as in enforce mode and kept in `request.decision`, and the request is
 * marked `request.mcpShadow`; a message Cedar did not allow (a deny, an engine error, a hidden
 * tool, a call that needs approval) is forwarded anyway, asks for no approval, and its audit
 * record carries the decision with `shadow: true`. Only Cedar's decisions are shadowed: identity,
 * parsing and limits, rate limits, tool quarantine and session binding stay enforced.
 *
 * The policy set reloads with app.mcpWarden.cedar.reload() (buildGateway calls it on SIGHUP) and, with
 * authorization.watch, when a policy file or the schema changes. A new set is validated before it replaces the old one; a bad set
 * is refused with the validator's message and the old set stays.
 */
import fp from 'fastify-plugin'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import type { GatewayConfig } from '../lib/config.js'
import { AccessDeniedError, ConfigError, refusal, UnknownToolError } from '../lib/errors.js'
import { startStage } from '../lib/timing.js'
import { watchAndReload } from '../lib/reload.js'
import { methodSpec } from '../lib/mcp-methods.js'
import { shadowUpstreams } from '../lib/shadow-mode.js'
import {
  CedarEngine, compilePolicySet, listable, onEngineFailure, readPolicySource, type AuthzRequest, type Decision
} from '../lib/cedar/engine.js'
import { provided, provide, type ApprovalGate, type ReloadResult } from './decorations.js'

export interface CedarAuthzOptions {
  config: GatewayConfig
}

/** The same request without the call's arguments: what a caller that may not see the tool is decided on. */
function withoutArguments (r: AuthzRequest): AuthzRequest {
  const { arguments: _arguments, ...rest } = r
  return rest
}

/** The Cedar request for an MCP message on a server route. */
export function authzRequestFor (request: FastifyRequest): AuthzRequest {
  const identity = request.identity!
  const server = request.mcpTarget!.server
  const m = request.mcp
  if (m === null) return { identity, server, action: 'connect', method: request.method }
  if (m.kind === 'response') return { identity, server, action: 'connect', method: 'response' }
  switch (m.target) {
    case 'tool':
      return { identity, server, action: 'call_tool', method: m.method, tool: m.tool, ...(m.arguments !== undefined ? { arguments: m.arguments } : {}) }
    case 'resource':
      return { identity, server, action: 'read_resource', method: m.method, uri: m.uri }
    case 'prompt':
      return { identity, server, action: 'get_prompt', method: m.method, prompt: m.prompt }
    default:
      return { identity, server, action: methodSpec(m.method).action, method: m.method }
  }
}

async function cedarAuthz (app: FastifyInstance, opts: CedarAuthzOptions): Promise<void> {
  const { schema, policies, timezone, watch: watchFiles } = opts.config.authorization
  let engine: CedarEngine
  try {
    engine = new CedarEngine(compilePolicySet(readPolicySource(schema, policies)), timezone)
  } catch (err) {
    throw new ConfigError(`authorization.policies: the policy set is not valid: ${(err as Error).message}`)
  }
  for (const w of engine.policySet.warnings) app.log.warn({ warning: w }, 'Cedar validation warning')

  let reloading = Promise.resolve<ReloadResult>({ ok: true, version: engine.version })
  async function reloadNow (): Promise<ReloadResult> {
    try {
      const next = compilePolicySet(readPolicySource(schema, policies))
      if (next.version !== engine.version) {
        engine.swap(next)
        app.log.info({ policyVersion: next.version, policies: next.policyIds.length }, 'Cedar policy set reloaded')
      }
      return { ok: true, version: next.version }
    } catch (err) {
      const error = (err as Error).message
      app.log.error({ error, policyVersion: engine.version }, 'Cedar policy set refused; the previous set stays in force')
      return { ok: false, error, version: engine.version }
    }
  }
  const reload = async (): Promise<ReloadResult> => {
    reloading = reloading.then(reloadNow, reloadNow)
    return await reloading
  }

  provide(app, 'cedar', {
    authorize: (r: AuthzRequest) => engine.authorize(r),
    get version () { return engine.version },
    get engine () { return engine },
    reload
  })
  app.decorateRequest('decision', null)

  // A Cedar call that throws means the Wasm instance failed; the engine replaces it at once.
  // Either way it is an error in the operational log (and /readyz is 503 while it is broken).
  const unsubscribe = onEngineFailure(({ error, recovered }) => {
    if (recovered) app.log.error({ error }, 'Cedar engine failed: a fresh Wasm instance replaced it; the request it was deciding was denied')
    else app.log.error({ error }, 'Cedar engine failed and could not be replaced: every decision is denied until it is (/readyz answers 503)')
  })
  app.addHook('onClose', async () => { unsubscribe() })

  if (watchFiles) {
    const watching = watchAndReload({
      paths: [policies, schema],
      reload,
      onWatchError: (err, path) => { app.log.warn({ err, path }, 'cannot watch Cedar files; SIGHUP still reloads') }
    })
    app.addHook('onClose', async () => { watching.close() })
  }

  // The approvals plugin, when registered: a call only @approval policies denied waits for a
  // person there. Without it, such a call is denied like any other.
  let gate: ApprovalGate | undefined
  app.addHook('onReady', async () => { gate = provided(app, 'approvals') })

  // Shadow mode is settled at boot, per upstream; the operational log says so once.
  const shadowed = shadowUpstreams(opts.config)
  app.decorateRequest('mcpShadow', null)
  if (shadowed.length > 0) {
    app.log.warn({ shadow: shadowed }, `shadow mode on ${shadowed.join(', ')}: Cedar decisions there are audited (shadow: true) but not applied; calls the policies deny are forwarded`)
  }

  app.addHook('preHandler', async (request, reply) => {
    if (request.mcpTarget === null || request.identity === null) return
    const authzRequest = authzRequestFor(request)
    const shadow = request.mcpTarget.server.mode === 'shadow'
    if (shadow) request.mcpShadow = { hidden: [] }
    const done = startStage(request, 'authz')
    let decision = engine.authorize(authzRequest)
    done()
    request.decision = decision
    if (decision.allowed) return
    // Shadow mode: nobody is asked for an approval (none is created, none is used up) and
    // nothing is refused; the decision kept says what enforce mode would have answered.
    if (shadow) {
      request.decision = shadowDecision(authzRequest, decision, gate !== undefined && request.mcp?.kind === 'request')
      return
    }
    if (decision.approval !== undefined && gate !== undefined && authzRequest.action === 'call_tool' && request.mcp?.kind === 'request') {
      const settled = await gate.settle(request, reply, authzRequest, decision)
      if (settled === null) return reply
      request.decision = decision = settled
      if (decision.allowed) return
    }
    if (hidden(authzRequest, decision)) {
      throw refusal(new UnknownToolError(authzRequest.tool!), { reason: `hidden: ${decision.reason}` })
    }
    throw refusal(new AccessDeniedError(decision.reason), {
      reason: decision.reason,
      outcome: decision.outcome,
      data: { decisionId: decision.decisionId, policies: decision.policies },
      ...(request.mcp === null ? { statusCode: 403 } : {})
    })
  })

  /**
   * A tool the caller may not even see (denied without arguments too) is answered like a tool
   * that does not exist, so its existence is not revealed. A tool that needs a person's approval
   * is visible.
   */
  function hidden (authzRequest: AuthzRequest, decision: Decision): boolean {
    return authzRequest.action === 'call_tool' && decision.outcome === 'deny' && decision.approval === undefined &&
      (authzRequest.arguments === undefined || !listable(engine.authorize(withoutArguments(authzRequest))))
  }

  /**
   * The decision a shadow-mode request keeps for its audit record: the one enforce mode would
   * have recorded. A hidden tool's reason reads `hidden: …` and a call that needed approval
   * `approval required: …`, as they would (an approval id aside: none is created).
   */
  function shadowDecision (authzRequest: AuthzRequest, decision: Decision, approvable: boolean): Decision {
    if (decision.approval !== undefined && authzRequest.action === 'call_tool' && approvable) {
      return { ...decision, reason: `approval required: ${decision.reason}` }
    }
    if (hidden(authzRequest, decision)) return { ...decision, reason: `hidden: ${decision.reason}` }
    return decision
  }
}

export default fp(cedarAuthz, { name: 'mcp-warden-cedar-authz', fastify: '5.x', dependencies: ['mcp-warden-context', 'mcp-warden-identity'] })
export { cedarAuthz }
