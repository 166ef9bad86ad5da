// The structured-output request fields (see structuredOutputFields) as one API-neutral
// ConstraintSpec, and its compilation (off the main thread) into what the engine enforces.
import type { z } from 'zod';
import type { EngineClient } from '../../engine/types.js';
import type { CompiledConstraint, ConstraintSpec, TextConstraintSpec } from '../../structured/constraint.js';
import type { structuredOutputFields } from './completion-schema.js';
import { ApiError } from './errors.js';
import { DEPTH_MESSAGE, MAX_JSON_DEPTH, nestsDeeperThan } from './json-depth.js';

type Fields = { [K in keyof typeof structuredOutputFields]?: z.output<(typeof structuredOutputFields)[K]> };

/** Which constraint the fields ask for, or null for free text. Throws ApiError (400). */
export function structuredOutputSpec(body: Fields): TextConstraintSpec | null {
  const found: Array<{ field: string; spec: TextConstraintSpec }> = [];
  const so = body.structured_outputs;
  const rf = body.response_format;
  if (body.guided_grammar != null || so?.grammar != null) {
    const field = body.guided_grammar != null ? 'guided_grammar' : 'structured_outputs.grammar';
    throw new ApiError('unsupported_parameter', `\`${field}\`: grammars are not supported; use a JSON schema, a regex or a list of choices`, field);
  }
  if (rf?.type === 'json_object') found.push({ field: 'response_format', spec: { kind: 'json_object' } });
  if (rf?.type === 'json_schema') {
    const where = 'response_format.json_schema.schema';
    if (rf.json_schema.schema == null) throw new ApiError('missing_required_parameter', `\`${where}\` is required`, where);
    found.push({ field: 'response_format', spec: { kind: 'json_schema', schema: rf.json_schema.schema, where } });
  }
  if (body.guided_json != null) found.push({ field: 'guided_json', spec: jsonSpec(body.guided_json, 'guided_json') });
  if (body.guided_regex != null) found.push({ field: 'guided_regex', spec: { kind: 'regex', pattern: body.guided_regex, where: 'guided_regex' } });
  if (body.guided_choice != null) found.push({ field: 'guided_choice', spec: { kind: 'choice', choices: body.guided_choice, where: 'guided_choice' } });
  if (so?.json != null) found.push({ field: 'structured_outputs.json', spec: jsonSpec(so.json, 'structured_outputs.json') });
  if (so?.regex != null) found.push({ field: 'structured_outputs.regex', spec: { kind: 'regex', pattern: so.regex, where: 'structured_outputs.regex' } });
  if (so?.choice != null) found.push({ field: 'structured_outputs.choice', spec: { kind: 'choice', choices: so.choice, where: 'structured_outputs.choice' } });
  if (so?.json_object) found.push({ field: 'structured_outputs.json_object', spec: { kind: 'json_object' } });
  if (found.length > 1) {
    throw new ApiError('invalid_value', `\`${found[1]!.field}\`: only one structured output may be requested, and \`${found[0]!.field}\` is given too`, found[1]!.field);
  }
  return found[0]?.spec ?? null;
}

function jsonSpec(value: string | boolean | Record<string, unknown>, where: string): TextConstraintSpec {
  if (typeof value !== 'string') return { kind: 'json_schema', schema: value, where };
  let schema: unknown;
  try {
    schema = JSON.parse(value);
  } catch {
    throw new ApiError('invalid_value', `\`${where}\`: is not valid JSON`, where);
  }
  if (nestsDeeperThan(schema, MAX_JSON_DEPTH)) throw new ApiError('invalid_value', `\`${where}\`: ${DEPTH_MESSAGE}`, where);
  return { kind: 'json_schema', schema, where };
}

/** Compiles the spec in the tokenizer thread; a constraint that cannot be enforced is a 400. */
export async function compileStructuredOutput(spec: ConstraintSpec | null, engine: EngineClient): Promise<CompiledConstraint | null> {
  if (!spec) return null;
  const result = await engine.compileConstraint(spec);
  if ('error' in result) {
    const param = spec.kind === 'json_object' ? 'response_format' : spec.kind === 'tool_calls' ? 'tools' : spec.where.split(' ')[0]!;
    throw new ApiError('invalid_value', result.error, param);
  }
  return result.ok;
}
