// Draft-model speculation (`--speculative draft --draft-model DIR`): a smaller GPT-2 with the same
// tokenizer guesses each drafting sequence's next tokens greedily, in the same worker, and the
// target checks them exactly (engine-core.ts `verify`). The draft only decides how many tokens a
// step gains, never which: output is the target's, bit for bit.
//
// The draft's K/V live in a pool of the draft's own shape whose block ids come from the target's
// KV cache manager, as its 'draft' group, so one pool of ids counts both models' memory:
// admission, preemption and the kv usage in /metrics see a draft block as a used block. The draft
// pool therefore has as many block slots as the target's (any id may be handed to either); an id
// is in use in one pool at a time, and a pool's pages are committed only as its blocks are first
// written.
//
// A sequence's draft cache only takes blocks that are free beyond a headroom (one block per running
// sequence for its next target step, plus the blocks the queued prompts need), so drafting never
// preempts anything or delays an admission. The manager frees it when the sequence finishes, is
// cancelled or is preempted, and drops it whole when the scheduler needs room before it would
// preempt anything (rebuilding a draft cache costs a draft-model prefill, a preemption a
// target-model one); either way the proposer hears of it (onDraftDropped) and starts that
// sequence's cache over.
//
// A draft whose context is shorter than the target's drafts a sequence only while the sequence
// fits in it: past that, the draft has no position for its next guess, so the sequence's draft
// cache is freed and the target decodes it alone.
import { basename } from 'node:path';
import { describeWeights, readManifest, type Manifest } from '../model/manifest.js';
import { loadTokenizer, type Tokenizer } from '../model/tokenizer.js';
import { blocksFor, describePool, poolShape, type KvStorage } from './kv-cache.js';
import { createRunner } from './runner-factory.js';
import type { ModelRunner, RunnerRow } from './runner.js';
import type { Scheduler, Sequence } from './scheduler.js';
import type { DraftProposer } from './speculation.js';
import type { EngineOptions } from './types.js';

/** What the draft model holds for one sequence (its blocks: KvCacheManager.draftBlocksOf). */
interface DraftCache {
  /** Leading positions whose K/V the draft pool holds. */
  computed: number;
  /**
   * The draft tokens it fed itself, at the positions just below `computed`: the sequence's own
   * tokens there are known only after verification, and may differ.
   */
  fed: number[];
}

/** A row of one draft-model run, and where its guess goes (none: catching up only). */
interface BatchRow {
  row: RunnerRow;
  cache: DraftCache;
  draft?: { to: number[]; want: number };
}

export interface DraftModelSettings {
  /** Most tokens of a sequence the draft model catches up on in one call (its prefill chunk). */
  maxCatchUp: number;
  /** Positions the draft model can attend to (its manifest's context length). */
  contextLength: number;
  log: (msg: string) => void;
}

export class DraftModelProposer implements DraftProposer {
  private readonly caches = new Map<Sequence, DraftCache>();

  constructor(
    private readonly runner: ModelRunner,
    private readonly scheduler: Scheduler,
    private readonly settings: DraftModelSettings,
  ) {
    scheduler.kv.onDraftDropped = (seq) => this.caches.delete(seq);
  }

  /** The draft model's KV storage (its blocks are the KV cache manager's 'draft' group). */
  get pool(): KvStorage {
    return this.runner.pool;
  }

  /**
   * Loads the draft model folder next to the target's: same tokenizer (checked token by token),
   * same graph contract (readManifest), a runner on the same provider choice, a pool of
   * `numBlocks` slots.
   */
  static async load(
    options: EngineOptions,
    target: { manifest: Manifest; tokenizer: Tokenizer },
    scheduler: Scheduler,
    numBlocks: number,
    log: (msg: string) => void,
  ): Promise<DraftModelProposer> {
    const dir = options.speculation?.draftModelDir;
    if (!dir) throw new Error('--speculative draft needs --draft-model DIR');
    // Errors about the draft's folder name the flag: the target's folder is not the one at fault.
    const asDraft = (err: unknown) => new Error(`--draft-model ${dir}: ${(err as Error).message}`);
    let manifest: Manifest;
    let tokenizer: Tokenizer;
    try {
      manifest = readManifest(dir);
      tokenizer = await loadTokenizer(dir);
    } catch (err) {
      throw asDraft(err);
    }
    const mismatch = tokenizerMismatch(target, { manifest, tokenizer });
    if (mismatch) throw new Error(`the draft model ${dir} does not share the tokenizer of ${options.modelDir}: ${mismatch}`);
    const runner = await createRunner({ ...options, modelDir: dir }, { manifest, numBlocks, log: (msg) => log(`draft model: ${msg}`) }).catch((err: unknown) => {
      throw asDraft(err);
    });
    log(`draft model ${basename(dir)}: ${describeModel(manifest)} (target: ${describeModel(target.manifest)})`);
    // Its pool has a slot for every block id the allocator hands out: once drafts have used them
    // all, the server holds this beside the target's cache.
    log(`draft model KV cache: ${describePool(poolShape(manifest, numBlocks, options.blockSize))}`);
    if (manifest.contextLength < target.manifest.contextLength) {
      log(`draft model context: ${manifest.contextLength} positions, the target ${target.manifest.contextLength}: sequences longer than ${manifest.contextLength} tokens are not drafted`);
    }
    return new DraftModelProposer(runner, scheduler, { maxCatchUp: options.maxNumBatchedTokens, contextLength: manifest.contextLength, log });
  }

  /**
   * Per sequence: roll the draft cache back to what verification kept, catch it up on the tokens
   * it has not seen, then `max[i]` greedy steps; every sequence's row rides the same runner.run
   * per draft step, and only argmaxes come back (no logits copies).
   */
  async propose(seqs: readonly Sequence[], max: readonly number[]): Promise<number[][]> {
    const drafts = seqs.map((): number[] => []);
    let batch: BatchRow[] = [];
    let free = this.spareBlocks();
    seqs.forEach((seq, index) => {
      const L = seq.tokens.length;
      if (L > this.settings.contextLength) {
        // Its next guess would sit past the last position the draft can attend to, and the
        // sequence only grows: it is done drafting, and its draft cache is only memory.
        this.forget(seq);
        return;
      }
      const cache = this.cacheOf(seq);
      rollBack(cache, seq);
      if (L - cache.computed > this.settings.maxCatchUp) {
        // A long catch-up (a new or preempted sequence) is spread over steps, without drafts.
        const reach = this.grow(seq, cache.computed + this.settings.maxCatchUp, free);
        free -= reach.taken;
        if (reach.positions > cache.computed) batch.push({ row: feed(cache, reach.blocks, seq.tokens.slice(cache.computed, reach.positions), false), cache });
        return;
      }
      // The draft feeds positions up to L + want - 2 (its last guess is never fed).
      const wantable = Math.min(max[index]!, this.settings.contextLength - L + 1);
      if (wantable <= 0) return;
      const reach = this.grow(seq, L + wantable - 1, free);
      free -= reach.taken;
      const want = Math.min(wantable, reach.positions - L + 1);
      if (want > 0) batch.push({ row: feed(cache, reach.blocks, seq.tokens.slice(cache.computed, L), true), cache, draft: { to: drafts[index]!, want } });
    });
    try {
      while (batch.length > 0) {
        const outputs = await this.runner.run(batch.map((b) => b.row));
        const next: BatchRow[] = [];
        batch.forEach(({ row, cache, draft }, i) => {
          cache.computed += row.tokens.length;
          if (!draft) return;
          const token = outputs[i]!.argmax;
          draft.to.push(token);
          if (draft.to.length === draft.want) return;
          cache.fed.push(token);
          next.push({ row: feed(cache, row.blocks, [token], true), cache, draft });
        });
        batch = next;
      }
    } catch (err) {
      // A draft failure costs only the drafts: the target runs on, and these caches start over.
      this.settings.log(`draft model run failed (no drafts this step): ${String((err as Error)?.message ?? err)}`);
      for (const seq of seqs) this.forget(seq);
      return seqs.map(() => []);
    } finally {
      this.runner.takeModelMs();
    }
    return drafts;
  }

  /** Frees the sequence's draft cache (its blocks, and what the proposer knows of it). */
  forget(seq: Sequence): void {
    if (this.caches.has(seq)) this.scheduler.kv.dropDraft(seq);
  }

  dispose(): Promise<void> {
    for (const seq of [...this.caches.keys()]) this.forget(seq);
    return this.runner.dispose();
  }

  private cacheOf(seq: Sequence): DraftCache {
    let cache = this.caches.get(seq);
    if (!cache) this.caches.set(seq, (cache = { computed: 0, fed: [] }));
    return cache;
  }

  /**
   * Free blocks the draft caches may take now: what is left after one block per running
   * sequence (its next target step) and the blocks of the queued sequences' current tokens.
   */
  private spareBlocks(): number {
    const { kv, running, waiting, config } = this.scheduler;
    let headroom = running.length;
    for (const seq of waiting) if (!seq.paused) headroom += blocksFor(seq.tokens.length, config.blockSize);
    return kv.freeBlocks - headroom;
  }

  /**
   * Draft blocks for `positions` positions of the sequence, taking at most `free` new ones.
   * Returns the positions they now cover, the blocks taken, and the draft block table.
   */
  private grow(seq: Sequence, positions: number, free: number): { positions: number; taken: number; blocks: readonly number[] } {
    const { kv } = this.scheduler;
    const taken = kv.growDraft(seq, positions, free);
    const blocks = kv.draftBlocksOf(seq);
    return { positions: Math.min(positions, blocks.length * kv.blockSize), taken, blocks };
  }
}

/** The cache's next tokens as a runner row, with the argmax of the last one when `guess`. */
function feed(cache: DraftCache, blocks: readonly number[], tokens: number[], guess: boolean): RunnerRow {
  return { tokens, pastLength: cache.computed, blocks, logitsFrom: guess ? tokens.length - 1 : tokens.length, fetchLogits: false };
}

/**
 * Rolls a draft cache back to the longest prefix it shares with the sequence: the drafts it fed
 * itself stay only as far as verification kept them. At least the sequence's last token is always
 * fed again, for the logits of the first guess.
 */
function rollBack(cache: DraftCache, seq: Sequence): void {
  const start = cache.computed - cache.fed.length;
  let agreed = 0;
  while (agreed < cache.fed.length && seq.tokens[start + agreed] === cache.fed[agreed]) agreed++;
  cache.computed = Math.min(start + agreed, seq.tokens.length - 1);
  cache.fed.length = 0;
}

/**
 * Why the draft model's token ids do not mean what the target's mean (vocabulary size, end of
 * text, or a token's bytes), or null when they do. Drafts are token ids, so this is what "the same
 * tokenizer" has to mean; merges may differ, the draft never encodes text.
 */
function tokenizerMismatch(target: { manifest: Manifest; tokenizer: Tokenizer }, draft: { manifest: Manifest; tokenizer: Tokenizer }): string | null {
  if (draft.manifest.vocabSize !== target.manifest.vocabSize) return `a vocabulary of ${draft.manifest.vocabSize} tokens, not ${target.manifest.vocabSize}`;
  if (draft.manifest.eosTokenId !== target.manifest.eosTokenId) return `end of text is token ${draft.manifest.eosTokenId}, not ${target.manifest.eosTokenId}`;
  for (let id = 0; id < target.tokenizer.vocabSize; id++) {
    if (!sameBytes(draft.tokenizer.tokenBytes(id), target.tokenizer.tokenBytes(id))) {
      return `token ${id} is ${JSON.stringify(draft.tokenizer.tokenText(id))}, not ${JSON.stringify(target.tokenizer.tokenText(id))}`;
    }
  }
  return null;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** `12 layers x 768, ~85M parameters in the layers, int8 (...)`. */
function describeModel(m: Manifest): string {
  const layerParams = 12 * m.numLayers * m.hiddenSize * m.hiddenSize;
  return `${m.numLayers} layers x ${m.hiddenSize}, ~${formatCount(layerParams)} parameters in the layers, ${describeWeights(m)}`;
}

function formatCount(n: number): string {
  return n >= 1e6 ? `${(n / 1e6).toFixed(1)}M` : `${(n / 1e3).toFixed(1)}k`;
}
