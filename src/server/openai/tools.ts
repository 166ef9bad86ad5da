// Function tools as both OpenAI APIs declare them (Chat: `{type, function: {...}}`; Responses:
// flat `{type, name, ...}`), checked into one shape, and `tool_choice` into the constraint that
// makes every call the model writes parse and fit its tool's schema (tool-call-grammar.ts).
import { z } from 'zod';
import type { TextConstraintSpec, ToolCallsSpec } from '../../structured/constraint.js';
import { ApiError } from './errors.js';
import { ShallowJsonObject } from './json-depth.js';

/** OpenAI's rule for function names; it also means a name needs no escaping inside JSON. */
const FunctionName = z.string().regex(/^[a-zA-Z0-9_-]{1,64}$/, { error: 'must be 1 to 64 letters, digits, underscores or dashes' });

/** OpenAI's limit on tools per request. */
export const MAX_TOOLS = 128;

export const FunctionFields = {
  name: FunctionName,
  description: z.string().nullish(),
  parameters: ShallowJsonObject.nullish(),
  /** Accepted and always in effect: the arguments are enforced by the constraint either way. */
  strict: z.boolean().nullish(),
};

/** `"none" | "auto" | "required"`, or a function the model must call. */
export type ToolChoice = 'none' | 'auto' | 'required' | { name: string };

export interface FunctionTool {
  name: string;
  description: string | null;
  parameters: Record<string, unknown>;
  /** Where its name sits (`tools[2].function.name` or `tools[2].name`). */
  nameField: string;
  /** Where its parameters sit. */
  parametersField: string;
}

/** A function without `parameters` takes none, as OpenAI's. */
const NO_PARAMETERS = { type: 'object', properties: {} };

/** `fieldPrefix` is where the function's fields are: `tools[2].function.` (Chat), `tools[2].` (Responses). */
export function functionTool(fn: { name: string; description?: string | null; parameters?: Record<string, unknown> | null }, fieldPrefix: string): FunctionTool {
  const parametersField = `${fieldPrefix}parameters`;
  // `{}` and other schemas that leave `type` out describe the arguments object all the same.
  const parameters = fn.parameters == null ? NO_PARAMETERS : fn.parameters.type === undefined ? { type: 'object', ...fn.parameters } : fn.parameters;
  if (parameters.type !== 'object') {
    throw new ApiError('invalid_value', `\`${parametersField}\`: must be a JSON schema of \`"type": "object"\` (a function's arguments are an object)`, parametersField);
  }
  return { name: fn.name, description: fn.description ?? null, parameters, nameField: `${fieldPrefix}name`, parametersField };
}

/** Two tools of one name could not be told apart in a call: a 400 naming the second. */
export function checkDistinctNames(tools: FunctionTool[]): void {
  const seen = new Set<string>();
  for (const tool of tools) {
    if (seen.has(tool.name)) throw new ApiError('invalid_value', `\`${tool.nameField}\`: another tool is also named "${tool.name}"; names must be unique`, tool.nameField);
    seen.add(tool.name);
  }
}

/**
 * The constraint for `choice`, or null where the model writes plain text (no tools, or "none").
 * `text` is the request's structured output, which "auto" keeps as the alternative to calls.
 */
export function toolCallsSpec(
  tools: FunctionTool[],
  choice: ToolChoice,
  parallel: boolean,
  text: TextConstraintSpec | null,
  fields: { choice: string; text: string },
): ToolCallsSpec | null {
  if (choice === 'none') return null;
  if (tools.length === 0) {
    // As OpenAI: naming a tool_choice (other than "none") without tools is a mistake.
    throw new ApiError('invalid_value', `\`${fields.choice}\`: is only allowed when \`tools\` are given`, fields.choice);
  }
  let offered = tools;
  if (typeof choice === 'object') {
    offered = tools.filter((t) => t.name === choice.name);
    if (offered.length === 0) throw new ApiError('invalid_value', `\`${fields.choice}\`: no tool is named "${choice.name}"`, fields.choice);
  }
  if (choice !== 'auto' && text !== null) {
    throw new ApiError('invalid_value', `\`${fields.text}\`: cannot be combined with a tool_choice that requires a call`, fields.text);
  }
  return {
    kind: 'tool_calls',
    tools: offered.map((t) => ({ name: t.name, parameters: t.parameters, where: `${t.parametersField} (function "${t.name}")` })),
    parallel,
    text: choice === 'auto' ? (text ?? 'free') : null,
  };
}

/** What the chat template receives as `tools`: Hugging Face's (and OpenAI Chat's) shape. */
export function templateTools(tools: FunctionTool[]): Array<Record<string, unknown>> {
  return tools.map((t) => ({
    type: 'function',
    function: { name: t.name, ...(t.description !== null ? { description: t.description } : {}), parameters: t.parameters },
  }));
}
