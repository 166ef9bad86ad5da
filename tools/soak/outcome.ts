// What became of one soak request, as the client saw it. Every scenario says which outcomes are
// correct for it (a stalled reader must be cut off, a bad input must get its 4xx, ...); anything
// else is a finding.
import { ERROR_TABLE, type ErrorCode } from '../../src/server/openai/errors.js';

export const OUTCOMES = ['completed', 'cancelled', 'stall_cutoff', 'expected_4xx', 'overloaded', 'server_error', 'unexpected'] as const;
export type Outcome = (typeof OUTCOMES)[number];

export const OUTCOME_LABELS: Record<Outcome, string> = {
  completed: 'completed',
  cancelled: 'cancelled by client',
  stall_cutoff: 'cut off after stall',
  expected_4xx: '4xx as expected',
  overloaded: '429',
  server_error: '5xx',
  unexpected: 'other/unexpected',
};

export interface RequestRecord {
  /** The table row: which kind of client sent it. */
  scenario: string;
  outcome: Outcome;
  /** HTTP status (for a websocket error frame: its code's status; close code for a closed socket); null if none arrived. */
  status: number | null;
  /** The OpenAI error code, when there was one. */
  code: string | null;
  /** Milliseconds from sending to the outcome. */
  ms: number;
  /** When its client started it, in seconds since the traffic began (set by the mix). */
  atS?: number;
  /** Why an outcome is not the expected one (kept for the report). */
  detail?: string;
}

/** What the server may answer to an expected-good request that did not succeed: 429, or a finding. */
export function errorOutcome(status: number, code: string | null): { outcome: Outcome; detail?: string } {
  if (status === 429) return code === 'overloaded' ? { outcome: 'overloaded' } : { outcome: 'unexpected', detail: `429 with code ${code}` };
  if (status >= 500) return { outcome: 'server_error', detail: `${status} ${code ?? ''}`.trim() };
  return { outcome: 'unexpected', detail: `${status} ${code ?? ''}`.trim() };
}

/** errorOutcome for an HTTP reply, whose 429 must also carry the Retry-After that admission control promises. */
export function httpErrorOutcome(status: number, body: string, retryAfter: string | undefined): { outcome: Outcome; code: string | null; detail?: string } {
  const code = errorCode(body);
  if (status === 429 && retryAfter === undefined) return { outcome: 'unexpected', code, detail: '429 without Retry-After' };
  return { ...errorOutcome(status, code), code };
}

/** The HTTP status the server pairs with an error code (websocket error frames carry only the code). */
export function statusOfCode(code: string | null): number | null {
  if (code === null) return null;
  return (ERROR_TABLE as Record<string, { status: number }>)[code as ErrorCode]?.status ?? null;
}

/** The `error.code` of an OpenAI error body (JSON text or parsed), or null. */
export function errorCode(body: unknown): string | null {
  let value = body;
  if (typeof body === 'string') {
    try {
      value = JSON.parse(body);
    } catch {
      return null;
    }
  }
  const code = (value as { error?: { code?: unknown } } | null)?.error?.code;
  return typeof code === 'string' ? code : null;
}
