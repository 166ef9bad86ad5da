// A chat request becomes a completion of its rendered conversation: the tokenizer thread renders
// the messages with the chat template and tokenizes the result in one trip, and from there the
// request takes the completion path (the same checks, defaults, engine request and output events).
// What stays chat-only: the generated message's role, vLLM's `echo` of the final message, and
// tools: the template receives them, and `tool_choice` becomes the constraint on the output.
import type { EngineClient } from '../../engine/types.js';
import type { TextConstraintSpec } from '../../structured/constraint.js';
import type { ChatBody, ChatMessage } from '../openai/chat-schema.js';
import type { CompletionBody } from '../openai/completion-schema.js';
import { ApiError } from '../openai/errors.js';
import { structuredOutputSpec } from '../openai/structured-output.js';
import { checkDistinctNames, functionTool, templateTools, toolCallsSpec, type ToolChoice } from '../openai/tools.js';
import { resolveCompletionRequest, type ValidCompletionRequest } from './request.js';

/** Where a request's fields are, for errors: Chat's own names unless told (the Responses API's). */
export interface ChatFieldNames {
  /** The prefix of tool i's function fields (`tools[i].function.`). */
  tool: (i: number) => string;
  toolChoice: string;
  structuredOutput: string;
  messages: string;
}

const CHAT_FIELDS: ChatFieldNames = { tool: (i) => `tools[${i}].function.`, toolChoice: 'tool_choice', structuredOutput: 'response_format', messages: 'messages' };

export interface ChatResolveOptions {
  forceStream?: boolean;
  fields?: ChatFieldNames;
  /** The structured output, when the caller (Responses' `text.format`) decided it; else the body's fields. */
  structuredOutput?: TextConstraintSpec | null;
}

export async function resolveChatRequest(
  body: ChatBody,
  engine: EngineClient,
  options: ChatResolveOptions = {},
): Promise<ValidCompletionRequest> {
  const { fields = CHAT_FIELDS, structuredOutput, ...resolveOptions } = options;
  const continueFinal = body.continue_final_message ?? false;
  // vLLM's default is true; continuing the final message implies false unless said otherwise
  // (the schema refuses both true).
  const addGenerationPrompt = body.add_generation_prompt ?? !continueFinal;

  const tools = (body.tools ?? []).map((t, i) => functionTool(t.function, fields.tool(i)));
  checkDistinctNames(tools);
  const choice = chatToolChoice(body.tool_choice, tools.length > 0);
  const text = structuredOutput !== undefined ? structuredOutput : structuredOutputSpec(body);
  const constraint = toolCallsSpec(tools, choice, body.parallel_tool_calls ?? true, text, { choice: fields.toolChoice, text: fields.structuredOutput });
  if (constraint && continueFinal) {
    throw new ApiError('invalid_value', '`continue_final_message`: cannot be combined with tool calls (set tool_choice to "none")', 'continue_final_message');
  }

  const encoded = await engine.encodeChat({
    messages: body.messages.map((m) => ({ role: m.role, content: m.content, name: m.name, tool_calls: m.tool_calls, tool_call_id: m.tool_call_id })),
    addGenerationPrompt,
    continueFinalMessage: continueFinal,
    kwargs: body.chat_template_kwargs ?? {},
    tools: tools.length > 0 ? templateTools(tools) : null,
  });
  if (!encoded.ok) throw new ApiError('invalid_value', `\`${fields.messages}\`: ${encoded.problem}`, fields.messages);

  const { messages, max_completion_tokens, logprobs, top_logprobs, echo, ...shared } = body;
  const asCompletion: CompletionBody = {
    ...shared,
    // A template may render nothing; like an empty completion prompt, generate from <|endoftext|>.
    prompt: encoded.tokens.length > 0 ? encoded.tokens : [engine.model.eosTokenId],
    // OpenAI's chat default is "as long as the context allows" (null), not the completions' 16.
    max_tokens: max_completion_tokens ?? body.max_tokens ?? null,
    logprobs: logprobs === true ? (top_logprobs ?? 0) : null,
    echo: false,
    stop: [...(body.stop ?? []), ...engine.chatTemplate.stop],
  };
  // With tools in play the constraint is the tools' (which keeps any structured output as the
  // text alternative); without, it is the structured output alone.
  const request = await resolveCompletionRequest(asCompletion, engine, { ...resolveOptions, constraint: constraint ?? text });
  const last = messages[messages.length - 1]!;
  const role = addGenerationPrompt ? 'assistant' : last.role;
  return { ...request, chat: { role, echo: echo === true && last.role === role ? contentText(last) : null, toolCalls: constraint !== null } };
}

/** OpenAI's default: "auto" when tools are given, else "none". */
function chatToolChoice(choice: ChatBody['tool_choice'], hasTools: boolean): ToolChoice {
  if (choice == null) return hasTools ? 'auto' : 'none';
  return typeof choice === 'string' ? choice : { name: choice.function.name };
}

function contentText(message: ChatMessage): string {
  const { content } = message;
  if (typeof content === 'string') return content;
  return (content ?? []).map((p) => p.text ?? '').join('\n');
}
