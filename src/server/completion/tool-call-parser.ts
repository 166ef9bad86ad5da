// Reads tool calls (TOOL_CALL_FORMAT) out of a choice's text as it streams: content before the
// first call, then per call its name once the name is complete and its arguments piece by piece.
// The output was constrained to the format (tool-call-grammar.ts), so this is a scanner, not a
// recovering parser; what it must still handle is text cut short (max_tokens, a stop string),
// which leaves the last call incomplete.
import { TOOL_CALL_FORMAT } from '../../structured/tool-call-format.js';

export type ToolCallEvent =
  | { type: 'content'; text: string }
  | { type: 'call'; index: number; name: string }
  | { type: 'arguments'; index: number; text: string };

type State = 'text' | 'name' | 'arguments' | 'close' | 'between';

const F = TOOL_CALL_FORMAT;

export class ToolCallParser {
  private state: State = 'text';
  private buffer = '';
  /** Trailing whitespace of the content so far, not yet sent: dropped if a call follows, sent if text does. */
  private heldSpace = '';
  private calls = 0;
  private readonly json = new JsonValueScanner();

  /** Calls begun so far (complete or not). */
  get callCount(): number {
    return this.calls;
  }

  push(text: string): ToolCallEvent[] {
    this.buffer += text;
    const events: ToolCallEvent[] = [];
    for (;;) {
      const before = this.buffer.length;
      const state = this.state;
      this.step(events);
      if (this.state === state && this.buffer.length === before) return events;
    }
  }

  /** The text ended: what was held back is content if no call began. */
  end(): ToolCallEvent[] {
    const events: ToolCallEvent[] = [];
    if (this.state === 'text') this.content(this.buffer, events, true);
    this.buffer = '';
    return events;
  }

  private step(events: ToolCallEvent[]): void {
    switch (this.state) {
      case 'text': {
        const at = this.buffer.indexOf(F.open);
        if (at >= 0) {
          this.content(this.buffer.slice(0, at), events, false);
          this.heldSpace = '';
          this.take(at + F.open.length, 'name');
          return;
        }
        // Keep what may be the beginning of the opening until the next piece shows whether it is.
        const keep = partialSuffix(this.buffer, F.open);
        this.content(this.buffer.slice(0, this.buffer.length - keep), events, false);
        this.buffer = this.buffer.slice(this.buffer.length - keep);
        return;
      }
      case 'name': {
        if (!this.buffer.startsWith(F.nameOpen)) return;
        const end = this.buffer.indexOf(F.argumentsOpen, F.nameOpen.length);
        if (end < 0) return;
        events.push({ type: 'call', index: this.calls++, name: this.buffer.slice(F.nameOpen.length, end) });
        this.json.reset();
        this.take(end + F.argumentsOpen.length, 'arguments');
        return;
      }
      case 'arguments': {
        const used = this.json.feed(this.buffer);
        if (used > 0) events.push({ type: 'arguments', index: this.calls - 1, text: this.buffer.slice(0, used) });
        this.take(used, this.json.done ? 'close' : 'arguments');
        return;
      }
      case 'close':
        if (this.buffer.startsWith(F.close)) this.take(F.close.length, 'between');
        return;
      case 'between':
        if (this.buffer.startsWith(F.separator + F.open)) this.take(F.separator.length + F.open.length, 'name');
        return;
    }
  }

  private take(count: number, next: State): void {
    this.buffer = this.buffer.slice(count);
    this.state = next;
  }

  /**
   * Content is sent up to its last non-space character; trailing whitespace waits for what comes
   * next, so that the text before a call ends the same way however the text was cut into pieces.
   */
  private content(text: string, events: ToolCallEvent[], final: boolean): void {
    const pending = this.heldSpace + text;
    const end = final ? pending.length : pending.trimEnd().length;
    if (end > 0) events.push({ type: 'content', text: pending.slice(0, end) });
    this.heldSpace = pending.slice(end);
  }
}

/** The length of the longest end of `text` that is a proper beginning of `marker`. */
function partialSuffix(text: string, marker: string): number {
  for (let n = Math.min(marker.length - 1, text.length); n > 0; n--) {
    if (marker.startsWith(text.slice(text.length - n))) return n;
  }
  return 0;
}

/** Finds where one JSON value ends in text that arrives in pieces (depth, strings, escapes). */
class JsonValueScanner {
  private depth = 0;
  private inString = false;
  private escaped = false;
  private started = false;
  done = false;

  reset(): void {
    this.depth = 0;
    this.inString = this.escaped = this.started = this.done = false;
  }

  /** Consumes `text` up to the end of the value; returns how many characters belong to it. */
  feed(text: string): number {
    for (let i = 0; i < text.length; i++) {
      const c = text[i]!;
      if (this.inString) {
        if (this.escaped) this.escaped = false;
        else if (c === '\\') this.escaped = true;
        else if (c === '"') this.inString = false;
      } else if (c === '"') {
        this.inString = true;
      } else if (c === '{' || c === '[') {
        this.depth++;
        this.started = true;
      } else if (c === '}' || c === ']') {
        this.depth--;
      }
      if (this.started && this.depth === 0) {
        this.done = true;
        return i + 1;
      }
    }
    return text.length;
  }
}

/**
 * A call's id, unique because the response's is: `call_<response id's own part>_<choice>_<call>`.
 * Clients send it back with the tool's result (`tool_call_id`, `call_id`).
 */
export function toolCallId(responseId: string, choice: number, index: number): string {
  return `call_${responseIdPart(responseId)}_${choice}_${index}`;
}

/** A response id without its kind (`chatcmpl-`, `resp_`): what ids derived from it share. */
export function responseIdPart(responseId: string): string {
  return responseId.replace(/^[a-z]+[-_]/, '');
}

/** Where each choice's text goes: straight to content, or through a parser when tools are on. */
export function textEvents(parser: ToolCallParser | null, text: string, final: boolean): ToolCallEvent[] {
  if (!parser) return text === '' ? [] : [{ type: 'content', text }];
  const events = parser.push(text);
  if (final) events.push(...parser.end());
  return events;
}
