// A bound on how deeply a request's free-form JSON (a schema, tool parameters, template kwargs)
// may nest. Such values travel to the tokenizer thread (structured clone) and through recursive
// code there (the schema compiler, the template's `tojson`), which all overflow the stack on a
// value a few thousand levels deep, small enough to pass any body limit. Refusing it here, with a
// walk that stops at the bound, turns what would be a 500 into a 400 naming the field.
import { z } from 'zod';

/** Far deeper than any real schema (each schema level is two JSON levels: properties, name). */
export const MAX_JSON_DEPTH = 64;

/** True when `value` nests objects or arrays more than `limit` levels deep (stops there). */
export function nestsDeeperThan(value: unknown, limit: number): boolean {
  const stack: Array<[unknown, number]> = [[value, 1]];
  while (stack.length > 0) {
    const [v, depth] = stack.pop()!;
    if (v === null || typeof v !== 'object') continue;
    if (depth > limit) return true;
    for (const child of Array.isArray(v) ? v : Object.values(v)) if (child !== null && typeof child === 'object') stack.push([child, depth + 1]);
  }
  return false;
}

export const DEPTH_MESSAGE = `is nested more than ${MAX_JSON_DEPTH} levels deep`;

/** A JSON object whose nesting is bounded (see above). */
export const ShallowJsonObject = z.record(z.string(), z.unknown()).superRefine((value, ctx) => {
  if (nestsDeeperThan(value, MAX_JSON_DEPTH)) ctx.addIssue({ code: 'custom', message: DEPTH_MESSAGE });
});
