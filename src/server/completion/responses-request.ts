// A Responses API request is a chat request in other words: `instructions` and the input items
// become chat messages (a function_call joins the assistant turn it belongs to, its output becomes
// a "tool" message), the flat function tools become Chat's, `text.format` the structured output.
// From there it takes the chat path (admission included); errors still name the Responses fields.
import type { TextConstraintSpec } from '../../structured/constraint.js';
import type { ChatBody, ChatMessage } from '../openai/chat-schema.js';
import type { InputItem, ResponsesBody } from '../openai/responses-schema.js';
import type { ChatFieldNames, ChatResolveOptions } from './chat-request.js';

const RESPONSES_FIELDS: ChatFieldNames = { tool: (i) => `tools[${i}].`, toolChoice: 'tool_choice', structuredOutput: 'text.format', messages: 'input' };

/** The chat request a Responses request is, and how to resolve it (field names, text.format). */
export function responsesAsChat(body: ResponsesBody): { chat: ChatBody; resolveOptions: ChatResolveOptions } {
  const choice = body.tool_choice;
  const chat: ChatBody = {
    model: body.model,
    messages: responsesMessages(body),
    max_completion_tokens: body.max_output_tokens,
    temperature: body.temperature,
    top_p: body.top_p,
    seed: body.seed,
    top_k: body.top_k,
    min_p: body.min_p,
    repetition_penalty: body.repetition_penalty,
    cache_salt: body.cache_salt,
    ignore_eos: body.ignore_eos,
    stream: body.stream,
    tools: body.tools?.map((t) => ({ type: 'function' as const, function: { name: t.name, description: t.description, parameters: t.parameters, strict: t.strict } })),
    tool_choice: choice == null || typeof choice === 'string' ? choice : { type: 'function', function: { name: choice.name } },
    parallel_tool_calls: body.parallel_tool_calls,
    priority: body.priority,
  };
  return { chat, resolveOptions: { fields: RESPONSES_FIELDS, structuredOutput: textFormatSpec(body.text?.format) } };
}

function textFormatSpec(format: NonNullable<ResponsesBody['text']>['format']): TextConstraintSpec | null {
  if (format == null || format.type === 'text') return null;
  if (format.type === 'json_object') return { kind: 'json_object' };
  return { kind: 'json_schema', schema: format.schema, where: 'text.format.schema' };
}

/** `instructions` first (as a system message), then the input, in order. */
function responsesMessages(body: ResponsesBody): ChatMessage[] {
  const messages: ChatMessage[] = [];
  if (body.instructions != null) messages.push({ role: 'system', content: body.instructions });
  if (typeof body.input === 'string') {
    messages.push({ role: 'user', content: body.input });
    return messages;
  }
  for (const item of body.input) messages.push(...itemMessage(item, messages[messages.length - 1]));
  return messages;
}

/** The message an item adds, or none where a call joins the assistant turn before it. */
function itemMessage(item: InputItem, previous: ChatMessage | undefined): ChatMessage[] {
  switch (item.type) {
    case 'function_call': {
      const call = { id: item.call_id, type: 'function' as const, function: { name: item.name, arguments: item.arguments } };
      if (previous?.role === 'assistant') {
        previous.tool_calls = [...(previous.tool_calls ?? []), call];
        return [];
      }
      return [{ role: 'assistant', content: null, tool_calls: [call] }];
    }
    case 'function_call_output':
      return [{ role: 'tool', tool_call_id: item.call_id, content: partsText(item.output) }];
    default:
      return [{ role: item.role, content: partsText(item.content) }];
  }
}

function partsText(content: string | Array<{ text?: string | undefined }>): string {
  return typeof content === 'string' ? content : content.map((p) => p.text ?? '').join('\n');
}
