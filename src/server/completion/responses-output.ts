// Turns a Responses job's outputs into the `response` object, or into OpenAI's event stream:
// response.created, response.in_progress, then per output item (the message's text, each function
// call) its added / delta / done events, then response.completed (or response.incomplete when
// max_output_tokens cut it short). Both come from one builder, so the stream's deltas always add
// up to the final object.
import type { ApiError } from '../openai/errors.js';
import {
  makeResponseObject,
  type FunctionCallItem,
  type MessageItem,
  type OutputItem,
  type ResponseEvent,
  type ResponseObject,
  type ResponseSettings,
} from '../openai/response-object.js';
import type { FormattedStream, ResponseFormat } from './api.js';
import type { CompletionJob } from './job.js';
import { sseData } from '../openai/responses.js';
import { responseIdPart, textEvents, toolCallId, ToolCallParser, type ToolCallEvent } from './tool-call-parser.js';

type Emit = (type: string, fields: Record<string, unknown>) => void;

/** Builds the output items from a choice's text events, announcing each step through `emit`. */
class ResponseBuilder {
  readonly output: OutputItem[] = [];
  private open: OutputItem | null = null;
  private readonly idPart: string;

  constructor(
    private readonly job: CompletionJob,
    private readonly emit: Emit,
  ) {
    this.idPart = responseIdPart(job.meta.id);
  }

  apply(events: ToolCallEvent[]): void {
    for (const e of events) {
      if (e.type === 'content') this.text(e.text);
      else if (e.type === 'call') this.call(e.index, e.name);
      else this.arguments(e.text);
    }
  }

  /** The text ended; `complete` is false when max_output_tokens cut it. */
  finish(complete: boolean): void {
    // A reply that is neither text nor a call is still a message: an empty one.
    if (this.output.length === 0) this.text('');
    this.close(complete ? 'completed' : 'incomplete');
  }

  private text(delta: string): void {
    let item = this.open;
    if (item?.type !== 'message') {
      this.close('completed');
      item = this.add<MessageItem>({ id: `msg_${this.idPart}`, type: 'message', status: 'in_progress', role: 'assistant', content: [] });
      const part = { type: 'output_text' as const, text: '', annotations: [] as [], logprobs: [] as [] };
      item.content.push(part);
      this.emit('response.content_part.added', { item_id: item.id, output_index: this.output.length - 1, content_index: 0, part: { ...part } });
    }
    if (delta === '') return;
    item.content[0]!.text += delta;
    this.emit('response.output_text.delta', { item_id: item.id, output_index: this.output.length - 1, content_index: 0, delta, logprobs: [] });
  }

  private call(index: number, name: string): void {
    this.close('completed');
    this.add<FunctionCallItem>({
      id: `fc_${this.idPart}_${index}`,
      type: 'function_call',
      status: 'in_progress',
      arguments: '',
      call_id: toolCallId(this.job.meta.id, 0, index),
      name,
    });
  }

  private arguments(delta: string): void {
    const item = this.open as FunctionCallItem;
    item.arguments += delta;
    this.emit('response.function_call_arguments.delta', { item_id: item.id, output_index: this.output.length - 1, delta });
  }

  private add<T extends OutputItem>(item: T): T {
    this.output.push(item);
    this.open = item;
    // A copy as it is now: the builder goes on filling the item before the event is sent.
    this.emit('response.output_item.added', { output_index: this.output.length - 1, item: structuredClone(item) });
    return item;
  }

  private close(status: 'completed' | 'incomplete'): void {
    const item = this.open;
    if (!item) return;
    this.open = null;
    item.status = status;
    const output_index = this.output.length - 1;
    if (item.type === 'message') {
      const part = item.content[0]!;
      this.emit('response.output_text.done', { item_id: item.id, output_index, content_index: 0, text: part.text, logprobs: [] });
      this.emit('response.content_part.done', { item_id: item.id, output_index, content_index: 0, part: { ...part } });
    } else {
      this.emit('response.function_call_arguments.done', { item_id: item.id, output_index, name: item.name, arguments: item.arguments });
    }
    this.emit('response.output_item.done', { output_index, item: structuredClone(item) });
  }
}

/**
 * Runs the job through a builder, pausing after each engine output so that a stream can send
 * what the builder announced; returns the final response object.
 */
async function* responseSteps(job: CompletionJob, settings: ResponseSettings, emit: Emit): AsyncGenerator<void, ResponseObject, undefined> {
  const builder = new ResponseBuilder(job, emit);
  const parser = job.request.chat?.toolCalls ? new ToolCallParser() : null;
  let complete = true;
  for await (const out of job.outputs()) {
    if (out.prompt !== 0 || out.choice !== 0) continue;
    builder.apply(textEvents(parser, out.text, out.type === 'finish'));
    if (out.type === 'finish') complete = out.reason !== 'length';
    yield;
  }
  builder.finish(complete);
  return makeResponseObject(responseHead(job), settings, { status: complete ? 'completed' : 'incomplete', output: builder.output, usage: job.usage });
}

function responseHead(job: CompletionJob) {
  return { id: job.meta.id, createdAt: job.meta.created, model: job.meta.model };
}

/** The Responses API over a job: `settings` are the request's, which every response repeats. */
export function responsesFormat(settings: ResponseSettings): ResponseFormat {
  return {
    frame: 'response',
    async collect(job) {
      const steps = responseSteps(job, settings, () => {});
      for (;;) {
        const step = await steps.next();
        if (step.done) return step.value;
      }
    },
    stream(job): FormattedStream {
      let sequence = 0;
      const event = (type: string, fields: Record<string, unknown>): ResponseEvent => ({ type, sequence_number: sequence++, ...fields });
      async function* events(): AsyncGenerator<ResponseEvent, void, undefined> {
        const inProgress = makeResponseObject(responseHead(job), settings, { status: 'in_progress', output: [], usage: null });
        yield event('response.created', { response: inProgress });
        yield event('response.in_progress', { response: inProgress });
        const pending: ResponseEvent[] = [];
        const steps = responseSteps(job, settings, (type, fields) => pending.push(event(type, fields)));
        for (;;) {
          const step = await steps.next();
          for (const e of pending) yield e;
          pending.length = 0;
          if (step.done) {
            yield event(step.value.status === 'completed' ? 'response.completed' : 'response.incomplete', { response: step.value });
            return;
          }
        }
      }
      return {
        chunks: events(),
        error: (err: ApiError) => event('error', { code: err.code, message: err.message, param: err.param }),
      };
    },
    sse: { chunk: (chunk) => `event: ${(chunk as ResponseEvent).type}\n${sseData(chunk)}`, end: '' },
    wsFrame: (chunk, id) => ({ ...chunk, id }),
  };
}
