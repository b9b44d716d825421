/**
 * console: the operator console (DESIGN §13) on the admin listener, off unless
 * `console.enabled`.
 *
 * People sign in with OIDC (authorization code + PKCE against `approvals.signIn`) or an operator
 * JWT of the identity provider whose `aud` is `console.audience`; the session is an HMAC-sealed
 * cookie. Every page and action is decided in Cedar (`view_console`, `operate_console`,
 * `approve_console` on `Mcp::Console`), so the token's roles (viewer, operator, approver in the
 * reference policies) decide what a person may do. Forms carry CSRF tokens bound to the session
 * and the action; POSTs from another origin are refused; every action is audited.
 *
 * Pages: the decision log (an index of the audit records in sql.js, rebuilt from the audit file
 * on start and, with Redis, shared by the replicas through the store's decision feed), one
 * decision, one agent's activity, quarantined tools (finding, diff, approve or keep), the calls
 * waiting for approval (linked to their approval pages), the policy playground and a live view
 * (server-sent events).
 */
import fp from 'fastify-plugin'
import formbody from '@fastify/formbody'
import { createHash } from 'node:crypto'
import type { AddressInfo } from 'node:net'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { GatewayConfig } from '../lib/config.js'
import type { GatewayTokens } from '../lib/tokens/gateway-tokens.js'
import { compilePolicySet, readPolicySource, CedarEngine, type AuthzRequest, type ConsoleRequest, type Decision } from '../lib/cedar/engine.js'
import { explainLines } from '../lib/cedar/explain.js'
import { ConfigError, TokenInvalidError } from '../lib/errors.js'
import { agentAudiencesOf, createPersonTokenCheck, identityFromClaims, type Identity } from '../lib/identity.js'
import { targetRequest } from '../lib/mcp-methods.js'
import { createSecretProvider } from '../lib/secrets.js'
import { createOidcClient, authorizationUrl, newSignIn, type SignInState } from '../lib/approvals/oidc.js'
import { CookieSigner, cookie, randomToken, readCookies } from '../lib/approvals/session.js'
import { htmlPage } from '../lib/approvals/page.js'
import { DecisionIndex, type DecisionQuery } from '../lib/console/decision-index.js'
import { definitionDiff } from '../lib/tools/diff.js'
import type { QuarantinedTool } from '../lib/tools/guard.js'
import { CONSOLE_CSS, LIVE_JS } from '../lib/console/assets.js'
import {
  agentPage, approvalsPage, decisionPage, decisionsPage, livePage, messagePage, playgroundPage, quarantinePage, signInPage,
  type PlaygroundForm, type PlaygroundResult, type PolicyShown, type Viewer
} from '../lib/console/pages.js'
import { provided, type AuditRecord } from './decorations.js'

export interface ConsoleOptions {
  config: GatewayConfig
  /** The gateway's signing keys: the console cookies' key is derived from them (replicas share them). */
  tokens: GatewayTokens
}

/** The Content-Security-Policy of every console page: its own style sheet and script, nothing else. */
export const CONSOLE_CSP = "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

export const CONSOLE_COOKIE = 'mcpw_console'
const CONSOLE_SIGN_IN_COOKIE = 'mcpw_console_sign_in'
const SESSION_SECONDS = 8 * 3600
const SIGN_IN_SECONDS = 600
const MAX_LIVE_CLIENTS = 64
/** Live views one person may hold open. */
const MAX_LIVE_PER_PERSON = 4
/** A live view whose reader has fallen this far behind is closed (its browser reconnects). */
const MAX_LIVE_BACKLOG = 1024 * 1024
/** How often an open live view checks that its session is still valid. */
const LIVE_CHECK_MS = 5000
/** Identities of agents seen recently (the playground's picker): roles and claims are not in audit records. */
const RECENT_AGENTS = 500

interface Session {
  userId: string
  roles: string[]
  department: string | null
  issuer: string
  via: 'oidc' | 'token'
  nonce: string
  /** When the session ends (seconds since the epoch): the cookie's own expiry, also for open live views. */
  exp: number
}

interface Person {
  readonly identity: Identity
  readonly session: Session
}

type LiveFilter = Partial<Record<'agent' | 'server' | 'tool' | 'outcome', string>>

function personIdentity (s: Session): Identity {
  return Object.freeze({
    agentId: s.userId,
    userId: s.userId,
    roles: s.roles,
    department: s.department,
    scopes: [],
    issuer: s.issuer,
    subjectIssuer: s.issuer,
    subject: s.userId,
    expiresAt: 0,
    delegated: false,
    actor: null,
    claims: {}
  })
}

/** An ISO 8601 date or date-time, as the search and the playground take them (no other formats Date would guess at). */
const ISO_TIME = /^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])(T([01]\d|2[0-3]):[0-5]\d(:[0-5]\d(\.\d{1,9})?)?(Z|[+-]([01]\d|2[0-3]):[0-5]\d)?)?$/

const text = (v: unknown, max = 512): string | undefined => typeof v === 'string' && v.trim() !== '' ? v.trim().slice(0, max) : undefined

function liveMatches (r: AuditRecord, f: LiveFilter): boolean {
  return (f.agent === undefined || r.agentId === f.agent) &&
    (f.server === undefined || r.server === f.server) &&
    (f.tool === undefined || r.tool === f.tool || r.uri === f.tool || r.prompt === f.tool) &&
    (f.outcome === undefined || r.outcome === f.outcome)
}

async function operatorConsole (app: FastifyInstance, opts: ConsoleOptions): Promise<void> {
  const { config } = opts
  if (!config.console.enabled) return
  const admin = provided(app, 'admin')
  if (admin === undefined) throw new ConfigError('console.enabled: the console is served on the admin listener: set admin.listen too')
  const cedar = app.mcpWarden.cedar
  const store = app.mcpWarden.store
  const keys = opts.tokens.keys
  const cfg = config.console

  // A policy set without the console's actions would refuse everyone: say so at boot.
  const probe = cedar.engine.authorizeConsole({ person: personIdentity({ userId: 'probe', roles: [], department: null, issuer: config.identity.issuer, via: 'token', nonce: '', exp: 0 }), action: 'view_console', page: 'probe' })
  if (probe.outcome === 'error') {
    throw new ConfigError(`console.enabled: the Cedar schema does not declare the console (${probe.errors.join('; ')}); add Mcp::Operator, Mcp::Console and the actions view_console, operate_console and approve_console as in cedar/schema.cedarschema`)
  }

  const signer = new CookieSigner(() => createHash('sha256').update('mcp-warden console\0').update(keys.current().privateKeyPem).digest())
  const signIn = config.approvals.signIn
  const oidcSecret = signIn?.clientSecret !== undefined ? createSecretProvider(signIn.clientSecret) : undefined
  const oidc = signIn !== undefined
    ? createOidcClient({
      issuer: signIn.issuer,
      clientId: signIn.clientId,
      ...(oidcSecret !== undefined ? { clientSecret: async () => await oidcSecret.get() } : {}),
      clockToleranceSeconds: config.identity.clockToleranceSeconds
    })
    : undefined

  /** The console's base URL as browsers reach it: console.url, else the admin listener's address. */
  function consoleBase (): string {
    if (cfg.url !== undefined) return cfg.url
    const a = admin!.server.address() as AddressInfo | null
    const host = a === null ? config.admin!.listen.host : a.family === 'IPv6' ? `[${a.address}]` : a.address
    return `http://${host}:${a?.port ?? config.admin!.listen.port}`
  }
  const secure = (): boolean => consoleBase().startsWith('https:')

  // ---- the decision index ------------------------------------------------------------------
  const index = await DecisionIndex.create({ maxRecords: cfg.maxRecords })
  const live = new Set<{ reply: FastifyReply, filter: LiveFilter, who: string }>()
  // Records are indexed in batches, one transaction each (every 100 ms, or at 256 waiting); a
  // page flushes what waits before it reads, so it always shows every decision made before it.
  let waiting: AuditRecord[] = []
  let flushTimer: NodeJS.Timeout | undefined
  const flush = (): void => {
    if (flushTimer !== undefined) { clearTimeout(flushTimer); flushTimer = undefined }
    const batch = waiting
    waiting = []
    index.addMany(batch)
  }
  const unsubscribe = store.decisions.subscribe((record) => {
    waiting.push(record)
    if (waiting.length >= 256) flush()
    else flushTimer ??= setTimeout(flush, 100)
    if (live.size === 0) return
    const line = `event: decision\ndata: ${JSON.stringify(record)}\n\n`
    for (const client of live) {
      if (!liveMatches(record, client.filter)) continue
      // A reader that does not keep up is let go rather than buffered for without end.
      if (client.reply.raw.writableLength > MAX_LIVE_BACKLOG) { client.reply.raw.destroy(); live.delete(client); continue }
      client.reply.raw.write(line)
    }
  })
  let stopAudit: (() => void) | undefined
  /** While the index is rebuilt from the audit file and the shared history: the pages say so. */
  let rebuilding: Promise<void> | undefined
  let closed = false
  app.addHook('onReady', async () => {
    // Every record this replica writes goes to the feed (with Redis: to every replica's console).
    if (app.hasPlugin('mcp-warden-audit')) stopAudit = app.mcpWarden.audit.onRecord((r) => { store.decisions.publish(r) })
    // In the background: however long the audit file is, the gateway serves at once.
    rebuilding = (async () => {
      if (config.audit.destination !== 'stdout') {
        const { loaded, skipped } = await index.loadFile(config.audit.destination)
        if (closed) return
        app.log.info({ loaded, skipped, file: config.audit.destination }, 'console index rebuilt from the audit file')
      }
      if (store.kind === 'redis') {
        const history = await store.decisions.history(cfg.maxRecords).catch(() => [])
        for (let i = 0; i < history.length; i += 500) index.addMany(history.slice(i, i + 500))
      }
    })().catch((err: unknown) => { app.log.error({ err }, 'the console index could not be rebuilt') })
      .finally(() => { rebuilding = undefined })
  })
  app.addHook('onClose', async () => {
    closed = true
    stopAudit?.()
    unsubscribe()
    if (flushTimer !== undefined) clearTimeout(flushTimer)
    for (const c of live) c.reply.raw.end()
    // A rebuild under way stops at its next line.
    index.close()
    await rebuilding
  })

  // Agents' identities as last seen, for the playground (roles are not in the audit records).
  const recent = new Map<string, Identity>()
  app.addHook('onResponse', async (request) => {
    const id = request.identity
    if (id == null || id.delegated) return
    // Newest last: the oldest goes first when the map is full.
    recent.delete(id.agentId)
    recent.set(id.agentId, id)
    if (recent.size > RECENT_AGENTS) recent.delete(recent.keys().next().value!)
  })

  // ---- people --------------------------------------------------------------------------------
  const checkOperatorToken = createPersonTokenCheck(config.identity, { audience: cfg.audience, agentAudiences: agentAudiencesOf(config.publicUrl, config.upstreams.keys()), purpose: 'the console', role: 'an operator' })

  async function personOf (request: FastifyRequest): Promise<Person | null> {
    const s = signer.open<Session>('console-session', readCookies(request.headers.cookie).get(CONSOLE_COOKIE))
    if (s === undefined || !Array.isArray(s.roles) || typeof s.nonce !== 'string' || await store.approvals.sessionRevoked(s.nonce)) return null
    return { identity: personIdentity(s), session: s }
  }

  function decide (p: Person, action: ConsoleRequest['action'], page: string): Decision {
    return cedar.engine.authorizeConsole({ person: p.identity, action, page })
  }

  function viewerOf (p: Person): Viewer {
    return {
      who: p.session.userId,
      roles: p.session.roles,
      signOutCsrf: signer.csrf(p.session.nonce, 'sign-out'),
      may: { operate: decide(p, 'operate_console', 'nav').allowed, approve: decide(p, 'approve_console', 'nav').allowed }
    }
  }

  /** An audit record of the console (`event: console`); `who` is the person, null when nobody is signed in. */
  function audit (request: FastifyRequest, who: Person | string | null, method: string, fields: { outcome: 'allow' | 'deny' | 'error', reason: string, decision?: Decision, server?: string, tool?: string, status: number }): void {
    if (!app.hasPlugin('mcp-warden-audit')) return
    const userId = who === null ? null : typeof who === 'string' ? who : who.session.userId
    app.mcpWarden.audit.write({
      time: new Date().toISOString(),
      requestId: request.id,
      decisionId: fields.decision?.decisionId ?? null,
      agentId: null,
      userId,
      server: fields.server ?? null,
      httpMethod: request.method,
      method,
      rpcId: null,
      ...(fields.tool !== undefined ? { tool: fields.tool } : {}),
      event: 'console',
      ...(userId !== null ? { operator: userId } : {}),
      outcome: fields.outcome,
      reason: fields.reason,
      policies: [...fields.decision?.policies ?? []],
      policyVersion: fields.decision?.policyVersion ?? cedar.version,
      status: fields.status,
      durationMs: 0
    })
  }

  const page = (reply: FastifyReply): FastifyReply => htmlPage(reply, CONSOLE_CSP)

  /** A POST from a browser must come from the console's own pages. */
  function sameOrigin (request: FastifyRequest): boolean {
    const origin = request.headers.origin
    if (origin === undefined) return true
    const own = cfg.url ?? `${secure() ? 'https' : 'http'}://${request.headers.host ?? ''}`
    return origin === own
  }

  /** Starts a session for the person the claims name; returns their user id. */
  function startSession (reply: FastifyReply, claims: Record<string, unknown>, issuer: string, via: Session['via']): string {
    const id = identityFromClaims(claims, { ...config.identity, issuer })
    const now = Math.floor(Date.now() / 1000)
    const until = Math.min(id.expiresAt > 0 ? id.expiresAt : Infinity, now + SESSION_SECONDS)
    const value: Session = { userId: id.userId ?? id.subject ?? id.agentId, roles: [...id.roles], department: id.department, issuer: id.issuer, via, nonce: randomToken(), exp: until }
    void reply.header('set-cookie', [
      cookie(CONSOLE_COOKIE, signer.seal('console-session', value, until), { path: '/console', secure: secure(), maxAgeSeconds: until - now }),
      cookie(CONSOLE_SIGN_IN_COOKIE, '', { path: '/console', secure: secure(), maxAgeSeconds: 0 })
    ])
    return value.userId
  }

  function freshSignIn (reply: FastifyReply, error?: string): string {
    const pre = randomToken()
    void reply.header('set-cookie', cookie(CONSOLE_SIGN_IN_COOKIE, signer.seal('console-pre', pre, Math.floor(Date.now() / 1000) + SIGN_IN_SECONDS), { path: '/console', secure: secure(), maxAgeSeconds: SIGN_IN_SECONDS }))
    return signInPage({ oidc: oidc !== undefined, csrf: signer.csrf(pre, 'console-sign-in'), audience: cfg.audience, ...(error !== undefined ? { error } : {}) })
  }

  // ---- the playground ------------------------------------------------------------------------
  function playground (form: PlaygroundForm): PlaygroundResult[] {
    let identity: Identity
    try {
      const seen = form.agent !== '' ? recent.get(form.agent) : undefined
      if (seen !== undefined) identity = seen
      else {
        if (form.claims.trim() === '') return [{ title: 'Nothing decided', lines: [], error: 'Pick an agent seen recently or type its token claims as JSON, e.g. {"sub": "ops-bot", "roles": ["developer"]}.' }]
        const claims = JSON.parse(form.claims) as unknown
        if (claims === null || typeof claims !== 'object' || Array.isArray(claims)) throw new Error('the claims must be a JSON object')
        identity = identityFromClaims({ iss: config.identity.issuer, ...claims as Record<string, unknown> }, config.identity)
      }
    } catch (err) {
      return [{ title: 'Nothing decided', lines: [], error: `The agent's claims are not usable: ${(err as Error).message}` }]
    }
    const server = config.upstreams.get(form.server)
    if (server === undefined) return [{ title: 'Nothing decided', lines: [], error: `No upstream is named ${form.server}.` }]
    let args: Record<string, unknown> | undefined
    if (form.args.trim() !== '') {
      try {
        const parsed = JSON.parse(form.args) as unknown
        if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new Error('not an object')
        args = parsed as Record<string, unknown>
      } catch {
        return [{ title: 'Nothing decided', lines: [], error: 'The arguments must be a JSON object, e.g. {"query": "select 1"}.' }]
      }
    }
    const now = form.at.trim() !== '' ? new Date(form.at.trim()) : new Date()
    if (Number.isNaN(now.getTime()) || (form.at.trim() !== '' && !ISO_TIME.test(form.at.trim()))) return [{ title: 'Nothing decided', lines: [], error: 'At must be an ISO date-time, e.g. 2026-11-26T10:00:00+09:00.' }]
    const target = form.tool !== '' ? targetRequest('tool', form.tool) : { action: 'connect' as const, method: 'tools/list' }
    const request: AuthzRequest = { identity, server, now, ...target, ...(args !== undefined ? { arguments: args } : {}) }
    const engine = cedar.engine
    const decision = engine.authorize(request)
    const results: PlaygroundResult[] = [{ title: 'Live policy set', outcome: decision.outcome, lines: explainLines(engine, request, decision) }]
    if (form.policies.trim() !== '') {
      try {
        const schemaText = readPolicySource(config.authorization.schema, config.authorization.policies).schemaText
        const edited = new CedarEngine(compilePolicySet({ schemaText, files: [{ file: 'edited.cedar', text: form.policies }] }, { preparse: false }), engine.timezone, { cache: false })
        const d = edited.authorize(request)
        results.push({ title: 'Edited policy text (not saved)', outcome: d.outcome, lines: explainLines(edited, request, d) })
      } catch (err) {
        results.push({ title: 'Edited policy text (not saved)', lines: [], error: `The edited text does not validate against the schema: ${(err as Error).message}` })
      }
    }
    return results
  }

  // ---- routes --------------------------------------------------------------------------------
  void admin.register(async function routes (scope) {
    await scope.register(formbody, { bodyLimit: 256 * 1024 })
    // Every answer under /console, pages or not: never sniffed, framed or cached.
    scope.addHook('onSend', async (_request, reply, payload) => {
      if (!reply.hasHeader('content-security-policy')) void reply.header('content-security-policy', CONSOLE_CSP)
      void reply.header('x-content-type-options', 'nosniff').header('x-frame-options', 'DENY')
      if (!reply.hasHeader('cache-control')) void reply.header('cache-control', 'no-store')
      return payload
    })
    scope.setErrorHandler(async (error, request, reply) => {
      const status = (error as { statusCode?: number }).statusCode ?? 500
      if (status >= 500) request.log.error({ err: error }, 'console page failed')
      return await page(reply.code(status)).send(messagePage(status === 401 ? 'Sign-in refused' : 'Error', status >= 500 ? 'The console could not serve this page; try again.' : (error as Error).message))
    })

    scope.get('/assets/console.css', async (_request, reply) => await reply.type('text/css; charset=utf-8').header('cache-control', 'max-age=300').header('x-content-type-options', 'nosniff').send(CONSOLE_CSS))
    scope.get('/assets/live.js', async (_request, reply) => await reply.type('text/javascript; charset=utf-8').header('cache-control', 'max-age=300').header('x-content-type-options', 'nosniff').send(LIVE_JS))

    /** The signed-in person allowed `action` on `pageName`, else the answer sent (sign-in or 403). */
    async function gate (request: FastifyRequest, reply: FastifyReply, action: ConsoleRequest['action'], pageName: string): Promise<{ person: Person, viewer: Viewer } | null> {
      const person = await personOf(request)
      if (person === null) {
        await reply.redirect('/console/sign-in', 303)
        return null
      }
      const decision = decide(person, action, pageName)
      if (!decision.allowed) {
        await page(reply.code(403)).send(messagePage('Not allowed', `Your roles (${person.session.roles.join(', ') || 'none'}) do not open this page: ${decision.reason}.`, action === 'view_console' ? undefined : viewerOf(person)))
        return null
      }
      return { person, viewer: viewerOf(person) }
    }

    /** For a POST: the person, allowed, with this form's CSRF token, from the console's origin. */
    async function gatePost (request: FastifyRequest, reply: FastifyReply, action: ConsoleRequest['action'], pageName: string, csrfTarget: string): Promise<{ person: Person, viewer: Viewer } | null> {
      const person = await personOf(request)
      const body = (request.body ?? {}) as { csrf?: unknown }
      if (person === null || !sameOrigin(request) || !signer.checkCsrf(person.session.nonce, csrfTarget, body.csrf)) {
        await page(reply.code(403)).send(messagePage('Refused', 'This form did not come from this console, or your session ended; open the page again.'))
        return null
      }
      const decision = decide(person, action, pageName)
      if (!decision.allowed) {
        audit(request, person, `console/${pageName}`, { outcome: 'deny', reason: `refused: ${decision.reason}`, decision, status: 403 })
        await page(reply.code(403)).send(messagePage('Not allowed', `Your roles (${person.session.roles.join(', ') || 'none'}) do not allow this: ${decision.reason}.`, viewerOf(person)))
        return null
      }
      return { person, viewer: viewerOf(person) }
    }

    scope.get('/', async (_request, reply) => await reply.redirect('/console/decisions', 303))

    scope.get('/sign-in', async (request, reply) => {
      if ((request.query as { oidc?: unknown }).oidc === '1' && oidc !== undefined && signIn !== undefined) {
        const meta = await oidc.metadata()
        const state = newSignIn('/console/decisions')
        void reply.header('set-cookie', cookie(CONSOLE_SIGN_IN_COOKIE, signer.seal('console-oidc', state, Math.floor(Date.now() / 1000) + SIGN_IN_SECONDS), { path: '/console', secure: secure(), maxAgeSeconds: SIGN_IN_SECONDS }))
        return await reply.redirect(authorizationUrl(meta, { clientId: signIn.clientId, redirectUri: `${consoleBase()}/console/callback`, scopes: signIn.scopes, signIn: state }), 303)
      }
      return await page(reply).send(freshSignIn(reply))
    })

    scope.post('/sign-in', async (request, reply) => {
      const body = (request.body ?? {}) as { token?: unknown, csrf?: unknown }
      const pre = signer.open<string>('console-pre', readCookies(request.headers.cookie).get(CONSOLE_SIGN_IN_COOKIE))
      if (!sameOrigin(request) || pre === undefined || !signer.checkCsrf(pre, 'console-sign-in', body.csrf)) {
        audit(request, null, 'console/sign-in', { outcome: 'deny', reason: 'sign-in form without its CSRF token or from another origin', status: 403 })
        return await page(reply.code(403)).send(messagePage('Sign-in refused', 'The sign-in form has expired or did not come from this console; open the sign-in page again.'))
      }
      let claims: Record<string, unknown>
      try {
        if (typeof body.token !== 'string' || body.token.trim() === '') throw new TokenInvalidError('no token was given')
        if (body.token.length > 16_384) throw new TokenInvalidError('the token is longer than 16 KiB')
        claims = await checkOperatorToken(body.token.trim())
      } catch (err) {
        audit(request, null, 'console/sign-in', { outcome: 'deny', reason: `operator token refused: ${(err as Error).message}`, status: 401 })
        return await page(reply.code(401)).send(freshSignIn(reply, `Sign-in refused: ${(err as Error).message}`))
      }
      const who = startSession(reply, claims, config.identity.issuer, 'token')
      audit(request, who, 'console/sign-in', { outcome: 'allow', reason: `${who} signed in with an operator token`, status: 303 })
      return await reply.redirect('/console/decisions', 303)
    })

    scope.get('/callback', async (request, reply) => {
      const q = request.query as { code?: unknown, state?: unknown, error?: unknown }
      const state = signer.open<SignInState>('console-oidc', readCookies(request.headers.cookie).get(CONSOLE_SIGN_IN_COOKIE))
      if (oidc === undefined || signIn === undefined) return await page(reply.code(404)).send(messagePage('Not found', 'OIDC sign-in is not configured (approvals.signIn).'))
      if (state === undefined || typeof q.state !== 'string' || q.state !== state.state) {
        return await page(reply.code(400)).send(messagePage('Sign-in refused', 'This sign-in was not started here, or took too long; start again.'))
      }
      if (typeof q.code !== 'string') return await page(reply.code(401)).send(messagePage('Sign-in refused', `The identity provider did not sign you in${typeof q.error === 'string' ? ` (${q.error.slice(0, 80)})` : ''}.`))
      let claims: Record<string, unknown>
      try {
        claims = await oidc.redeem(q.code, `${consoleBase()}/console/callback`, state)
      } catch (err) {
        request.log.warn({ error: (err as Error).message }, 'console OIDC sign-in refused')
        audit(request, null, 'console/sign-in', { outcome: 'deny', reason: `OIDC sign-in refused: ${(err as Error).message}`, status: 401 })
        return await page(reply.code(401)).send(messagePage('Sign-in refused', (err as Error).message))
      }
      const userClaim = claims[config.identity.claims.userId]
      if (userClaim !== undefined && typeof userClaim !== 'string') return await page(reply.code(401)).send(messagePage('Sign-in refused', `The ID token's ${config.identity.claims.userId} claim is not a string.`))
      const who = startSession(reply, claims, signIn.issuer, 'oidc')
      audit(request, who, 'console/sign-in', { outcome: 'allow', reason: `${who} signed in with OIDC`, status: 303 })
      return await reply.redirect('/console/decisions', 303)
    })

    scope.post('/sign-out', async (request, reply) => {
      const person = await personOf(request)
      const body = (request.body ?? {}) as { csrf?: unknown }
      if (person === null || !sameOrigin(request) || !signer.checkCsrf(person.session.nonce, 'sign-out', body.csrf)) {
        return await page(reply.code(403)).send(messagePage('Refused', 'This form did not come from this console.'))
      }
      // Signed out on every replica, for as long as the cookie could still be presented.
      await store.approvals.revokeSession(person.session.nonce, Date.now() + SESSION_SECONDS * 1000)
      audit(request, person, 'console/sign-out', { outcome: 'allow', reason: `${person.session.userId} signed out`, status: 303 })
      void reply.header('set-cookie', cookie(CONSOLE_COOKIE, '', { path: '/console', secure: secure(), maxAgeSeconds: 0 }))
      return await reply.redirect('/console/sign-in', 303)
    })

    scope.get('/decisions', async (request, reply) => {
      const g = await gate(request, reply, 'view_console', 'decisions')
      if (g === null) return reply
      const raw = request.query as Record<string, unknown>
      const q: DecisionQuery = {}
      for (const k of ['agent', 'user', 'server', 'tool', 'from', 'to', 'id', 'cursor'] as const) {
        const v = text(raw[k])
        if (v !== undefined) q[k] = v
      }
      const outcome = text(raw.outcome)
      if (outcome === 'allow' || outcome === 'deny' || outcome === 'error') q.outcome = outcome
      else if (outcome !== undefined) return await page(reply.code(400)).send(messagePage('Bad search', 'outcome: must be allow, deny or error.', g.viewer))
      for (const k of ['from', 'to'] as const) {
        if (q[k] !== undefined && !ISO_TIME.test(q[k])) return await page(reply.code(400)).send(messagePage('Bad search', `${k}: not an ISO time (like 2026-11-26T10:00:00Z or 2026-11-26).`, g.viewer))
      }
      flush()
      const found = index.search({ ...q, limit: 50 })
      return await page(reply).send(decisionsPage(g.viewer, q, found.rows, found.next, index.size, rebuilding !== undefined))
    })

    scope.get('/decisions/:id', async (request, reply) => {
      const g = await gate(request, reply, 'view_console', 'decision')
      if (g === null) return reply
      flush()
      const record = index.get((request.params as { id: string }).id.slice(0, 200))
      if (record === undefined) return await page(reply.code(404)).send(messagePage('No such decision', 'The index holds no decision or request with this id (it keeps the newest records only).', g.viewer))
      const set = cedar.engine.policySet
      const shown: PolicyShown[] = (record.policies ?? []).map(id => ({ id, ...(set.texts.has(id) ? { text: set.texts.get(id)! } : {}), ...(set.advice.has(id) ? { advice: set.advice.get(id)! } : {}) }))
      return await page(reply).send(decisionPage(g.viewer, record, shown, record.policyVersion === null || record.policyVersion === set.version))
    })

    scope.get('/agents/:agent', async (request, reply) => {
      const g = await gate(request, reply, 'view_console', 'agent')
      if (g === null) return reply
      const raw = request.query as Record<string, unknown>
      flush()
      const summary = index.agentSummary((request.params as { agent: string }).agent.slice(0, 512), {
        ...(text(raw.from) !== undefined ? { from: text(raw.from)! } : {}),
        ...(text(raw.to) !== undefined ? { to: text(raw.to)! } : {})
      })
      return await page(reply).send(agentPage(g.viewer, summary))
    })

    async function showQuarantine (reply: FastifyReply, g: { person: Person, viewer: Viewer }, done?: string): Promise<FastifyReply> {
      const tools = provided(app, 'toolGuard') !== undefined ? await app.mcpWarden.toolGuard.quarantined() : []
      const diffs = new Map<QuarantinedTool, ReadonlyArray<{ op: string, text: string }>>()
      for (const t of tools) if (t.pinned !== undefined) diffs.set(t, definitionDiff(t.pinned, t.definition))
      return await page(reply).send(quarantinePage(g.viewer, tools, diffs, t => signer.csrf(g.person.session.nonce, `quarantine\0${t.server}/${t.tool}`), done))
    }

    scope.get('/quarantine', async (request, reply) => {
      const g = await gate(request, reply, 'view_console', 'quarantine')
      if (g === null) return reply
      return await showQuarantine(reply, g)
    })

    scope.post('/quarantine', async (request, reply) => {
      const body = (request.body ?? {}) as Record<string, unknown>
      const server = text(body.server, 256) ?? ''
      const tool = text(body.tool, 512) ?? ''
      const action = body.action === 'keep' ? 'quarantine-keep' : 'quarantine-approve'
      const g = await gatePost(request, reply, 'operate_console', action, `quarantine\0${server}/${tool}`)
      if (g === null) return reply
      const hash = text(body.hash, 128) ?? ''
      const note = text(body.note, 300)
      const allowed = decide(g.person, 'operate_console', action)
      if (body.action === 'keep') {
        const held = (await app.mcpWarden.toolGuard.quarantined()).some(q => q.server === server && q.tool === tool && q.hash === hash)
        if (!held) {
          audit(request, g.person, 'console/quarantine-keep', { outcome: 'error', reason: `nothing kept: ${server}/${tool} does not hold definition ${hash.slice(0, 12)} any more`, decision: allowed, server, tool, status: 409 })
          reply.code(409)
          return await showQuarantine(reply, g, `${server}/${tool} is not held with the definition you saw any more (approved or changed meanwhile): nothing was kept.`)
        }
        audit(request, g.person, 'console/quarantine-keep', { outcome: 'deny', reason: `kept quarantined by ${g.person.session.userId}${note !== undefined ? `: ${note}` : ''}`, decision: allowed, server, tool, status: 200 })
        return await showQuarantine(reply, g, `${server}/${tool} stays quarantined.`)
      }
      if (body.action !== 'approve') return await page(reply.code(400)).send(messagePage('Nothing decided', 'Choose approve or keep quarantined.', g.viewer))
      const result = await app.mcpWarden.toolGuard.approveQuarantined(server, tool, hash, g.person.session.userId)
      audit(request, g.person, 'console/quarantine-approve', {
        outcome: result.ok ? 'allow' : 'error',
        reason: result.ok ? `definition ${hash.slice(0, 12)} approved by ${g.person.session.userId}${note !== undefined ? `: ${note}` : ''}` : result.message,
        decision: allowed,
        server,
        tool,
        status: result.ok ? 200 : 409
      })
      if (!result.ok) reply.code(409)
      return await showQuarantine(reply, g, result.message)
    })

    scope.get('/approvals', async (request, reply) => {
      const g = await gate(request, reply, 'approve_console', 'approvals')
      if (g === null) return reply
      const pending = await store.approvals.pending(200)
      return await page(reply).send(approvalsPage(g.viewer, pending, id => `${config.publicUrl}/approvals/${encodeURIComponent(id)}`))
    })

    const emptyForm: PlaygroundForm = { agent: '', claims: '', server: [...config.upstreams.keys()][0] ?? '', tool: '', args: '', at: '', policies: '' }
    function playgroundView (g: { person: Person, viewer: Viewer }, form: PlaygroundForm, results: PlaygroundResult[], notice?: string): string {
      const agents = [...recent.values()].reverse().slice(0, 100)
        .map(id => ({ agentId: id.agentId, label: `${id.agentId}${id.userId !== null ? ` for ${id.userId}` : ''} [${id.roles.join(', ')}]` }))
      return playgroundPage(g.viewer, {
        form,
        agents,
        servers: [...config.upstreams.keys()],
        csrf: signer.csrf(g.person.session.nonce, 'playground'),
        reloadCsrf: signer.csrf(g.person.session.nonce, 'reload'),
        results,
        liveVersion: cedar.version,
        ...(notice !== undefined ? { notice } : {})
      })
    }

    scope.get('/playground', async (request, reply) => {
      const g = await gate(request, reply, 'view_console', 'playground')
      if (g === null) return reply
      const raw = request.query as Record<string, unknown>
      let form = emptyForm
      if (raw.edit === '1') {
        const source = readPolicySource(config.authorization.schema, config.authorization.policies)
        form = { ...form, policies: source.files.map(f => `// ${f.file.split('/').pop() ?? ''}\n${f.text.trim()}\n`).join('\n') }
      }
      return await page(reply).send(playgroundView(g, form, []))
    })

    scope.post('/playground', async (request, reply) => {
      const g = await gatePost(request, reply, 'view_console', 'playground', 'playground')
      if (g === null) return reply
      const body = (request.body ?? {}) as Record<string, unknown>
      const field = (k: string, max: number): string => typeof body[k] === 'string' ? (body[k] as string).slice(0, max) : ''
      const form: PlaygroundForm = { agent: field('agent', 512), claims: field('claims', 16_384), server: field('server', 256), tool: field('tool', 512), args: field('args', 65_536), at: field('at', 64), policies: field('policies', 200_000) }
      return await page(reply).send(playgroundView(g, form, playground(form)))
    })

    scope.post('/policies/reload', async (request, reply) => {
      const g = await gatePost(request, reply, 'operate_console', 'policies-reload', 'reload')
      if (g === null) return reply
      const result = await cedar.reload()
      const decision = decide(g.person, 'operate_console', 'policies-reload')
      audit(request, g.person, 'console/policies-reload', { outcome: result.ok ? 'allow' : 'error', reason: result.ok ? `policies reloaded by ${g.person.session.userId}: version ${result.version}` : `reload failed: ${result.error}`, decision, status: result.ok ? 200 : 422 })
      if (!result.ok) reply.code(422)
      return await page(reply).send(playgroundView(g, emptyForm, [], result.ok ? `Policies reloaded: version ${result.version}.` : `The policies on disk do not load (${result.error}); version ${result.version} stays live.`))
    })

    scope.get('/live', async (request, reply) => {
      const g = await gate(request, reply, 'view_console', 'live')
      if (g === null) return reply
      const raw = request.query as Record<string, unknown>
      const q: LiveFilter = {}
      for (const k of ['agent', 'server', 'tool', 'outcome'] as const) {
        const v = text(raw[k])
        if (v !== undefined) q[k] = v
      }
      return await page(reply).send(livePage(g.viewer, q))
    })

    scope.get('/live/events', async (request, reply) => {
      const person = await personOf(request)
      if (person === null || !decide(person, 'view_console', 'live').allowed) return await reply.code(403).type('text/plain').send('sign in to the console first')
      if (live.size >= MAX_LIVE_CLIENTS) return await reply.code(503).header('retry-after', '10').type('text/plain').send('too many live views are open')
      const who = `${person.session.issuer}\0${person.session.userId}`
      if ([...live].filter(c => c.who === who).length >= MAX_LIVE_PER_PERSON) return await reply.code(429).header('retry-after', '10').type('text/plain').send(`at most ${MAX_LIVE_PER_PERSON} live views per person are open at once`)
      const raw = request.query as Record<string, unknown>
      const filter: LiveFilter = {}
      for (const k of ['agent', 'server', 'tool', 'outcome'] as const) {
        const v = text(raw[k])
        if (v !== undefined) filter[k] = v
      }
      reply.hijack()
      reply.raw.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', 'x-content-type-options': 'nosniff', 'content-security-policy': CONSOLE_CSP, connection: 'keep-alive' })
      reply.raw.write(': live decisions\n\n')
      const client = { reply, filter, who }
      live.add(client)
      // The stream lasts only as long as the session: signed out (on any replica) or expired, it ends.
      let beats = 0
      const check = setInterval(() => {
        void (async () => {
          const ended = person.session.exp * 1000 <= Date.now() || await store.approvals.sessionRevoked(person.session.nonce).catch(() => true)
          if (ended) { reply.raw.end(); live.delete(client); return }
          if (++beats % 3 === 0) reply.raw.write(': keep-alive\n\n')
        })()
      }, LIVE_CHECK_MS)
      request.raw.on('close', () => { clearInterval(check); live.delete(client) })
    })
  }, { prefix: '/console' })
}

export default fp(operatorConsole, {
  name: 'mcp-warden-console',
  fastify: '5.x',
  dependencies: ['mcp-warden-store', 'mcp-warden-cedar-authz']
})
export { operatorConsole }
