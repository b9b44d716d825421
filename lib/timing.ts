/**
 * Per-stage timing of a request (DESIGN.md §3 stages), with process.hrtime.bigint():
 * each plugin times its own work; the metrics plugin reports the totals as a histogram and,
 * when enabled, a Server-Timing header.
 */
import type { FastifyInstance } from 'fastify'

export type Stage = 'identity' | 'parse' | 'authz' | 'filter' | 'ratelimit' | 'mint' | 'exchange' | 'secret' | 'upstream'

const STAGES = Symbol('mcp-warden.stages')

interface Timed { [STAGES]?: Map<Stage, bigint> | null }

/**
 * Declares the request field the stage times are kept in (once, by whichever plugin comes
 * first), so that requests keep one shape.
 */
export function declareStages (app: FastifyInstance): void {
  if (!app.hasRequestDecorator(STAGES)) app.decorateRequest(STAGES, null)
}

/** Starts timing a stage of a request; call the returned function when the stage ends. */
export function startStage (request: object, stage: Stage): () => void {
  const start = process.hrtime.bigint()
  return () => {
    const r = request as Timed
    const stages = r[STAGES] ??= new Map()
    stages.set(stage, (stages.get(stage) ?? 0n) + process.hrtime.bigint() - start)
  }
}

/** The stages a request went through, in nanoseconds. */
export function stagesOf (request: object): ReadonlyMap<Stage, bigint> {
  return (request as Timed)[STAGES] ?? new Map()
}
