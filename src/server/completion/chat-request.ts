// A chat request becomes a completion of its rendered conversation: the tokenizer thread renders
// the messages with the chat template and tokenizes the result in one trip, and from there the
// request takes the completion path (the same checks, defaults, engine request and output events).
// What stays chat-only: the generated message's role, and vLLM's `echo` of the final message.
import type { EngineClient } from '../../engine/types.js';
import type { ChatBody, ChatMessage } from '../openai/chat-schema.js';
import type { CompletionBody } from '../openai/completion-schema.js';
import { ApiError } from '../openai/errors.js';
import { checkModel, resolveCompletionRequest, type RequestLimits, type ValidCompletionRequest } from './request.js';

export async function resolveChatRequest(
  body: ChatBody,
  engine: EngineClient,
  limits: RequestLimits,
  options: { forceStream?: boolean } = {},
): Promise<ValidCompletionRequest> {
  checkModel(body.model, limits.servedModel);
  const continueFinal = body.continue_final_message ?? false;
  // vLLM's default is true; continuing the final message implies false unless said otherwise
  // (the schema refuses both true).
  const addGenerationPrompt = body.add_generation_prompt ?? !continueFinal;
  const encoded = await engine.encodeChat({
    messages: body.messages.map((m) => ({ role: m.role, content: m.content, name: m.name })),
    addGenerationPrompt,
    continueFinalMessage: continueFinal,
    kwargs: body.chat_template_kwargs ?? {},
  });
  if (!encoded.ok) throw new ApiError('invalid_value', `\`messages\`: ${encoded.problem}`, 'messages');

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
  const request = await resolveCompletionRequest(asCompletion, engine, limits, options);
  const last = messages[messages.length - 1]!;
  const role = addGenerationPrompt ? 'assistant' : last.role;
  return { ...request, chat: { role, echo: echo === true && last.role === role ? contentText(last) : null } };
}

function contentText(message: ChatMessage): string {
  const { content } = message;
  if (typeof content === 'string') return content;
  return (content ?? []).map((p) => p.text ?? '').join('\n');
}
