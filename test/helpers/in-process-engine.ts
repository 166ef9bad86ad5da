// The engine loop on the test's own thread, with the tokenizer inline: the production
// BaseEngineClient (request routing, liveness, death, shutdown) over the same buildEngineCore and
// EngineLoop the worker runs, for tests that want to step the engine deterministically, or to hand
// it scripts (EngineHooks: a draft proposer, a scripted runner). The server always runs the
// engine in its worker (WorkerEngine).
import { ChatRenderer, type ChatRenderRequest, type ChatTemplateSpec } from '../../src/model/chat-template.js';
import type { Tokenizer } from '../../src/model/tokenizer.js';
import { encodeChat, type ChatEncoding, type TextCodec } from '../../src/model/tokenizer-thread.js';
import { BaseEngineClient, chatTemplateOf } from '../../src/engine/client.js';
import { EngineLoop, buildEngineCore, type EngineHooks } from '../../src/engine/engine-loop.js';
import { EngineStartError } from '../../src/engine/start-error.js';
import type { EngineOptions } from '../../src/engine/types.js';
import type { ToWorker } from '../../src/engine/worker-protocol.js';
import { ConstraintCompiler, type CompileResult, type ConstraintSpec } from '../../src/structured/constraint.js';

export class InProcessEngine extends BaseEngineClient {
  private loop!: EngineLoop;

  static async start(options: EngineOptions, log: (msg: string) => void = () => {}, hooks: EngineHooks = {}): Promise<InProcessEngine> {
    const chat = chatTemplateOf(options);
    const { core, model, tokenizer } = await buildEngineCore(options, log, hooks).catch((err: unknown) => {
      throw new EngineStartError(options.modelDir, (err as Error).message);
    });
    const engine = new InProcessEngine(model, new InlineCodec(tokenizer, chat), chat, options.stepTimeoutMs);
    engine.loop = new EngineLoop(core, (batch, heartbeat) => engine.deliver(batch, heartbeat), {
      log,
      maxConsecutiveStepFailures: options.maxConsecutiveStepFailures,
      onFatal: (reason) => engine.die(reason),
    });
    return engine;
  }

  protected post(command: ToWorker): void {
    if (command.type !== 'shutdown') this.loop.send(command);
  }

  protected stopLoop(drainMs: number): Promise<void> {
    return this.loop.shutdown(drainMs);
  }

  protected async abandon(): Promise<void> {}
}


/** TextCodec on this thread (stepping is synchronous here anyway). */
class InlineCodec implements TextCodec {
  private readonly renderer: ChatRenderer;
  private readonly compiler = new ConstraintCompiler();

  constructor(
    private readonly tokenizer: Tokenizer,
    chatTemplate: ChatTemplateSpec,
  ) {
    this.renderer = new ChatRenderer(chatTemplate);
  }

  async encodeChat(request: ChatRenderRequest): Promise<ChatEncoding> {
    return encodeChat(this.tokenizer, this.renderer, request);
  }

  async encode(texts: string[]): Promise<number[][]> {
    return texts.map((t) => this.tokenizer.encode(t));
  }

  async decode(lists: number[][]): Promise<string[]> {
    return lists.map((ids) => this.tokenizer.decode(ids));
  }

  async compileConstraint(spec: ConstraintSpec): Promise<CompileResult> {
    return this.compiler.compile(spec);
  }

  async close(): Promise<void> {}
}
