// How many engine sequences a completion request fans out to: each prompt runs max(n, best_of)
// choices. Checked in O(1) before the request is admitted, since admission counts sequences:
// a request that could never be admitted is a 400 naming the field and the limit, not a 429
// that a retry would never get past.
import type { CompletionBody } from '../openai/completion-schema.js';
import { ApiError } from '../openai/errors.js';

export interface FanOutLimits {
  /** --max-prompts-per-request */
  maxPromptsPerRequest: number;
  /** The engine's --max-num-seqs: a prompt's choices are admitted into one batch together. */
  maxNumSeqs: number;
  /** --max-seqs-in-flight: the sequences of every completion in flight together. */
  maxSeqsInFlight: number;
}

/** Prompts in the body: a list of strings or of token-id lists, else one (null or absent included). */
export function promptCount(body: Pick<CompletionBody, 'prompt'>): number {
  const p = body.prompt;
  return Array.isArray(p) && p.length > 0 && typeof p[0] !== 'number' ? p.length : 1;
}

/** The request's sequences (prompts x max(n, best_of)); throws a 400 when one of the limits is exceeded. */
export function checkFanOut(body: Pick<CompletionBody, 'prompt' | 'n' | 'best_of'>, limits: FanOutLimits): number {
  const prompts = promptCount(body);
  if (prompts > limits.maxPromptsPerRequest) {
    throw new ApiError(
      'invalid_value',
      `\`prompt\`: ${prompts} prompts in one request; at most ${limits.maxPromptsPerRequest} are allowed (--max-prompts-per-request)`,
      'prompt',
    );
  }
  const n = body.n ?? 1;
  const choices = Math.max(n, body.best_of ?? n);
  const field = choices > n ? 'best_of' : 'n';
  if (choices > limits.maxNumSeqs) {
    throw new ApiError(
      'invalid_value',
      `\`${field}\`: ${choices} choices of one prompt; at most ${limits.maxNumSeqs} are allowed, since a prompt's choices run in one batch (--max-num-seqs)`,
      field,
    );
  }
  const sequences = prompts * choices;
  if (sequences > limits.maxSeqsInFlight) {
    const param = choices > 1 ? field : 'prompt';
    throw new ApiError(
      'invalid_value',
      `\`${param}\`: ${prompts} prompts x ${choices} choice${choices > 1 ? 's' : ''} = ${sequences} sequences in one request; at most ${limits.maxSeqsInFlight} are allowed (--max-seqs-in-flight)`,
      param,
    );
  }
  return sequences;
}
