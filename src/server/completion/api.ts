// The OpenAI APIs this server speaks differ only in how a job's outputs are shaped and framed;
// the routes (HTTP and websocket) take one of these and share everything else.
import type { ApiError } from '../openai/errors.js';
import { SSE_DONE, sseData } from '../openai/responses.js';
import { chatChunks, collectChat } from './chat-output.js';
import type { CompletionJob } from './job.js';
import { collectCompletion, completionChunks } from './output.js';

/** A streamed response: its chunks, and the chunk that reports an error once streaming began. */
export interface FormattedStream {
  chunks: AsyncIterable<object>;
  error(err: ApiError): object;
}

export interface ResponseFormat {
  /** Websocket frames of this API are named from this (`<frame>.done`, and chunks, see wsFrame). */
  frame: 'completion' | 'chat.completion' | 'response';
  /** The whole (non-streaming) response. */
  collect(job: CompletionJob): Promise<object>;
  stream(job: CompletionJob, options: { includeUsage: boolean }): FormattedStream;
  /** How a chunk is written as Server-Sent Events, and what ends the stream. */
  sse: { chunk(chunk: object): string; end: string };
  /** A chunk as a websocket frame of the client's request `id`. */
  wsFrame(chunk: object, id: string): object;
}

/** Completions and Chat Completions: `data:` chunks ending in [DONE]; websocket `<frame>.chunk` frames. */
function chunkedFormat(
  frame: 'completion' | 'chat.completion',
  collect: ResponseFormat['collect'],
  chunks: (job: CompletionJob, options: { includeUsage: boolean }) => AsyncIterable<{ id: string }>,
): ResponseFormat {
  return {
    frame,
    collect,
    stream: (job, options) => ({ chunks: chunks(job, options), error: (err) => err.toBody() }),
    sse: { chunk: sseData, end: SSE_DONE },
    wsFrame: (chunk, id) => {
      const { id: completionId, ...rest } = chunk as { id: string };
      return { type: `${frame}.chunk`, id, completion_id: completionId, ...rest };
    },
  };
}

export const COMPLETION_FORMAT = chunkedFormat('completion', collectCompletion, completionChunks);
export const CHAT_FORMAT = chunkedFormat('chat.completion', collectChat, chatChunks);
