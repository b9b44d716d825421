/**
 * Shared state of the gateway. The memory store serves one process; a Redis
 * store lets several replicas share the same bindings.
 */
export interface SessionStore {
  /**
   * Binds an upstream session to the principal that opened it. Returns false,
   * binding nothing, when the session is already bound to another principal.
   */
  bind (server: string, sessionId: string, principal: string, ttlSeconds: number): Promise<boolean>
  /** The principal a session is bound to, or null. Refreshes its TTL. */
  owner (server: string, sessionId: string, ttlSeconds: number): Promise<string | null>
  unbind (server: string, sessionId: string): Promise<void>
  close (): Promise<void>
}

/** Single use of token ids (`jti`): the first use wins, until the token expires. */
export interface ReplayStore {
  /** Records a jti until `expiresAt` (seconds since the epoch); false when it was already used. */
  use (jti: string, expiresAt: number): Promise<boolean>
  close (): Promise<void>
}
