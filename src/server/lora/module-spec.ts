// --lora-modules: each adapter as vLLM spells it, `name=path` or the JSON form
// `{"name": ..., "path": ..., "base_model_name": ...}`. The flag repeats and the environment
// variable is comma-separated like every list setting, so the list is split on the commas
// outside JSON objects and strings (a JSON module's path may hold commas; a name=path one may not).
import { z } from 'zod';

export interface LoraModuleSpec {
  name: string;
  path: string;
  /** What /v1/models reports as the adapter's parent; absent: the served base model. */
  baseModelName?: string;
}

const JsonModule = z
  .object({
    name: z.string().min(1, 'name must not be empty'),
    path: z.string().min(1, 'path must not be empty'),
    base_model_name: z.string().min(1).optional(),
  })
  .strict();

/** "a=/x, {"name":"b","path":"/y,z"}" -> ['a=/x', '{"name":"b","path":"/y,z"}'] */
function splitTopLevel(list: string): string[] {
  const parts: string[] = [];
  let depth = 0;
  let inString = false;
  let start = 0;
  for (let i = 0; i < list.length; i++) {
    const c = list[i];
    if (inString) {
      if (c === '\\') i++;
      else if (c === '"') inString = false;
    } else if (c === '"') inString = true;
    else if (c === '{') depth++;
    else if (c === '}') depth--;
    else if (c === ',' && depth === 0) {
      parts.push(list.slice(start, i));
      start = i + 1;
    }
  }
  parts.push(list.slice(start));
  return parts.map((p) => p.trim()).filter((p) => p.length > 0);
}

/** One module, or null after adding the issue that says why not. */
function parseModule(text: string, ctx: z.RefinementCtx): LoraModuleSpec | null {
  if (text.startsWith('{')) {
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch {
      ctx.addIssue({ code: 'custom', message: `${text} is not valid JSON` });
      return null;
    }
    const parsed = JsonModule.safeParse(raw);
    if (!parsed.success) {
      ctx.addIssue({ code: 'custom', message: `${text}: ${parsed.error.issues.map((i) => i.message).join('; ')} (expected {"name": ..., "path": ..., "base_model_name": ...})` });
      return null;
    }
    const { name, path, base_model_name } = parsed.data;
    return { name, path, ...(base_model_name !== undefined ? { baseModelName: base_model_name } : {}) };
  }
  const eq = text.indexOf('=');
  const name = text.slice(0, eq).trim();
  const path = text.slice(eq + 1).trim();
  if (eq < 0 || name.length === 0 || path.length === 0) {
    ctx.addIssue({ code: 'custom', message: `${JSON.stringify(text)} is neither name=path nor {"name": ..., "path": ...}` });
    return null;
  }
  return { name, path };
}

/** The setting's schema: absent -> []; each module parsed, and no name twice. */
export const loraModulesSchema = z
  .string()
  .optional()
  .transform((v, ctx) => {
    const modules = splitTopLevel(v ?? '').flatMap((m) => parseModule(m, ctx) ?? []);
    const names = new Set<string>();
    for (const m of modules) {
      if (names.has(m.name)) ctx.addIssue({ code: 'custom', message: `the adapter name ${JSON.stringify(m.name)} is given twice` });
      names.add(m.name);
    }
    return modules;
  });
