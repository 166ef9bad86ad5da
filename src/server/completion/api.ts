// The two OpenAI APIs this server speaks differ only in how a job's outputs are shaped; the
// routes (HTTP and websocket) take one of these and share everything else.
import { chatChunks, collectChat } from './chat-output.js';
import type { CompletionJob } from './job.js';
import { collectCompletion, completionChunks } from './output.js';

export interface ResponseFormat {
  /** Websocket frames of this API are `<frame>.chunk` and `<frame>.done`. */
  frame: 'completion' | 'chat.completion';
  /** The whole (non-streaming) response. */
  collect(job: CompletionJob): Promise<object>;
  /** The stream's chunks; each carries the response id. */
  chunks(job: CompletionJob, options: { includeUsage: boolean }): AsyncGenerator<{ id: string }, void, undefined>;
}

export const COMPLETION_FORMAT: ResponseFormat = { frame: 'completion', collect: collectCompletion, chunks: completionChunks };
export const CHAT_FORMAT: ResponseFormat = { frame: 'chat.completion', collect: collectChat, chunks: chatChunks };
