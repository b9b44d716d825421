/** What an approval is bound to, and its id. */
import { createHash, randomBytes } from 'node:crypto'
import { canonicalize } from 'json-canonicalize'

export interface CallBinding {
  readonly issuer: string
  readonly agentId: string
  readonly userId: string
  readonly server: string
  readonly tool: string
  readonly argumentsSha256: string
  readonly policyVersion: string
}

/** base64url SHA-256 of the canonical JSON (RFC 8785) of a call's arguments (`{}` when it has none). */
export function argumentsDigest (args: Readonly<Record<string, unknown>> | undefined): { text: string, sha256: string } {
  const text = canonicalize(args ?? {})
  return { text, sha256: createHash('sha256').update(text).digest('base64url') }
}

/** The digest an approval is found by: the same caller, call and policy set give the same binding. */
export function bindingOf (b: CallBinding): string {
  return createHash('sha256')
    .update(JSON.stringify([b.issuer, b.agentId, b.userId, b.server, b.tool, b.argumentsSha256, b.policyVersion]))
    .digest('base64url')
}

/** A new approval id: 128 random bits. */
export function newApprovalId (): string {
  // Never starting with "-": an id is typed as a command-line argument (`approvals show ID`),
  // where a leading dash reads as an option. 128 random bits either way.
  for (;;) {
    const id = randomBytes(16).toString('base64url')
    if (id[0] !== '-') return id
  }
}

/** Approval ids are 22 base64url characters; anything else is not one. */
export const APPROVAL_ID = /^[A-Za-z0-9_-]{22}$/
