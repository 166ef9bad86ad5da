// The constraint of a chat request with tools: what the model may write so that every tool call
// in its output parses and its arguments validate against the tool's `parameters` schema.
import { concat, literal, optional, repeat, textWithout, union } from './byte-automaton.js';
import { JsonSchemaCompiler } from './json-schema.js';
import { TOOL_CALL_FORMAT } from './tool-call-format.js';
import type { NFA } from 'refa';

export interface ToolSpec {
  /** A validated function name (letters, digits, `_` and `-`: nothing to escape in JSON). */
  name: string;
  /** The JSON schema of the arguments object. */
  parameters: unknown;
  /** Where `parameters` sits in the request, for errors (e.g. `tools[2].function.parameters`). */
  where: string;
}

export interface ToolCallsGrammar {
  tools: ToolSpec[];
  /** Several calls may follow each other (`parallel_tool_calls`). */
  parallel: boolean;
  /**
   * What the model may write instead of calls: nothing (`tool_choice` "required" or a named
   * function), free text that may end in calls ("auto"), or a structured output ("auto" with a
   * response format) that is either that value or the calls.
   */
  text: { kind: 'none' } | { kind: 'free' } | { kind: 'structured'; nfa: () => NFA };
}

export function toolCallsNfa(grammar: ToolCallsGrammar): NFA {
  const f = TOOL_CALL_FORMAT;
  const call = () =>
    concat([
      literal(f.open),
      union(
        grammar.tools.map((tool) =>
          concat([
            literal(`${f.nameOpen}${tool.name}${f.argumentsOpen}`),
            new JsonSchemaCompiler(tool.parameters as boolean | Record<string, unknown>, tool.where).compile(),
            literal(f.close),
          ]),
        ),
      ),
    ]);
  const calls = grammar.parallel ? concat([call(), repeat(concat([literal(f.separator), call()]), 0, Infinity)]) : call();
  switch (grammar.text.kind) {
    case 'none':
      return calls;
    case 'free':
      // Text cannot contain the opening, so writing it always begins a call that the grammar completes.
      return concat([textWithout(f.open), optional(calls)]);
    case 'structured':
      // A structured value begins with a JSON token, never with `<`: the branches cannot blur.
      return union([grammar.text.nfa(), calls]);
  }
}
