/**
 * approvals: a person's approval of one exact call (DESIGN §11).
 *
 * Agent side (`app.mcpWarden.approvals.settle`, called by cedar-authz for a call that only
 * @approval policies denied): the call's approval, when a person gave one, is used once and the
 * call goes on; otherwise the call is not forwarded and the agent is told where a person
 * approves it, in the shape its protocol era and capabilities understand:
 * - 2026-07-28 era → an `input_required` result carrying one URL-mode elicitation;
 * - a session whose client declared URL elicitation → JSON-RPC -32042 (URL elicitation required);
 * - anyone else → -32003 "Approval required: …" with `approvalId`, `approvalUrl`, `expiresAt`.
 * The same call asked again while it waits gets the same approval; approving or denying sends
 * `notifications/elicitation/complete` on the session's GET streams.
 *
 * Approver side (`/approvals…`): server-rendered pages (no JavaScript) and a JSON API for the
 * CLI. People sign in with OIDC (authorization code + PKCE, `approvals.signIn`) or an approver
 * JWT of the identity provider whose `aud` is `approvals.approverAudience`. Whether a person may
 * decide is Cedar's `Mcp::Action::"approve"`; nobody decides on a call made for their own user.
 * Forms carry CSRF tokens bound to the sign-in session; every view refused and every decision
 * is audited; the webhook `approvals.notify` is told of each request and decision.
 */
import fp from 'fastify-plugin'
import formbody from '@fastify/formbody'
import { createHash } from 'node:crypto'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { GatewayConfig } from '../lib/config.js'
import type { GatewayTokens } from '../lib/tokens/gateway-tokens.js'
import type { Decision } from '../lib/cedar/engine.js'
import { ApprovalRateLimitError, TokenInvalidError } from '../lib/errors.js'
import { agentAudiencesOf, bearerToken, budgetKey, createPersonTokenCheck, identityFromClaims, type Identity } from '../lib/identity.js'
import { envelopeVersion, isModernVersion, type McpMessage } from '../lib/jsonrpc.js'
import { createSecretProvider } from '../lib/secrets.js'
import { APPROVAL_ID, argumentsDigest, bindingOf, newApprovalId } from '../lib/approvals/binding.js'
import { createOidcClient, authorizationUrl, newSignIn, type SignInState } from '../lib/approvals/oidc.js'
import { approvalPage, decidedPage, htmlPage, listPage, messagePage, PAGE_CSP, signInPage } from '../lib/approvals/page.js'
import { CookieSigner, SESSION_COOKIE, SIGN_IN_COOKIE, cookie, randomToken, readCookies } from '../lib/approvals/session.js'
import { approvalView, type ApprovalRecord, type ApproverRef } from '../lib/approvals/types.js'
import { sendWebhook, webhookBody, type WebhookEvent } from '../lib/approvals/webhook.js'
import { provide, type AuditRecord } from './decorations.js'

export interface ApprovalsOptions {
  config: GatewayConfig
  /** The gateway's signing keys: the page cookies' key is derived from them (replicas share them). */
  tokens: GatewayTokens
}

/** The approver's session on the pages: the claims the gateway needs, not the token. */
interface SessionValue {
  userId: string
  /** Every id the approver's token named (user id, sub, agent id), compared as sameId does. */
  ids: string[]
  roles: string[]
  department: string | null
  issuer: string
  via: 'oidc' | 'token'
  nonce: string
}

/** Who is deciding: from a Bearer approver token (API, CLI) or a page session (cookie). */
interface Approver {
  readonly identity: Identity
  readonly ref: ApproverRef
  /** Every id the approver's token named, as sameId spells them. */
  readonly ids: readonly string[]
  /** The session's CSRF nonce; null for a Bearer token (no cookie, so no CSRF). */
  readonly nonce: string | null
}

const SESSION_SECONDS = 8 * 3600
const SIGN_IN_SECONDS = 600
const NOT_FOUND = 'No approval is waiting under this address: it may have expired, been decided already, or never existed.'

/** An approver as the Cedar principal: an Identity built from what their token said. */
function approverIdentity (v: Omit<SessionValue, 'nonce' | 'via' | 'ids'>, exp: number): Identity {
  return Object.freeze({
    agentId: v.userId,
    userId: v.userId,
    roles: v.roles,
    department: v.department,
    scopes: [],
    issuer: v.issuer,
    subjectIssuer: v.issuer,
    subject: v.userId,
    expiresAt: exp,
    delegated: false,
    actor: null,
    claims: {}
  })
}

/**
 * An id as people and identity providers may spell it differently: NFKC, case-folded, without
 * invisible format or control characters and spaces. "Frank", "frank " and full-width "ｆｒａｎｋ"
 * are one person when the gateway asks whether an approver is the requester.
 */
export function sameId (id: string): string {
  return id.normalize('NFKC').replace(/[\p{Cc}\p{Cf}\p{Z}\s]/gu, '').toLowerCase()
}

/** The ids a token names for its holder: the user id claim, `sub`, the agent id claim. */
function idsOf (claims: Record<string, unknown>, config: GatewayConfig): string[] {
  const names = config.identity.claims
  return [...new Set([claims[names.userId], claims.sub, claims[names.agentId]].filter((v): v is string => typeof v === 'string' && v !== '').map(sameId).filter(v => v !== ''))]
}

/** The message without the 2026-07-28 retry members the gateway asked for (they are not the upstream's). */
function withoutRetryState (m: McpMessage): McpMessage {
  const params = m.params
  if (params === undefined || (!Object.hasOwn(params, 'inputResponses') && !Object.hasOwn(params, 'requestState'))) return m
  const { inputResponses: _r, requestState: _s, ...rest } = params
  const message = { ...m.message, params: rest }
  return { ...m, params: rest, message, raw: Buffer.from(JSON.stringify(message)) } as McpMessage
}

async function approvals (app: FastifyInstance, opts: ApprovalsOptions): Promise<void> {
  const { config } = opts
  const cfg = config.approvals
  const store = app.mcpWarden.store.approvals
  const cedar = app.mcpWarden.cedar
  const keys = opts.tokens.keys
  const publicUrl = config.publicUrl
  const secure = publicUrl.startsWith('https:')
  const pageUrl = (id: string): string => `${publicUrl}/approvals/${id}`
  const signer = new CookieSigner(() => createHash('sha256').update('mcp-warden approvals\0').update(keys.current().privateKeyPem).digest())
  const webhookSecret = cfg.notify !== undefined ? createSecretProvider(cfg.notify.secret) : undefined
  const oidcSecret = cfg.signIn?.clientSecret !== undefined ? createSecretProvider(cfg.signIn.clientSecret) : undefined
  const oidc = cfg.signIn !== undefined
    ? createOidcClient({
      issuer: cfg.signIn.issuer,
      clientId: cfg.signIn.clientId,
      ...(oidcSecret !== undefined ? { clientSecret: async () => await oidcSecret.get() } : {}),
      clockToleranceSeconds: config.identity.clockToleranceSeconds
    })
    : undefined
  const callbackUrl = `${publicUrl}/approvals/callback`
  const upstreamOf = (name: string) => config.upstreams.get(name)
  let audit: ((record: AuditRecord) => void) | undefined
  app.addHook('onReady', async () => {
    if (app.hasPlugin('mcp-warden-audit')) audit = (r) => { app.mcpWarden.audit.write(r) }
  })

  function notify (event: WebhookEvent, r: ApprovalRecord): void {
    if (cfg.notify === undefined || webhookSecret === undefined) return
    const { url, timeoutMs } = cfg.notify
    void (async () => {
      const status = await sendWebhook(url, await webhookSecret.get(), webhookBody(event, r, pageUrl(r.id)), timeoutMs)
      if (status < 200 || status > 299) app.log.warn({ approvalId: r.id, event, status }, 'the approvals webhook refused a notification')
    })().catch((err: unknown) => { app.log.warn({ approvalId: r.id, event, error: (err as Error).message }, 'the approvals webhook could not be told') })
  }

  function auditApproval (request: FastifyRequest, r: ApprovalRecord, fields: { method: string, outcome: 'allow' | 'deny', reason: string, approver: string | null, status: number, decision?: Decision }): void {
    audit?.({
      time: new Date().toISOString(),
      requestId: request.id,
      decisionId: fields.decision?.decisionId ?? r.decisionId,
      event: 'approval',
      agentId: r.agentId,
      userId: r.userId,
      server: r.server,
      httpMethod: request.method,
      method: fields.method,
      rpcId: null,
      tool: r.tool,
      approvalId: r.id,
      approver: fields.approver,
      outcome: fields.outcome,
      reason: fields.reason,
      policies: [...(fields.decision?.policies ?? r.policies)],
      policyVersion: fields.decision?.policyVersion ?? r.policyVersion,
      status: fields.status,
      durationMs: 0
    })
  }

  app.decorateRequest('mcpApproval', null)

  // ---- agent side ------------------------------------------------------------------------

  // What a session's client declared at initialize: whether it takes URL elicitation.
  app.addHook('onSend', async (request, reply, payload) => {
    const m = request.mcp
    if (m === null || m.method !== 'initialize' || request.mcpTarget === null || reply.statusCode !== 200) return payload
    const sessionId = reply.getHeader('mcp-session-id')
    const elicitation = (m.params?.capabilities as { elicitation?: { url?: unknown } } | undefined)?.elicitation
    if (typeof sessionId !== 'string' || elicitation?.url === null || typeof elicitation?.url !== 'object') return payload
    const version = m.params?.protocolVersion
    await store.rememberClient(request.mcpTarget.server.name, sessionId, { urlElicitation: true, protocolVersion: typeof version === 'string' ? version.slice(0, 32) : '' }, config.limits.sessionTtlSeconds)
    return payload
  })

  const unsubscribe = store.onDecided((event) => {
    if (event.sessionId === null || !app.hasDecorator('mcpWarden') || app.mcpWarden.sessionStreams === undefined) return
    app.mcpWarden.sessionStreams.notify(event.server, event.sessionId, { jsonrpc: '2.0', method: 'notifications/elicitation/complete', params: { elicitationId: event.id } })
  })
  app.addHook('onClose', async () => { unsubscribe() })

  async function answerRequired (request: FastifyRequest, reply: FastifyReply, r: ApprovalRecord, decision: Decision): Promise<null> {
    const url = pageUrl(r.id)
    const advice = decision.advice.length > 0 ? decision.advice.join('; ') : decision.reason
    const text = `${advice}. A person must approve this exact call at ${url}; then retry it unchanged (until ${new Date(r.expiresAt).toISOString()}).`
    request.mcpApproval = { id: r.id, status: 'required', approver: null }
    request.mcpOutcome = { outcome: 'deny', reason: `approval required (approval ${r.id}): ${advice}` }
    const m = request.mcp!
    const elicitation = { mode: 'url', elicitationId: r.id, url, message: `Approval required: ${text}` }
    const version = envelopeVersion(m)
    let body: Record<string, unknown>
    if (version !== undefined && isModernVersion(version)) {
      // This era's URL elicitation has no elicitationId (and no completion notification): the
      // input request's key is the approval id, and the client retries once its handler is done.
      const { elicitationId: _id, ...params } = elicitation
      body = { jsonrpc: '2.0', id: m.id, result: { resultType: 'input_required', inputRequests: { [r.id]: { method: 'elicitation/create', params } }, requestState: r.id } }
    } else {
      const sessionId = request.headers['mcp-session-id']
      const client = typeof sessionId === 'string' ? await store.client(r.server, sessionId) : null
      body = client?.urlElicitation === true
        ? { jsonrpc: '2.0', id: m.id, error: { code: -32042, message: `URL elicitation required: ${text}`, data: { elicitations: [elicitation] } } }
        : { jsonrpc: '2.0', id: m.id, error: { code: -32003, message: `Approval required: ${text}`, data: { approvalId: r.id, approvalUrl: url, expiresAt: new Date(r.expiresAt).toISOString(), decisionId: decision.decisionId, policies: decision.policies } } }
    }
    await reply.code(200).type('application/json; charset=utf-8').send(JSON.stringify(body))
    return null
  }

  provide(app, 'approvals', {
    async settle (request, reply, r, decision) {
      const identity = r.identity
      const args = argumentsDigest(r.arguments)
      const binding = bindingOf({ issuer: identity.issuer, agentId: identity.agentId, userId: identity.userId ?? '', server: r.server.name, tool: r.tool ?? '', argumentsSha256: args.sha256, policyVersion: decision.policyVersion })
      const used = await store.consume(binding)
      if (used !== null) {
        const approver = used.approver?.userId ?? ''
        const ageSeconds = Math.max(0, Math.floor((Date.now() - (used.decidedAt ?? Date.now())) / 1000))
        request.mcpApproval = { id: used.id, status: 'used', approver }
        const approved = cedar.authorize({ ...r, approval: { granted: true, approver, ageSeconds } })
        if (approved.allowed && request.mcp !== null) request.mcp = withoutRetryState(request.mcp)
        return approved
      }
      let record = await store.byBinding(binding)
      if (record === null) {
        const window = cfg.rateLimit.timeWindowMs
        const asked = await store.countRequest(budgetKey(identity), window)
        if (asked > cfg.rateLimit.max) {
          const seconds = Math.ceil(window / 1000)
          void reply.header('retry-after', String(seconds))
          throw new ApprovalRateLimitError(String(cfg.rateLimit.max), `${seconds} s`, String(seconds))
        }
        const sessionId = request.headers['mcp-session-id']
        const now = Date.now()
        const fresh: ApprovalRecord = {
          id: newApprovalId(),
          status: 'pending',
          binding,
          agentId: identity.agentId,
          userId: identity.userId ?? '',
          department: identity.department ?? '',
          issuer: identity.issuer,
          requesterIds: idsOf(identity.claims as Record<string, unknown>, config).concat(sameId(identity.agentId)).filter((v, i, all) => v !== '' && all.indexOf(v) === i),
          server: r.server.name,
          tool: r.tool ?? '',
          arguments: args.text,
          argumentsSha256: args.sha256,
          policyVersion: decision.policyVersion,
          policies: decision.approval?.policies ?? decision.policies,
          approvers: decision.approval?.approvers ?? [],
          advice: decision.advice,
          sessionId: typeof sessionId === 'string' ? sessionId : null,
          decisionId: decision.decisionId,
          requestedAt: now,
          expiresAt: now + cfg.ttlSeconds * 1000,
          decidedAt: null,
          approver: null,
          reason: null
        }
        const created = await store.create(fresh)
        record = created.record
        if (created.created) {
          auditApproval(request, record, { method: 'approvals/request', outcome: 'deny', reason: 'a person\'s approval was asked for', approver: null, status: 200, decision })
          notify('approval.requested', record)
        }
      }
      return await answerRequired(request, reply, record, decision)
    }
  })

  // ---- approver side ---------------------------------------------------------------------

  const securePage = (reply: FastifyReply): FastifyReply => htmlPage(reply, PAGE_CSP)

  /** Verifies an approver token: the identity provider's signature, the approvals audience, and nothing an agent token carries. */
  const checkApproverToken = createPersonTokenCheck(config.identity, { audience: cfg.approverAudience, agentAudiences: agentAudiencesOf(publicUrl, config.upstreams.keys()), purpose: 'the approvals', role: 'an approver' })

  /** The approver of a request: a Bearer approver token, else the page session; null when neither. */
  async function approverOf (request: FastifyRequest): Promise<Approver | null> {
    const header = request.headers.authorization
    if (header !== undefined) {
      const token = bearerToken(header)
      if (token === undefined) throw new TokenInvalidError('the Authorization header is not "Bearer <token>"')
      const claims = await checkApproverToken(token)
      const id = identityFromClaims(claims, config.identity)
      const userId = id.userId ?? id.subject ?? id.agentId
      const identity = approverIdentity({ userId, roles: [...id.roles], department: id.department, issuer: id.issuer }, id.expiresAt)
      return { identity, ref: { userId, issuer: id.issuer, via: 'token' }, ids: idsOf(claims, config), nonce: null }
    }
    const s = signer.open<SessionValue>('session', readCookies(request.headers.cookie).get(SESSION_COOKIE))
    if (s === undefined || !Array.isArray(s.ids) || await store.sessionRevoked(s.nonce)) return null
    return { identity: approverIdentity(s, 0), ref: { userId: s.userId, issuer: s.issuer, via: s.via }, ids: s.ids, nonce: s.nonce }
  }

  /** Why this approver may not decide on this approval, or undefined when they may. */
  function refusalFor (a: Approver, r: ApprovalRecord): { reason: string, decision?: Decision } | undefined {
    if (r.userId !== '' && a.ids.includes(sameId(r.userId))) return { reason: 'You cannot approve a call made for your own user.' }
    const requester = (r.requesterIds ?? [r.agentId]).map(sameId)
    if (a.ids.some(id => requester.includes(id))) return { reason: 'You cannot approve a call made by your own agent identity.' }
    const server = upstreamOf(r.server)
    if (server === undefined) return { reason: `The server ${r.server} is no longer configured.` }
    const decision = cedar.engine.authorizeApproval({
      approver: a.identity,
      server,
      tool: r.tool,
      requester: { agentId: r.agentId, userId: r.userId, department: r.department },
      policies: r.policies
    })
    if (decision.allowed) return undefined
    return { reason: `You may not approve this call: ${decision.reason}.`, decision }
  }

  const wantsJson = (request: FastifyRequest): boolean => request.headers.authorization !== undefined || (request.headers.accept ?? '').includes('application/json')

  function sessionBits (a: Approver): { who: string, signOutCsrf: string } {
    return { who: a.ref.userId, signOutCsrf: a.nonce !== null ? signer.csrf(a.nonce, 'sign-out') : '' }
  }

  async function toSignIn (request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
    if (wantsJson(request)) return await reply.code(401).header('www-authenticate', 'Bearer').send({ error: 'unauthorized', message: `sign in: send an approver token (aud ${cfg.approverAudience}) as Bearer` })
    const next = request.url.split('?', 1)[0]!
    return await reply.redirect(`/approvals/sign-in?next=${encodeURIComponent(next)}`, 303)
  }

  /** A POST from a browser must come from the gateway's own pages. */
  function sameOrigin (request: FastifyRequest): boolean {
    const origin = request.headers.origin
    return origin === undefined || origin === new URL(publicUrl).origin
  }

  const safeNext = (next: unknown): string => typeof next === 'string' && /^\/approvals(\/[A-Za-z0-9_-]{0,64})?$/.test(next) ? next : '/approvals'

  await app.register(async function routes (scope) {
    await scope.register(formbody, { bodyLimit: 64 * 1024 })
    // Nothing an approval answer says is to be kept by a cache: JSON for the CLI included.
    scope.addHook('onSend', async (_request, reply, payload) => {
      void reply.header('cache-control', 'no-store')
      return payload
    })
    scope.setErrorHandler(async (error, request, reply) => {
      const status = (error as { statusCode?: number }).statusCode ?? 500
      if (status >= 500) request.log.error({ err: error }, 'approval page failed')
      const message = status >= 500 ? 'The gateway could not serve this page; try again.' : (error as Error).message
      if (wantsJson(request)) return await reply.code(status).send({ error: status === 401 ? 'unauthorized' : 'error', message })
      return await securePage(reply.code(status)).send(messagePage(status === 401 ? 'Sign-in refused' : 'Error', message))
    })

    scope.get('/approvals', async (request, reply) => {
      const a = await approverOf(request)
      if (a === null) return await toSignIn(request, reply)
      // Only what this approver may decide: the others' arguments are not theirs to read.
      const pending = (await store.pending()).filter(r => refusalFor(a, r) === undefined)
      if (wantsJson(request)) return await reply.send({ approvals: pending.map(r => approvalView(r, pageUrl(r.id), true)) })
      const bits = sessionBits(a)
      return await securePage(reply).send(listPage(pending, bits.who, bits.signOutCsrf))
    })

    scope.get('/approvals/sign-in', async (request, reply) => {
      const next = safeNext((request.query as { next?: unknown }).next)
      if ((request.query as { oidc?: unknown }).oidc === '1' && oidc !== undefined && cfg.signIn !== undefined) {
        const meta = await oidc.metadata()
        const signIn = newSignIn(next)
        void reply.header('set-cookie', cookie(SIGN_IN_COOKIE, signer.seal('sign-in', signIn, Math.floor(Date.now() / 1000) + SIGN_IN_SECONDS), { path: '/approvals', secure, maxAgeSeconds: SIGN_IN_SECONDS }))
        return await reply.redirect(authorizationUrl(meta, { clientId: cfg.signIn.clientId, redirectUri: callbackUrl, scopes: cfg.signIn.scopes, signIn }), 303)
      }
      const pre = randomToken()
      void reply.header('set-cookie', cookie(SIGN_IN_COOKIE, signer.seal('pre', pre, Math.floor(Date.now() / 1000) + SIGN_IN_SECONDS), { path: '/approvals', secure, maxAgeSeconds: SIGN_IN_SECONDS }))
      return await securePage(reply).send(signInPage({ next, oidc: oidc !== undefined, csrf: signer.csrf(pre, 'sign-in') }))
    })

    function startSession (reply: FastifyReply, v: Omit<SessionValue, 'nonce'>, exp: number): void {
      const until = Math.min(exp > 0 ? exp : Infinity, Math.floor(Date.now() / 1000) + SESSION_SECONDS)
      const value: SessionValue = { ...v, nonce: randomToken() }
      void reply.header('set-cookie', [
        cookie(SESSION_COOKIE, signer.seal('session', value, until), { path: '/approvals', secure, maxAgeSeconds: until - Math.floor(Date.now() / 1000) }),
        cookie(SIGN_IN_COOKIE, '', { path: '/approvals', secure, maxAgeSeconds: 0 })
      ])
    }

    scope.post('/approvals/sign-in', async (request, reply) => {
      const body = (request.body ?? {}) as { token?: unknown, csrf?: unknown, next?: unknown }
      const next = safeNext(body.next)
      const pre = signer.open<string>('pre', readCookies(request.headers.cookie).get(SIGN_IN_COOKIE))
      if (!sameOrigin(request) || pre === undefined || !signer.checkCsrf(pre, 'sign-in', body.csrf)) {
        return await securePage(reply.code(403)).send(messagePage('Sign-in refused', 'The sign-in form has expired or did not come from this gateway; open the sign-in page again.'))
      }
      let claims: Record<string, unknown>
      try {
        if (typeof body.token !== 'string' || body.token.length > 16_384) throw new TokenInvalidError('no token was given')
        claims = await checkApproverToken(body.token.trim())
      } catch (err) {
        const fresh = randomToken()
        void reply.header('set-cookie', cookie(SIGN_IN_COOKIE, signer.seal('pre', fresh, Math.floor(Date.now() / 1000) + SIGN_IN_SECONDS), { path: '/approvals', secure, maxAgeSeconds: SIGN_IN_SECONDS }))
        return await securePage(reply.code(401)).send(signInPage({ next, oidc: oidc !== undefined, csrf: signer.csrf(fresh, 'sign-in'), error: `Sign-in refused: ${(err as Error).message}` }))
      }
      const id = identityFromClaims(claims, config.identity)
      startSession(reply, { userId: id.userId ?? id.subject ?? id.agentId, ids: idsOf(claims, config), roles: [...id.roles], department: id.department, issuer: id.issuer, via: 'token' }, id.expiresAt)
      return await reply.redirect(next, 303)
    })

    scope.get('/approvals/callback', async (request, reply) => {
      const q = request.query as { code?: unknown, state?: unknown, error?: unknown }
      const signIn = signer.open<SignInState>('sign-in', readCookies(request.headers.cookie).get(SIGN_IN_COOKIE))
      if (oidc === undefined || cfg.signIn === undefined) return await securePage(reply.code(404)).send(messagePage('Not found', 'OIDC sign-in is not configured (approvals.signIn).'))
      if (signIn === undefined || typeof q.state !== 'string' || q.state !== signIn.state) {
        return await securePage(reply.code(400)).send(messagePage('Sign-in refused', 'This sign-in was not started here, or took too long; start again.'))
      }
      if (typeof q.code !== 'string') {
        return await securePage(reply.code(401)).send(messagePage('Sign-in refused', `The identity provider did not sign you in${typeof q.error === 'string' ? ` (${q.error.slice(0, 80)})` : ''}.`))
      }
      let claims: Record<string, unknown>
      try {
        claims = await oidc.redeem(q.code, callbackUrl, signIn)
      } catch (err) {
        request.log.warn({ error: (err as Error).message }, 'approver OIDC sign-in refused')
        return await securePage(reply.code(401)).send(messagePage('Sign-in refused', (err as Error).message))
      }
      const userClaim = claims[config.identity.claims.userId]
      if (userClaim !== undefined && typeof userClaim !== 'string') return await securePage(reply.code(401)).send(messagePage('Sign-in refused', `The ID token's ${config.identity.claims.userId} claim is not a string.`))
      const id = identityFromClaims(claims, { ...config.identity, issuer: cfg.signIn.issuer })
      startSession(reply, { userId: id.userId ?? id.subject ?? id.agentId, ids: idsOf(claims, config), roles: [...id.roles], department: id.department, issuer: id.issuer, via: 'oidc' }, id.expiresAt)
      return await reply.redirect(signIn.next, 303)
    })

    scope.post('/approvals/sign-out', async (request, reply) => {
      const a = await approverOf(request)
      const body = (request.body ?? {}) as { csrf?: unknown }
      if (a === null || a.nonce === null || !sameOrigin(request) || !signer.checkCsrf(a.nonce, 'sign-out', body.csrf)) {
        return await securePage(reply.code(403)).send(messagePage('Refused', 'This form did not come from this gateway.'))
      }
      // Signed out on every replica, for as long as the cookie could still be presented.
      await store.revokeSession(a.nonce, Date.now() + SESSION_SECONDS * 1000)
      void reply.header('set-cookie', cookie(SESSION_COOKIE, '', { path: '/approvals', secure, maxAgeSeconds: 0 }))
      return await reply.redirect('/approvals/sign-in', 303)
    })

    scope.get('/approvals/:id', async (request, reply) => {
      const a = await approverOf(request)
      if (a === null) return await toSignIn(request, reply)
      const id = (request.params as { id: string }).id
      const r = APPROVAL_ID.test(id) ? await store.get(id) : null
      if (r === null || r.status !== 'pending') {
        if (wantsJson(request)) return await reply.code(404).send({ error: 'not_found', message: NOT_FOUND })
        const bits = sessionBits(a)
        return await securePage(reply.code(404)).send(messagePage('No such approval', NOT_FOUND, bits.who, bits.signOutCsrf))
      }
      const refused = refusalFor(a, r)
      if (refused !== undefined) {
        auditApproval(request, r, { method: 'approvals/view', outcome: 'deny', reason: `approver ${a.ref.userId} refused: ${refused.reason}`, approver: a.ref.userId, status: 403, ...(refused.decision !== undefined ? { decision: refused.decision } : {}) })
        if (wantsJson(request)) return await reply.code(403).send({ error: 'forbidden', message: refused.reason })
        const bits = sessionBits(a)
        return await securePage(reply.code(403)).send(messagePage('Not yours to approve', refused.reason, bits.who, bits.signOutCsrf))
      }
      if (wantsJson(request)) return await reply.send({ approval: approvalView(r, pageUrl(r.id), true) })
      const bits = sessionBits(a)
      return await securePage(reply).send(approvalPage({ record: r, csrf: a.nonce !== null ? signer.csrf(a.nonce, r.id) : '', ...bits }))
    })

    scope.post('/approvals/:id', async (request, reply) => {
      const a = await approverOf(request)
      if (a === null) return await toSignIn(request, reply)
      const id = (request.params as { id: string }).id
      const body = (request.body ?? {}) as { decision?: unknown, reason?: unknown, csrf?: unknown }
      const json = wantsJson(request)
      const bits = sessionBits(a)
      // A page session acts only through its own forms (CSRF token of this approval, same origin).
      if (a.nonce !== null && (!sameOrigin(request) || !signer.checkCsrf(a.nonce, id, body.csrf))) {
        return await securePage(reply.code(403)).send(messagePage('Refused', 'This form did not come from this gateway\'s approval page; open the approval again.', bits.who, bits.signOutCsrf))
      }
      const verb = body.decision === 'approve' ? 'approved' : body.decision === 'deny' ? 'denied' : undefined
      if (verb === undefined) {
        if (json) return await reply.code(400).send({ error: 'bad_request', message: 'decision must be "approve" or "deny"' })
        return await securePage(reply.code(400)).send(messagePage('Nothing decided', 'Choose approve or deny.', bits.who, bits.signOutCsrf))
      }
      if (body.reason !== undefined && typeof body.reason !== 'string') {
        return await reply.code(400).send({ error: 'bad_request', message: 'reason must be text' })
      }
      const reason = typeof body.reason === 'string' && body.reason.trim() !== '' ? body.reason.trim().slice(0, 500) : null
      const r = APPROVAL_ID.test(id) ? await store.get(id) : null
      if (r === null || r.status !== 'pending') {
        if (json) return await reply.code(404).send({ error: 'not_found', message: NOT_FOUND })
        return await securePage(reply.code(404)).send(messagePage('No such approval', NOT_FOUND, bits.who, bits.signOutCsrf))
      }
      const refused = refusalFor(a, r)
      if (refused !== undefined) {
        auditApproval(request, r, { method: `approvals/${verb === 'approved' ? 'approve' : 'deny'}`, outcome: 'deny', reason: `approver ${a.ref.userId} refused: ${refused.reason}`, approver: a.ref.userId, status: 403, ...(refused.decision !== undefined ? { decision: refused.decision } : {}) })
        if (json) return await reply.code(403).send({ error: 'forbidden', message: refused.reason })
        return await securePage(reply.code(403)).send(messagePage('Not allowed', refused.reason, bits.who, bits.signOutCsrf))
      }
      const decided = await store.decide(id, verb, a.ref, reason)
      if (decided === null) {
        if (json) return await reply.code(404).send({ error: 'not_found', message: NOT_FOUND })
        return await securePage(reply.code(404)).send(messagePage('No such approval', NOT_FOUND, bits.who, bits.signOutCsrf))
      }
      auditApproval(request, decided, { method: `approvals/${verb === 'approved' ? 'approve' : 'deny'}`, outcome: verb === 'approved' ? 'allow' : 'deny', reason: `${verb} by ${a.ref.userId}${reason !== null ? `: ${reason}` : ''}`, approver: a.ref.userId, status: 200 })
      notify('approval.decided', decided)
      if (json) return await reply.send({ approval: approvalView(decided, pageUrl(decided.id), true) })
      return await securePage(reply).send(decidedPage(decided, bits.who, bits.signOutCsrf))
    })
  })
}

export default fp(approvals, {
  name: 'mcp-warden-approvals',
  fastify: '5.x',
  dependencies: ['mcp-warden-store', 'mcp-warden-cedar-authz', 'mcp-warden-identity']
})
export { approvals }
