// The LoRA adapters the engine holds, packed in the step graph's slot layout (lora-graph.ts), by
// the ids the edge gave them. Removing one that requests still use only marks it: the running and
// waiting sequences finish with it, and it is dropped once none is left (the edge sends no new
// request naming it).
import type { LoraAdapter } from '../model/lora-adapter.js';
import { packLoraAdapter } from '../model/lora-graph.js';
import type { Gpt2Config } from '../model/gpt2-checkpoint.js';
import type { RowAdapter } from './lora-slots.js';
import type { LoraOptions } from './types.js';

export class AdapterStore {
  private readonly adapters = new Map<number, RowAdapter & { removed: boolean }>();
  /** Removed adapters still held for sequences that use them. */
  private removedHeld = 0;

  constructor(
    private readonly options: LoraOptions & { model: Pick<Gpt2Config, 'n_layer' | 'n_embd' | 'n_head'> },
    /** Called when an adapter is dropped for good (the runner frees its slot). */
    private readonly onDrop: (id: number) => void,
  ) {}

  add(id: number, adapter: LoraAdapter): void {
    if (this.adapters.has(id)) throw new Error(`LoRA adapter id ${id} is already in use`);
    this.adapters.set(id, { id, weights: packLoraAdapter(adapter, this.options.model, this.options.maxRank), removed: false });
  }

  /** `inUse`: some sequence still runs or waits with it. */
  remove(id: number, inUse: boolean): void {
    const entry = this.adapters.get(id);
    if (!entry) return;
    if (entry.removed) return;
    entry.removed = true;
    if (inUse) this.removedHeld++;
    else this.drop(id);
  }

  /** The adapter a new request may name: known and not removed. */
  usable(id: number): boolean {
    const entry = this.adapters.get(id);
    return entry !== undefined && !entry.removed;
  }

  /** A sequence's adapter for its runner rows (it was usable when the sequence was added). */
  row(id: number): RowAdapter {
    const entry = this.adapters.get(id);
    if (!entry) throw new Error(`LoRA adapter ${id} was dropped while a sequence used it`);
    return entry;
  }

  /**
   * Drops removed adapters that no sequence uses any more; `inUse` (the adapters sequences hold)
   * is asked for only while a removed adapter is still held, not on every step.
   */
  sweep(inUse: () => ReadonlySet<number>): void {
    if (this.removedHeld === 0) return;
    const held = inUse();
    for (const entry of this.adapters.values()) {
      if (entry.removed && !held.has(entry.id)) {
        this.removedHeld--;
        this.drop(entry.id);
      }
    }
  }

  private drop(id: number): void {
    this.adapters.delete(id);
    this.onDrop(id);
  }
}
