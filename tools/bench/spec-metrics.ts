// Speculative decoding as the server counts it: its /metrics counters (vLLM's names) read before
// and after a run, so that each run reports the draft acceptance its throughput came from. A
// server without them (speculation not built, metrics off, another server behind --url) reports
// nothing.

export interface SpecCounters {
  /** Sequence steps that carried draft tokens to verify. */
  drafts: number;
  draftTokens: number;
  acceptedTokens: number;
}

export interface SpecDecodeMetrics {
  drafts: number;
  draft_tokens: number;
  accepted_tokens: number;
  /** accepted / drafted tokens (0 when nothing was drafted). */
  acceptance_rate: number;
  /** Tokens a verifying step yields: 1 + accepted tokens per draft (vLLM's mean acceptance length). */
  mean_acceptance_length: number;
}

const NAMES: Record<keyof SpecCounters, string> = {
  drafts: 'gpt2_spec_decode_num_drafts_total',
  draftTokens: 'gpt2_spec_decode_num_draft_tokens_total',
  acceptedTokens: 'gpt2_spec_decode_num_accepted_tokens_total',
};

/** The counters in a Prometheus text exposition, or null when the draft/accepted ones are absent. */
export function parseSpecCounters(text: string): SpecCounters | null {
  const value = (name: string): number | null => {
    const m = new RegExp(`^${name}(?:\\{[^}]*\\})? ([0-9.eE+-]+)`, 'm').exec(text);
    return m ? Number(m[1]) : null;
  };
  const draftTokens = value(NAMES.draftTokens);
  const acceptedTokens = value(NAMES.acceptedTokens);
  if (draftTokens === null || acceptedTokens === null) return null;
  return { drafts: value(NAMES.drafts) ?? 0, draftTokens, acceptedTokens };
}

/** GET /metrics and parse it; null when it cannot be read or has no speculation counters. */
export async function scrapeSpecCounters(baseUrl: string): Promise<SpecCounters | null> {
  try {
    const res = await fetch(`${baseUrl}/metrics`);
    return res.ok ? parseSpecCounters(await res.text()) : null;
  } catch {
    return null;
  }
}

/** What happened between two scrapes. */
export function specDecodeBetween(before: SpecCounters, after: SpecCounters): SpecDecodeMetrics {
  const drafts = after.drafts - before.drafts;
  const draftTokens = after.draftTokens - before.draftTokens;
  const accepted = after.acceptedTokens - before.acceptedTokens;
  return {
    drafts,
    draft_tokens: draftTokens,
    accepted_tokens: accepted,
    acceptance_rate: draftTokens > 0 ? accepted / draftTokens : 0,
    mean_acceptance_length: drafts > 0 ? 1 + accepted / drafts : 1,
  };
}
