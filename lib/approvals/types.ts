/**
 * Approvals (DESIGN §11): a person's yes or no to one exact call, waiting in the gateway store.
 *
 * An approval is bound to the call (agent, user, server, tool, SHA-256 of the canonical
 * arguments, policy version): its `binding`. While it waits (`pending`), the same call gets the
 * same approval back; once `approved`, the identical call runs once (`consumed`); `denied`,
 * consumed or expired, the next identical call asks anew.
 */
export type ApprovalStatus = 'pending' | 'approved' | 'denied' | 'consumed'

export interface ApproverRef {
  /** The approver's user id (their token's userId claim, else sub). */
  readonly userId: string
  readonly issuer: string
  /** How they signed in. */
  readonly via: 'oidc' | 'token'
}

export interface ApprovalRecord {
  /** 128 random bits, base64url: the page's address and the elicitation id. */
  readonly id: string
  readonly status: ApprovalStatus
  /** Digest of what the approval is bound to (bindingOf). */
  readonly binding: string
  readonly agentId: string
  readonly userId: string
  readonly department: string
  /** The agent token's issuer. */
  readonly issuer: string
  /** Every id the agent's token named (user id, sub, agent id; see sameId): none of them may approve it. */
  readonly requesterIds?: readonly string[]
  readonly server: string
  readonly tool: string
  /** The call's arguments as JSON text (what the page shows; attacker controlled, escaped there). */
  readonly arguments: string
  readonly argumentsSha256: string
  readonly policyVersion: string
  /** The @approval policies that asked, their @approval texts and advice. */
  readonly policies: readonly string[]
  readonly approvers: readonly string[]
  readonly advice: readonly string[]
  /** The agent's MCP session on that server, where it had one (for notifications/elicitation/complete). */
  readonly sessionId: string | null
  readonly decisionId: string
  /** Milliseconds since the epoch. */
  readonly requestedAt: number
  readonly expiresAt: number
  readonly decidedAt: number | null
  readonly approver: ApproverRef | null
  readonly reason: string | null
}

/** A decision an approver made, as every replica hears of it. */
export interface ApprovalEvent {
  readonly id: string
  readonly status: 'approved' | 'denied'
  readonly server: string
  readonly sessionId: string | null
}

export interface ApprovalStore {
  /**
   * Records a new pending approval, unless one is pending or approved for the same binding:
   * then that one is returned (`created: false`) and nothing is written.
   */
  create (record: ApprovalRecord): Promise<{ record: ApprovalRecord, created: boolean }>
  /** The live (pending or approved, unexpired) approval of a binding, or null. */
  byBinding (binding: string): Promise<ApprovalRecord | null>
  /** An approval by id, whatever its status, while it is kept (until it expires), or null. */
  get (id: string): Promise<ApprovalRecord | null>
  /**
   * Approves or denies a pending, unexpired approval; null when it is not (any more) pending.
   * Two approvers at once: one wins, the other gets null.
   */
  decide (id: string, status: 'approved' | 'denied', approver: ApproverRef, reason: string | null, now?: number): Promise<ApprovalRecord | null>
  /** Uses an approved, unexpired approval of this binding once; null when there is none. Atomic across replicas. */
  consume (binding: string, now?: number): Promise<ApprovalRecord | null>
  /** Pending, unexpired approvals, oldest first (at most `limit`). */
  pending (limit?: number): Promise<ApprovalRecord[]>
  /** Counts one approval request of `key` in the current window; returns the count so far. */
  countRequest (key: string, windowMs: number): Promise<number>
  /** Remembers what an agent's session declared at initialize (URL elicitation), for the session's life. */
  rememberClient (server: string, sessionId: string, client: ClientTraits, ttlSeconds: number): Promise<void>
  /** What the session declared, or null when it is not known. */
  client (server: string, sessionId: string): Promise<ClientTraits | null>
  /** Ends an approver's page session before its cookie expires (sign-out): refused on every replica until `until` (ms). */
  revokeSession (nonce: string, until: number): Promise<void>
  /** Whether a page session was signed out. */
  sessionRevoked (nonce: string): Promise<boolean>
  /** Calls `listener` on every approve/deny, on this replica or another; returns an unsubscribe. */
  onDecided (listener: (event: ApprovalEvent) => void): () => void
  close (): Promise<void>
}

/** What a session's client declared at initialize that changes how it is asked for approval. */
export interface ClientTraits {
  /** `capabilities.elicitation.url` was declared. */
  readonly urlElicitation: boolean
  readonly protocolVersion: string
}

/**
 * What people and programs are shown of an approval (the API, the CLI, the webhook): never its
 * binding digest; the arguments only where the reader is signed in (not in the webhook).
 */
export function approvalView (r: ApprovalRecord, url: string, withArguments: boolean): Record<string, unknown> {
  return {
    id: r.id,
    url,
    status: r.status,
    server: r.server,
    tool: r.tool,
    agentId: r.agentId,
    userId: r.userId,
    department: r.department,
    ...(withArguments ? { arguments: r.arguments } : {}),
    argumentsSha256: r.argumentsSha256,
    policies: r.policies,
    approvers: r.approvers,
    advice: r.advice,
    policyVersion: r.policyVersion,
    requestedAt: new Date(r.requestedAt).toISOString(),
    expiresAt: new Date(r.expiresAt).toISOString(),
    approver: r.approver?.userId ?? null,
    reason: r.reason,
    decidedAt: r.decidedAt !== null ? new Date(r.decidedAt).toISOString() : null
  }
}
