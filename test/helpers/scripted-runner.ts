// A deterministic ModelRunner for tests that need the real engine (scheduler, KV blocks,
// sampler, detokenizer, worker, client) around a model whose output is known, and faults that
// can be injected: a run that throws, a worker that exits, a run that hangs.
//
// It behaves like the ONNX runner where the engine can tell: it stores every fed token in its KV
// pool (one float per token, in the pool's real block layout) and computes a row's logits from
// the history it reads back through the row's block table. A scheduler or pool bug (a wrong
// block, a lost preemption, a bad copy-on-write) therefore changes the output, exactly as it
// would with the real model. The engine takes it as EngineHooks.runner: in-process directly, in
// the worker through the tests' own worker entry (scripted-worker.ts; see serving.ts).
//
// The model: after tokens t_0..t_{k-1}, the next token is
//   target = (sum_i t_i * (i + 1) + 7919 * k) mod (V - 1)
// (never V - 1, which is <|endoftext|>, so EOS comes only from logit_bias), with logit 0 for the
// target, -1, -2, -3 for the next three ids and -30 elsewhere: greedy is exact, and sampling has
// a few plausible choices.
import { isMainThread } from 'node:worker_threads';
import { KvPool } from '../../src/engine/kv-cache.js';
import type { EngineHooks } from '../../src/engine/engine-loop.js';
import { rowOutput, type ModelRunner, type RowOutput, type RunnerRow } from '../../src/engine/runner.js';

export interface ScriptedRunnerOptions {
  /** Milliseconds each run blocks its thread, as session.run does. */
  stepDelayMs?: number;
  /** Further milliseconds per token fed (a run's cost grows with its tokens, as the weight matmuls do). */
  msPerToken?: number;
  /** These runs (0-based) throw. */
  failRuns?: number[];
  /** Every run from this one on throws. */
  failFrom?: number;
  /** At this run the worker thread exits with code 3 (ignored on the main thread). */
  exitAtRun?: number;
  /** This run blocks its thread for hangMs (a hung native call). */
  hangAtRun?: number;
  hangMs?: number;
  /**
   * Tokens the model would rather write, in this order, than its usual target: where the history
   * ends with the script's first j tokens (the longest such j), the most likely next token is
   * script[j], and script[0] where it ends with none. A test gets a known text this way (a tool
   * call, say) while every other token keeps its scripted logit.
   */
  script?: number[];
}

const BASE = -30;
const SPREAD = [0, -1, -2, -3];

/** log-softmax of the k-th most likely token (k < 4) over a vocabulary of V. */
export function scriptedLogprob(k: number, vocabSize: number): number {
  const lse = Math.log(SPREAD.reduce((s, l) => s + Math.exp(l), 0) + (vocabSize - SPREAD.length) * Math.exp(BASE));
  return SPREAD[k]! - lse;
}

/** The k-th most likely token after `target` (the runner spreads probability over four ids). */
export function alternative(target: number, k: number, vocabSize: number): number {
  return (target + k) % (vocabSize - 1);
}

/** Running hash of a token history: what the next token depends on. */
function extend(hash: number, token: number, position: number, modulus: number): number {
  return (hash + token * (position + 1)) % modulus;
}

function targetOf(hash: number, length: number, modulus: number): number {
  return (hash + 7919 * length) % modulus;
}

/** The most likely token after `prefix`. */
export function targetAfter(prefix: readonly number[], vocabSize: number): number {
  const m = vocabSize - 1;
  let hash = 0;
  prefix.forEach((t, i) => (hash = extend(hash, t, i, m)));
  return targetOf(hash, prefix.length, m);
}

/** The scripted model's log-probability of `token` after `prefix`. */
export function scriptedScore(prefix: readonly number[], token: number, vocabSize: number): number {
  const target = targetAfter(prefix, vocabSize);
  for (let k = 0; k < SPREAD.length; k++) if (alternative(target, k, vocabSize) === token) return scriptedLogprob(k, vocabSize);
  return BASE - (SPREAD[0]! - scriptedLogprob(0, vocabSize));
}

/** The greedy continuation of `prompt` (what the engine must produce at temperature 0). */
export function greedyTokens(prompt: readonly number[], count: number, vocabSize: number): number[] {
  const m = vocabSize - 1;
  const tokens = [...prompt];
  let hash = 0;
  tokens.forEach((t, i) => (hash = extend(hash, t, i, m)));
  const out: number[] = [];
  for (let k = 0; k < count; k++) {
    const next = targetOf(hash, tokens.length, m);
    hash = extend(hash, next, tokens.length, m);
    tokens.push(next);
    out.push(next);
  }
  return out;
}

function sleepSync(ms: number): void {
  if (ms > 0) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

export class ScriptedRunner implements ModelRunner {
  readonly pool: KvPool;
  private runs = 0;
  private modelMs = 0;

  constructor(
    readonly vocabSize: number,
    numBlocks: number,
    blockSize: number,
    private readonly options: ScriptedRunnerOptions = {},
  ) {
    this.pool = new KvPool({ layers: 1, heads: 1, headDim: 1, numBlocks, blockSize });
  }

  async run(rows: readonly RunnerRow[]): Promise<RowOutput[]> {
    const run = this.runs++;
    const o = this.options;
    if (o.exitAtRun === run && !isMainThread) process.exit(3);
    const start = performance.now();
    const tokens = rows.reduce((n, r) => n + r.tokens.length, 0);
    sleepSync(o.hangAtRun === run ? (o.hangMs ?? 60_000) : (o.stepDelayMs ?? 0) + (o.msPerToken ?? 0) * tokens);
    this.modelMs += performance.now() - start;
    if (o.failRuns?.includes(run) || (o.failFrom !== undefined && run >= o.failFrom)) {
      throw new Error(`scripted runner: injected failure at run ${run}`);
    }
    return rows.map((row) => this.runRow(row));
  }

  takeModelMs(): number {
    const ms = this.modelMs;
    this.modelMs = 0;
    return ms;
  }

  async dispose(): Promise<void> {}

  private runRow(row: RunnerRow): RowOutput {
    const V = this.vocabSize;
    const m = V - 1;
    const { blockSize } = this.pool.shape;
    const keys = this.pool.keys[0]!;
    const script = this.options.script;
    const history: number[] = [];
    let hash = 0;
    for (let pos = 0; pos < row.pastLength; pos++) {
      const token = keys[row.blocks[(pos / blockSize) | 0]! * blockSize + (pos % blockSize)]!;
      hash = extend(hash, token, pos, m);
      if (script) history.push(token);
    }
    const count = row.tokens.length;
    const rows = count - row.logitsFrom;
    const logits = row.fetchLogits && rows > 0 ? new Float32Array(rows * V).fill(BASE) : new Float32Array(0);
    const argmaxes = new BigInt64Array(rows);
    for (let i = 0; i < count; i++) {
      const pos = row.pastLength + i;
      const token = row.tokens[i]!;
      keys[row.blocks[(pos / blockSize) | 0]! * blockSize + (pos % blockSize)] = token;
      hash = extend(hash, token, pos, m);
      if (script) history.push(token);
      if (i < row.logitsFrom) continue;
      const target = script ? scriptTarget(history, script) : targetOf(hash, pos + 1, m);
      argmaxes[i - row.logitsFrom] = BigInt(target);
      if (logits.length) {
        const base = (i - row.logitsFrom) * V;
        SPREAD.forEach((logit, k) => (logits[base + alternative(target, k, V)] = logit));
      }
    }
    return rowOutput(logits, argmaxes);
  }
}

/** script[j] for the longest j < script.length such that `history` ends with script[0..j). */
function scriptTarget(history: readonly number[], script: readonly number[]): number {
  for (let j = Math.min(script.length - 1, history.length); j > 0; j--) {
    let match = true;
    for (let k = 0; k < j && match; k++) match = history[history.length - j + k] === script[k];
    if (match) return script[j]!;
  }
  return script[0]!;
}

/** The runner factory the engine calls in place of ONNX Runtime (EngineHooks.runner). */
export function scriptedRunner(options: ScriptedRunnerOptions = {}): NonNullable<EngineHooks['runner']> {
  return async (ctx) => new ScriptedRunner(ctx.manifest.vocabSize, ctx.numBlocks, ctx.blockSize, options);
}
