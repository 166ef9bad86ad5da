// The chat counterpart of the completions' O(1) length check (request.ts), run before any
// rendering or tokenizing.
//
// For completions, a text of L UTF-16 units encodes to at least ceil(L / maxTokenBytes) tokens,
// so a prompt that cannot fit is refused without tokenizing it. A conversation allows no such
// bound: its prompt is what the chat template renders, and a template may drop messages (a
// system message it has no place for, all but the last turns), so however long the messages are,
// the rendered prompt may still fit. What can be bounded is the work. Rendering and tokenizing
// cost grows with the text the template is given, and a prompt that fits the context holds at
// most `limit x maxTokenBytes` UTF-16 units of text (each token covers at most maxTokenBytes
// bytes, and a unit is at least a byte). So a conversation whose messages (contents, names, calls)
// carry more than RENDER_SLACK times that could only fit through a template that drops more than
// half of its text: it is refused, before the tokenizer thread sees it. Fields a template may also
// print (chat_template_kwargs) are bounded by the body limit (--max-body-bytes) alone.
import type { ModelInfo } from '../../engine/types.js';
import type { ChatBody } from '../openai/chat-schema.js';
import { ApiError } from '../openai/errors.js';

/** How much more text than a fitting prompt can hold a conversation may bring (see above). */
export const RENDER_SLACK = 2;

/** Throws 400 context_length_exceeded for a conversation too long to be worth rendering. */
export function checkChatWork(body: ChatBody, model: Pick<ModelInfo, 'contextLength' | 'kvCacheTokens' | 'maxTokenBytes'>, field = 'messages'): void {
  const limit = Math.min(model.contextLength, model.kvCacheTokens);
  const most = limit * model.maxTokenBytes * RENDER_SLACK;
  let units = 0;
  for (const m of body.messages) {
    units += m.name?.length ?? 0;
    if (typeof m.content === 'string') units += m.content.length;
    else for (const part of m.content ?? []) units += part.text?.length ?? 0;
    for (const call of m.tool_calls ?? []) units += call.function.name.length + call.function.arguments.length;
  }
  if (units > most) {
    throw new ApiError(
      'context_length_exceeded',
      `\`${field}\`: the conversation's text is ${units} characters; this server renders at most ${most} ` +
        `(${RENDER_SLACK} x what a prompt of this model's ${limit} tokens can hold). Please shorten the conversation.`,
      field,
    );
  }
}
