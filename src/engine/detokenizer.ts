// Per-choice streaming detokenization: token ids in, text deltas out, cut at the first stop string.
import type { Tokenizer } from '../model/tokenizer.js';

export class IncrementalDetokenizer {
  // stream: true holds the bytes of an incomplete character inside the decoder until it completes.
  // ignoreBOM: a leading U+FEFF is generated text, and decode() keeps it too.
  private readonly utf8 = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });
  private readonly stops: readonly string[];
  /** Decoded text held back as a possible stop-string start: shorter than the longest stop string. */
  private pending = '';
  private stopped = false;
  private finished = false;

  constructor(
    private readonly tokenizer: Tokenizer,
    stop: readonly string[],
  ) {
    // An empty stop string would match before any text; treat it as absent.
    this.stops = stop.filter((s) => s.length > 0);
  }

  /** Text that became safe to emit with this token; `stopped` once a stop string has appeared. */
  push(tokenId: number): { text: string; stopped: boolean } {
    if (this.finished) throw new Error('IncrementalDetokenizer.push after finish()');
    if (this.stopped) return { text: '', stopped: true };
    const chunk = this.utf8.decode(this.tokenizer.tokenBytes(tokenId), { stream: true });
    // Nothing new (stops off, or an incomplete character): pending was already checked.
    if (this.stops.length === 0 || chunk === '') return { text: chunk, stopped: false };
    return this.release(this.pending + chunk);
  }

  /** Flushes held-back text at the end of generation (U+FFFD for a truly broken trailing sequence). */
  finish(): string {
    if (this.finished) return '';
    this.finished = true;
    if (this.stopped) return '';
    const rest = this.utf8.decode();
    // The flush can add replacement characters, so the stop check runs once more.
    const { text, stopped } = this.release(this.pending + rest);
    const held = stopped ? '' : this.pending;
    this.pending = '';
    return text + held;
  }

  /** Emits the part of `text` that no stop string can claim; keeps the rest in `pending`. */
  private release(text: string): { text: string; stopped: boolean } {
    let cut = -1;
    for (const s of this.stops) {
      const at = text.indexOf(s);
      if (at !== -1 && (cut === -1 || at < cut)) cut = at;
    }
    if (cut !== -1) {
      this.stopped = true;
      this.pending = '';
      return { text: text.slice(0, cut), stopped: true };
    }
    const keep = this.heldSuffixStart(text);
    this.pending = text.slice(keep);
    return { text: text.slice(0, keep), stopped: false };
  }

  /**
   * Start of the longest suffix of `text` that is a proper prefix of some stop string: any stop
   * that completes later must begin inside it, so everything before it is final.
   */
  private heldSuffixStart(text: string): number {
    let best = text.length;
    for (const s of this.stops) {
      for (let start = Math.max(0, text.length - s.length + 1); start < best; start++) {
        if (isPrefixAt(text, start, s)) {
          best = start;
          break;
        }
      }
    }
    return best;
  }
}

/** Whether text.slice(start) is a prefix of `s` (text ends before `s` does), without slicing. */
function isPrefixAt(text: string, start: number, s: string): boolean {
  for (let i = start, j = 0; i < text.length; i++, j++) {
    if (text.charCodeAt(i) !== s.charCodeAt(j)) return false;
  }
  return true;
}
