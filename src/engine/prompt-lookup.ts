// Prompt-lookup drafting (vLLM's "ngram" method, llama.cpp's prompt lookup): text that quotes its
// context, and GPT-2's habit of repeating itself, make the tokens that followed the last earlier
// occurrence of the sequence's latest tokens a good guess at what comes next. It costs a scan of
// the sequence and no model run; a wrong guess costs only the verification of the drafted tokens.

/**
 * Up to `max` tokens that followed the latest earlier occurrence of the context's last n tokens,
 * for the longest n in maxN..minN that occurs earlier; [] when none does.
 */
export function lookupDraft(tokens: readonly number[], minN: number, maxN: number, max: number): number[] {
  const L = tokens.length;
  if (max <= 0) return [];
  for (let n = Math.min(maxN, L - 1); n >= minN; n--) {
    const at = latestEarlierOccurrence(tokens, n);
    if (at >= 0) return tokens.slice(at + n, Math.min(at + n + max, L)) as number[];
  }
  return [];
}

/** Start of the latest occurrence of the last n tokens that ends before the last token; -1 if none. */
function latestEarlierOccurrence(tokens: readonly number[], n: number): number {
  const L = tokens.length;
  const last = tokens[L - 1];
  outer: for (let i = L - n - 1; i >= 0; i--) {
    if (tokens[i + n - 1] !== last) continue;
    for (let j = 0; j < n - 1; j++) if (tokens[i + j] !== tokens[L - n + j]) continue outer;
    return i;
  }
  return -1;
}
