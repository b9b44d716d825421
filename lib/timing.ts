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

/** Hears of every timed stage (lib/tracing.ts turns them into spans when a request is traced). */
type TraceRecorder = (request: object, stage: Stage, start: bigint, end: bigint) => void
let recorder: TraceRecorder | null = null

/** Sets the one recorder of stage intervals (lib/tracing.ts, when it is loaded). */
export function setTraceRecorder (r: TraceRecorder): void { recorder = r }

/** Starts timing a stage of a request; call the returned function when the stage ends. */
export function startStage (request: object, stage: Stage): () => void {
  const start = process.hrtime.bigint()
  return () => {
    const r = request as Timed
    const end = process.hrtime.bigint()
    const stages = r[STAGES] ??= new Map()
    stages.set(stage, (stages.get(stage) ?? 0n) + end - start)
    if (recorder !== null) recorder(request, stage, start, end)
  }
}

/** The stages a request went through, in nanoseconds. */
export function stagesOf (request: object): ReadonlyMap<Stage, bigint> {
  return (request as Timed)[STAGES] ?? new Map()
}
