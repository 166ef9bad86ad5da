// Text <-> token ids for the edge, off the calling thread. TextCodec is what the engine client
// offers; TokenizerThread runs a tokenizer in a worker (the tests' in-process engine has an inline
// codec of its own, test/helpers/in-process-engine.ts). Chat templates are rendered here too:
// rendering and tokenizing a conversation is one trip to the thread.
import type { Worker } from 'node:worker_threads';
import { spawnWorker } from '../util/spawn-worker.js';
import type { ChatRenderer, ChatRenderRequest, ChatTemplateSpec } from './chat-template.js';
import type { Tokenizer } from './tokenizer.js';
import type { CompileResult, ConstraintSpec } from '../structured/constraint.js';

/** A rendered and tokenized conversation, or why its template failed (the client's problem). */
export type ChatEncoding = { ok: true; tokens: number[] } | { ok: false; problem: string };

export interface TextCodec {
  encode(texts: string[]): Promise<number[][]>;
  decode(lists: number[][]): Promise<string[]>;
  /** Renders a conversation with the chat template and tokenizes it, in one trip. */
  encodeChat(request: ChatRenderRequest): Promise<ChatEncoding>;
  compileConstraint(spec: ConstraintSpec): Promise<CompileResult>;
  close(): Promise<void>;
}

export type CodecRequest =
  | { id: number; op: 'encode'; texts: string[] }
  | { id: number; op: 'decode'; lists: number[][] }
  | { id: number; op: 'chat'; request: ChatRenderRequest }
  | { id: number; op: 'constraint'; spec: ConstraintSpec };
export type CodecReply =
  | { type: 'ready' }
  | { type: 'fatal'; message: string }
  | { type: 'result'; id: number; result: number[][] | string[] | ChatEncoding | CompileResult }
  | { type: 'failed'; id: number; message: string };

/** What the tokenizer worker is started with. */
export interface CodecWorkerData {
  modelDir: string;
  chatTemplate: ChatTemplateSpec;
}

/** Render, then tokenize (special tokens in the text recognized): the chat op of every codec. */
export function encodeChat(tokenizer: Tokenizer, renderer: ChatRenderer, request: ChatRenderRequest): ChatEncoding {
  const rendered = renderer.render(request);
  return rendered.ok ? { ok: true, tokens: tokenizer.encode(rendered.text) } : rendered;
}

interface Pending {
  resolve: (result: never) => void;
  reject: (err: Error) => void;
}

export class TokenizerThread implements TextCodec {
  private nextId = 0;
  private readonly pending = new Map<number, Pending>();
  private closing = false;
  private exitError: Error | null = null;

  private constructor(
    private readonly worker: Worker,
    onExit: (reason: string) => void,
  ) {
    worker.on('message', (msg: CodecReply) => {
      if (msg.type !== 'result' && msg.type !== 'failed') return;
      const p = this.pending.get(msg.id);
      this.pending.delete(msg.id);
      if (msg.type === 'result') p?.resolve(msg.result as never);
      else p?.reject(new Error(`tokenizer: ${msg.message}`));
    });
    // An uncaught error in the worker is followed by 'exit'; without a listener it would throw here.
    let failure = '';
    worker.on('error', (err) => (failure = `: ${err.message}`));
    worker.once('exit', (code) => {
      this.exitError = new Error(`the tokenizer worker exited (code ${code})${failure}`);
      for (const p of this.pending.values()) p.reject(this.exitError);
      this.pending.clear();
      if (!this.closing) onExit(this.exitError.message);
    });
  }

  /** Resolves once the worker has loaded `modelDir`'s tokenizer; `onExit` hears an unexpected exit. */
  static async start(data: CodecWorkerData, onExit: (reason: string) => void): Promise<TokenizerThread> {
    const worker = spawnWorker(import.meta.url, 'tokenizer-worker', data);
    await new Promise<void>((resolve, reject) => {
      const onMessage = (msg: CodecReply) => {
        if (msg.type === 'ready') resolve();
        else if (msg.type === 'fatal') reject(new Error(msg.message));
      };
      worker.on('message', onMessage);
      worker.once('error', reject);
      worker.once('exit', (code) => reject(new Error(`the tokenizer worker exited with code ${code} during start-up`)));
    }).finally(() => {
      for (const event of ['message', 'error', 'exit']) worker.removeAllListeners(event); // not Node's own listeners
    });
    return new TokenizerThread(worker, onExit);
  }

  encode(texts: string[]): Promise<number[][]> {
    return this.call({ id: this.nextId++, op: 'encode', texts });
  }

  decode(lists: number[][]): Promise<string[]> {
    return this.call({ id: this.nextId++, op: 'decode', lists });
  }

  encodeChat(request: ChatRenderRequest): Promise<ChatEncoding> {
    return this.call({ id: this.nextId++, op: 'chat', request });
  }

  compileConstraint(spec: ConstraintSpec): Promise<CompileResult> {
    return this.call({ id: this.nextId++, op: 'constraint', spec });
  }

  async close(): Promise<void> {
    this.closing = true;
    await this.worker.terminate();
  }

  private call<T>(req: CodecRequest): Promise<T> {
    if (this.exitError) return Promise.reject(this.exitError);
    return new Promise<T>((resolve, reject) => {
      this.pending.set(req.id, { resolve: resolve as (r: never) => void, reject });
      this.worker.postMessage(req);
    });
  }
}
