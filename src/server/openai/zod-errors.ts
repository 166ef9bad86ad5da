// Turns zod issues into one OpenAI-style 400 that names the offending field, e.g.
// "`temperature`: must be <= 2". Input values are never echoed back (prompts can be large/private).
import type { z } from 'zod';
import { ApiError, type ErrorCode } from './errors.js';

type Issue = z.core.$ZodIssue;

/** `stop[1]`, `logit_bias.50256`, `stream_options.include_usage`. */
export function formatPath(path: ReadonlyArray<PropertyKey>): string {
  let out = '';
  for (const part of path) {
    if (typeof part === 'number') out += `[${part}]`;
    else out += out === '' ? String(part) : `.${String(part)}`;
  }
  return out;
}

function describeType(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'array';
  return typeof value;
}

function issueText(issue: Issue): string {
  switch (issue.code) {
    case 'invalid_type': {
      if ('input' in issue && issue.input === undefined) return 'is required';
      if (issue.expected === 'int' && 'input' in issue && typeof issue.input === 'number') return 'must be an integer';
      const expected = issue.expected === 'int' ? 'an integer' : issue.expected;
      const got = 'input' in issue ? describeType(issue.input) : undefined;
      return got ? `expected ${expected}, got ${got}` : `expected ${expected}`;
    }
    case 'too_big': {
      const max = String(issue.maximum);
      if (issue.origin === 'array' || issue.origin === 'set') return `must have at most ${max} items`;
      if (issue.origin === 'string') return `must be at most ${max} characters`;
      return issue.inclusive === false ? `must be < ${max}` : `must be <= ${max}`;
    }
    case 'too_small': {
      const min = String(issue.minimum);
      if (issue.origin === 'array' || issue.origin === 'set') return `must have at least ${min} item${min === '1' ? '' : 's'}`;
      if (issue.origin === 'string') return min === '1' ? 'must not be empty' : `must be at least ${min} characters`;
      return issue.inclusive === false ? `must be > ${min}` : `must be >= ${min}`;
    }
    case 'invalid_value':
      return `must be one of ${issue.values.map((v) => JSON.stringify(v)).join(', ')}`;
    case 'not_multiple_of':
      return `must be a multiple of ${String(issue.divisor)}`;
    default:
      return issue.message;
  }
}

/** Builds the ApiError for a failed parse: all issues in the message, the first one's field as `param`. */
export function zodIssuesToApiError(issues: ReadonlyArray<Issue>, root = 'request body'): ApiError {
  const first = issues[0];
  const parts = issues.slice(0, 5).map((issue) => {
    const field = formatPath(issue.path);
    return field === '' ? `${root}: ${issueText(issue)}` : `\`${field}\`: ${issueText(issue)}`;
  });
  if (issues.length > 5) parts.push(`(${issues.length - 5} more)`);
  const params = first && first.code === 'custom' ? (first.params as { code?: ErrorCode } | undefined) : undefined;
  let code: ErrorCode = params?.code ?? 'invalid_value';
  if (first?.code === 'invalid_type' && 'input' in first && first.input === undefined) code = 'missing_required_parameter';
  const param = first ? formatPath(first.path) || null : null;
  return new ApiError(code, parts.join('; '), param);
}

/** safeParse with `reportInput` (to tell "missing" from "wrong type"), throwing the OpenAI-shaped error. */
export function parseOrThrow<S extends z.ZodType>(schema: S, data: unknown, root?: string): z.output<S> {
  const result = schema.safeParse(data, { reportInput: true });
  if (!result.success) throw zodIssuesToApiError(result.error.issues, root);
  return result.data;
}
