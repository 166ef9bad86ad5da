// What a request constrains its output to, independent of the API that asked (completions,
// chat, vLLM's guided_* or OpenAI's response_format), and its compilation to a byte DFA. The
// spec is plain data; compiling it runs off the main thread (the tokenizer thread), once per
// distinct spec thanks to the LRU here.
import { createHash } from 'node:crypto';
import { concat, literal, regexNfa, toByteDfa, union, withStateBudget, type ByteDfa } from './byte-automaton.js';
import { JSON_OBJECT_DEPTH, JsonSchemaCompiler } from './json-schema.js';
import { ConstraintError } from './constraint-error.js';
import { LRUCache } from 'lru-cache';
import type { NFA } from 'refa';
import { toolCallsNfa, type ToolSpec } from './tool-call-grammar.js';

/** A constraint on the whole output text. */
export type TextConstraintSpec =
  /** Any JSON object. */
  | { kind: 'json_object' }
  /** A JSON text valid against this schema; `where` names the request field in errors. */
  | { kind: 'json_schema'; schema: unknown; where: string }
  /** A full match of a JavaScript regex (Unicode mode). */
  | { kind: 'regex'; pattern: string; where: string }
  /** Exactly one of these strings. */
  | { kind: 'choice'; choices: string[]; where: string };

/**
 * Tool calls in TOOL_CALL_FORMAT, arguments valid against each tool's schema; `text` is what may
 * stand instead of (or, when 'free', before) the calls: null when calls are required.
 */
export interface ToolCallsSpec {
  kind: 'tool_calls';
  tools: ToolSpec[];
  parallel: boolean;
  text: null | 'free' | TextConstraintSpec;
}

export type ConstraintSpec = TextConstraintSpec | ToolCallsSpec;

/** A compiled constraint as it travels to the engine; `key` identifies it for the engine's cache. */
export interface CompiledConstraint {
  key: string;
  dfa: ByteDfa;
}

export type CompileResult = { ok: CompiledConstraint; compileMs: number } | { error: string };

/** Identifies a spec by content (a digest: keys travel with every request and index caches). */
export function constraintKey(spec: ConstraintSpec): string {
  const content =
    spec.kind === 'json_object'
      ? ''
      : spec.kind === 'json_schema'
        ? JSON.stringify(spec.schema)
        : spec.kind === 'regex'
          ? spec.pattern
          : spec.kind === 'choice'
            ? JSON.stringify(spec.choices)
            : JSON.stringify([spec.tools.map((t) => [t.name, t.parameters]), spec.parallel, spec.text]);
  return `${spec.kind}:${createHash('sha256').update(content).digest('base64url')}`;
}

/** Throws ConstraintError for what cannot be enforced. */
export function compileConstraint(spec: ConstraintSpec): ByteDfa {
  return withStateBudget(() => compileWithinBudget(spec));
}

function compileWithinBudget(spec: ConstraintSpec): ByteDfa {
  return toByteDfa(specNfa(spec));
}

function specNfa(spec: ConstraintSpec): NFA {
  switch (spec.kind) {
    case 'json_object':
      return JsonSchemaCompiler.anyObject(JSON_OBJECT_DEPTH);
    case 'json_schema':
      return new JsonSchemaCompiler(spec.schema as boolean | Record<string, unknown>, spec.where).compile();
    case 'regex':
      return regexNfa(spec.pattern, 'raw', spec.where);
    case 'choice':
      if (spec.choices.length === 0) throw new ConstraintError(`${spec.where}: must list at least one choice`);
      return union(spec.choices.map((c) => concat([literal(c)])));
    case 'tool_calls': {
      const { text } = spec;
      return toolCallsNfa({
        tools: spec.tools,
        parallel: spec.parallel,
        text: text === null ? { kind: 'none' } : text === 'free' ? { kind: 'free' } : { kind: 'structured', nfa: () => specNfa(text) },
      });
    }
  }
}

/** Compiles specs, remembering the last `capacity` distinct ones (errors are cheap to redo). */
export class ConstraintCompiler {
  private readonly cache: LRUCache<string, CompiledConstraint>;

  constructor(capacity = 64) {
    this.cache = new LRUCache({ max: capacity });
  }

  compile(spec: ConstraintSpec): CompileResult {
    const key = constraintKey(spec);
    const hit = this.cache.get(key);
    if (hit) return { ok: hit, compileMs: 0 };
    const start = performance.now();
    try {
      const compiled = { key, dfa: compileConstraint(spec) };
      this.cache.set(key, compiled);
      return { ok: compiled, compileMs: performance.now() - start };
    } catch (err) {
      if (err instanceof ConstraintError) return { error: err.message };
      throw err;
    }
  }
}
