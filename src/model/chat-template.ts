// Chat templates: which one a model folder is served with, and rendering a conversation to the
// prompt text. Templates are Hugging Face's Jinja chat templates, run by @huggingface/jinja.
//
// Which template: --chat-template (a file, or the template itself) when given, as in vLLM, so an
// operator can always override; else the model folder's tokenizer_config.json `chat_template`
// (the exporter and `npm run download` copy that file); else BUILT_IN_TEMPLATE, a plain
// transcript for base GPT-2.
//
// Rendering runs in the tokenizer thread (see tokenizer-thread.ts): its cost grows with the
// conversation, and the main thread does no work proportional to one request's size.
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { Template } from '@huggingface/jinja';

export const TOKENIZER_CONFIG_FILE = 'tokenizer_config.json';

/**
 * The built-in template: a transcript a base model can continue.
 *
 *     <tool instructions and definitions>\n\n   (when the request has tools)
 *     <system message>\n\n          (system and developer messages, if any)
 *     User: <content>\n
 *     Assistant: <content> <tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>\n
 *     Tool: <a tool's result>\n
 *     ...
 *     Assistant:                      (the generation prompt)
 *
 * The model writes the assistant's turn after "Assistant:" (its reply starts with the space
 * GPT-2's tokens carry before a word) and BUILT_IN_STOP ends it where it would begin the next
 * user or tool turn. Tool calls are written in TOOL_CALL_FORMAT, the format the server enforces
 * and parses.
 */
export const BUILT_IN_TEMPLATE =
  '{%- if tools -%}' +
  "{{- 'You can call these functions. To call one, write <tool_call>, then on a new line {\"name\": <the function name>, \"arguments\": <its arguments as a JSON object>}, then on a new line </tool_call>.\\n' -}}" +
  "{%- for tool in tools -%}{{- (tool | tojson) + '\\n' -}}{%- endfor -%}" +
  "{{- '\\n' -}}" +
  '{%- endif -%}' +
  "{%- for message in messages -%}" +
  "{%- if message.role == 'system' or message.role == 'developer' -%}{{- message.content + '\\n\\n' -}}" +
  "{%- elif message.role == 'user' -%}{{- 'User: ' + message.content + '\\n' -}}" +
  "{%- elif message.role == 'tool' -%}{{- 'Tool: ' + message.content + '\\n' -}}" +
  "{%- else -%}{{- 'Assistant:' -}}{%- if message.content -%}{{- ' ' + message.content -}}{%- endif -%}" +
  '{%- for call in message.tool_calls or [] -%}' +
  "{{- ' <tool_call>\\n{\"name\": \"' + call.function.name + '\", \"arguments\": ' -}}" +
  '{%- if call.function.arguments is string -%}{{- call.function.arguments -}}{%- else -%}{{- call.function.arguments | tojson -}}{%- endif -%}' +
  "{{- '}\\n</tool_call>' -}}" +
  '{%- endfor -%}' +
  "{{- '\\n' -}}" +
  '{%- endif -%}' +
  '{%- endfor -%}' +
  "{%- if add_generation_prompt -%}{{- 'Assistant:' -}}{%- endif -%}";

/** Stop strings the built-in template adds to every chat request: the next user or tool turn. */
export const BUILT_IN_STOP = ['\nUser:', '\nTool:'];

export type ChatTemplateSource = 'tokenizer_config.json' | '--chat-template' | 'built-in';

/** What the edge needs to know about the template (the worker holds the template itself). */
export interface ChatTemplateInfo {
  source: ChatTemplateSource;
  /** Stop strings added to every chat request (the built-in template's turn boundary). */
  stop: string[];
}

export interface ChatTemplateSpec extends ChatTemplateInfo {
  template: string;
  bosToken: string;
  eosToken: string;
}

/** A chat message as the template sees it: content already a string (text parts joined). */
export interface TemplateMessage {
  role: string;
  content: string | Array<{ type: string; text?: string }> | null | undefined;
  name?: string | null;
  /** An assistant message's calls; `arguments` is the JSON text the client sent. */
  tool_calls?: Array<{ id: string; type: 'function'; function: { name: string; arguments: string } }> | null;
  /** A tool message's answer to this call. */
  tool_call_id?: string | null;
}

export interface ChatRenderRequest {
  messages: TemplateMessage[];
  addGenerationPrompt: boolean;
  continueFinalMessage: boolean;
  /** Extra template variables (vLLM's chat_template_kwargs). */
  kwargs: Record<string, unknown>;
  /** The request's tools in Hugging Face's shape (`{type: "function", function: {...}}`), if any. */
  tools?: Array<Record<string, unknown>> | null;
}

export type ChatRenderResult = { ok: true; text: string } | { ok: false; problem: string };

export class ChatTemplateError extends Error {}

const GPT2_EOS = '<|endoftext|>';

/** The template `modelDir` is served with; throws ChatTemplateError for one that does not parse. */
export function loadChatTemplate(modelDir: string, configured?: string): ChatTemplateSpec {
  const config = readTokenizerConfig(modelDir);
  const bosToken = specialToken(config.bos_token) ?? GPT2_EOS;
  const eosToken = specialToken(config.eos_token) ?? GPT2_EOS;
  let spec: ChatTemplateSpec;
  if (configured !== undefined) {
    spec = { source: '--chat-template', template: templateArgument(configured), stop: [], bosToken, eosToken };
  } else {
    const own = configTemplate(config.chat_template);
    spec = own !== null ? { source: 'tokenizer_config.json', template: own, stop: [], bosToken, eosToken } : { source: 'built-in', template: BUILT_IN_TEMPLATE, stop: [...BUILT_IN_STOP], bosToken, eosToken };
  }
  try {
    new Template(spec.template);
  } catch (err) {
    throw new ChatTemplateError(`the chat template (${spec.source}) does not parse: ${(err as Error).message}`);
  }
  return spec;
}

/** --chat-template: a path to a file holding the template, else the template itself (as vLLM). */
function templateArgument(value: string): string {
  if (existsSync(value) && statSync(value).isFile()) return readFileSync(value, 'utf8');
  if (/[{}\n]/.test(value)) return value;
  throw new ChatTemplateError(`--chat-template: "${value.slice(0, 200)}" is neither a file nor a template (no {{ }} or {% %} in it)`);
}

interface TokenizerConfig {
  chat_template?: unknown;
  bos_token?: unknown;
  eos_token?: unknown;
}

function readTokenizerConfig(modelDir: string): TokenizerConfig {
  const file = join(modelDir, TOKENIZER_CONFIG_FILE);
  if (!existsSync(file)) return {};
  try {
    const parsed = JSON.parse(readFileSync(file, 'utf8')) as unknown;
    return parsed !== null && typeof parsed === 'object' ? (parsed as TokenizerConfig) : {};
  } catch (err) {
    throw new ChatTemplateError(`${file}: not valid JSON (${(err as Error).message})`);
  }
}

/** A string, or transformers' list of named templates (the one named "default"). */
function configTemplate(value: unknown): string | null {
  if (typeof value === 'string') return value;
  if (Array.isArray(value)) {
    const named = value.find((t: { name?: unknown }) => t?.name === 'default') as { template?: unknown } | undefined;
    if (typeof named?.template === 'string') return named.template;
  }
  return null;
}

/** `"<|endoftext|>"` or transformers' AddedToken object `{"content": "<|endoftext|>", ...}`. */
function specialToken(value: unknown): string | null {
  if (typeof value === 'string') return value;
  if (value !== null && typeof value === 'object' && typeof (value as { content?: unknown }).content === 'string') return (value as { content: string }).content;
  return null;
}

/** Text of a message's content: a string, or its text parts joined by newlines (as vLLM). */
function contentText(content: TemplateMessage['content']): string {
  if (typeof content === 'string') return content;
  if (content == null) return '';
  return content.map((p) => p.text ?? '').join('\n');
}

/**
 * A call as templates expect it: `arguments` parsed to an object, as transformers' and vLLM's
 * (templates write it back with `tojson`); text that is not JSON stays text.
 */
function templateToolCall(call: NonNullable<TemplateMessage['tool_calls']>[number]): Record<string, unknown> {
  let args: unknown = call.function.arguments;
  try {
    args = JSON.parse(call.function.arguments);
  } catch {
    // kept as the string the client sent
  }
  return { id: call.id, type: call.type, function: { name: call.function.name, arguments: args } };
}

export class ChatRenderer {
  private readonly template: Template;

  constructor(private readonly spec: ChatTemplateSpec) {
    this.template = new Template(spec.template);
  }

  /**
   * The prompt text of a conversation. A template that fails (raise_exception, a missing
   * variable, a type error) is a problem of the request: the result names it.
   */
  render(req: ChatRenderRequest): ChatRenderResult {
    const messages = req.messages.map((m) => {
      const out: Record<string, unknown> = { role: m.role, content: contentText(m.content) };
      if (m.name != null) out.name = m.name;
      if (m.tool_call_id != null) out.tool_call_id = m.tool_call_id;
      if (m.tool_calls != null) out.tool_calls = m.tool_calls.map(templateToolCall);
      return out;
    });
    let text: string;
    try {
      text = this.template.render({
        ...req.kwargs,
        ...(req.tools != null ? { tools: req.tools } : {}),
        messages,
        add_generation_prompt: req.addGenerationPrompt,
        bos_token: this.spec.bosToken,
        eos_token: this.spec.eosToken,
      });
    } catch (err) {
      return { ok: false, problem: `the chat template failed to render: ${(err as Error).message}` };
    }
    if (!req.continueFinalMessage) return { ok: true, text };
    // Leave the final message open: cut what the template wrote after its content (its
    // end-of-turn), as transformers' continue_final_message does.
    const final = (messages[messages.length - 1]!.content as string).trim();
    if (final === '') return { ok: true, text };
    const at = text.lastIndexOf(final);
    if (at < 0) {
      return { ok: false, problem: 'continue_final_message: the final message content does not appear in the rendered chat, so it cannot be continued' };
    }
    return { ok: true, text: text.slice(0, at + final.length) };
  }
}
