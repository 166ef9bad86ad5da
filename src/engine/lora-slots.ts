// The LoRA slots the serving graph reads (src/model/lora-graph.ts): per layer and module, one
// stacked lora_A ([slots, R, in]) and one stacked lora_B ([slots, out, R]) of --max-loras slots,
// each slot an adapter's packed matrices (PackedLora). An adapter keeps its slot from step to
// step while the slot is not needed by another, so a slot is filled once per activation, not per
// step; a step feeds the first k slots, up to the highest one it uses, as zero-copy views (CPU
// inputs wrap JS memory), or, when every token has one adapter, that slot alone.
// Which slot an adapter sits in, and what the other slots hold, does not change its rows' bits
// (lora-graph.ts), so slots may be reassigned freely.
import * as ort from 'onnxruntime-node';
import { LORA_MODULES, loraModuleShape } from '../model/lora-adapter.js';
import { loraInputName, type PackedLora } from '../model/lora-graph.js';

/** An adapter as a runner row names it: its engine id (unique per load) and packed weights. */
export interface RowAdapter {
  id: number;
  weights: PackedLora;
}

export class LoraSlots {
  /** [layer][module]: per slot, [rank, in] (lora_A) and [out, rank] (scaled lora_B). */
  private readonly stacked: Array<Array<{ a: Float32Array; b: Float32Array; inF: number; outF: number }>>;
  /** The adapter id in each slot (null: empty), and when each slot was last used. */
  private readonly holder: Array<number | null>;
  private readonly lastUsed: number[];
  private clock = 0;
  /** Feeds for the first k slots, built once per k (index k). */
  private readonly feedsBySlots: Array<Record<string, ort.Tensor> | undefined> = [];
  /** Feeds of one slot alone (index: the slot). */
  private readonly feedsOfSlot: Array<Record<string, ort.Tensor> | undefined> = [];

  constructor(
    layers: number,
    embd: number,
    readonly maxSlots: number,
    /** Every adapter is zero-padded to this rank (--max-lora-rank). */
    readonly rank: number,
  ) {
    this.stacked = Array.from({ length: layers }, () =>
      LORA_MODULES.map((module) => {
        const [inF, outF] = loraModuleShape(module, embd);
        return { a: new Float32Array(maxSlots * rank * inF), b: new Float32Array(maxSlots * rank * outF), inF, outF };
      }),
    );
    this.holder = new Array(maxSlots).fill(null);
    this.lastUsed = new Array(maxSlots).fill(-1);
  }

  /**
   * Slots for a step's adapters (at most maxSlots distinct: the scheduler admits no more), filling
   * newcomers into the lowest slots no adapter of this step holds, least recently used first.
   * Returns each adapter's slot and how many slots the step feeds.
   */
  place(adapters: ReadonlyMap<number, PackedLora>): { slotOf: Map<number, number>; count: number } {
    if (adapters.size > this.maxSlots) throw new Error(`a step uses ${adapters.size} LoRA adapters; --max-loras is ${this.maxSlots}`);
    const tick = ++this.clock;
    const slotOf = new Map<number, number>();
    for (const id of adapters.keys()) {
      const slot = this.holder.indexOf(id);
      if (slot >= 0) {
        slotOf.set(id, slot);
        this.lastUsed[slot] = tick;
      }
    }
    for (const [id, weights] of adapters) {
      if (slotOf.has(id)) continue;
      const slot = this.freeSlot(tick);
      this.fill(slot, weights);
      this.holder[slot] = id;
      this.lastUsed[slot] = tick;
      slotOf.set(id, slot);
    }
    let count = 0;
    for (const slot of slotOf.values()) count = Math.max(count, slot + 1);
    return { slotOf, count };
  }

  /** An adapter that is gone: its slot is free (ids are never reused, so this is only tidiness). */
  release(id: number): void {
    const slot = this.holder.indexOf(id);
    if (slot >= 0) {
      this.holder[slot] = null;
      this.lastUsed[slot] = -1;
    }
  }

  /** The graph's adapter matrices for the first `count` slots (zero-copy views, built once per count). */
  feeds(count: number): Record<string, ort.Tensor> {
    return (this.feedsBySlots[count] ??= this.views(0, count));
  }

  /** One slot's adapter matrices alone, as a one-slot step feeds them (zero-copy views, built once per slot). */
  slotFeeds(slot: number): Record<string, ort.Tensor> {
    return (this.feedsOfSlot[slot] ??= this.views(slot, 1));
  }

  /** Views of `count` slots from `first` on, as the graph's inputs. */
  private views(first: number, count: number): Record<string, ort.Tensor> {
    const R = this.rank;
    const built: Record<string, ort.Tensor> = {};
    this.stacked.forEach((modules, layer) =>
      modules.forEach(({ a, b, inF, outF }, m) => {
        built[loraInputName(layer, LORA_MODULES[m]!, 'a')] = new ort.Tensor('float32', a.subarray(first * inF * R, (first + count) * inF * R), [count, 1, R, inF]);
        built[loraInputName(layer, LORA_MODULES[m]!, 'b')] = new ort.Tensor('float32', b.subarray(first * R * outF, (first + count) * R * outF), [count, 1, outF, R]);
      }),
    );
    return built;
  }

  /** The lowest slot not used this step: empty first, then least recently used. */
  private freeSlot(tick: number): number {
    let best = -1;
    for (let s = 0; s < this.maxSlots; s++) {
      if (this.lastUsed[s] === tick) continue;
      if (this.holder[s] === null) return s;
      if (best < 0 || this.lastUsed[s]! < this.lastUsed[best]!) best = s;
    }
    if (best < 0) throw new Error('no free LoRA slot');
    return best;
  }

  private fill(slot: number, weights: PackedLora): void {
    if (weights.rank !== this.rank) throw new Error(`a LoRA adapter packed at rank ${weights.rank} does not fit slots of rank ${this.rank}`);
    this.stacked.forEach((modules, layer) =>
      modules.forEach(({ a, b, inF, outF }, m) => {
        const packed = weights.layers[layer]?.[m] ?? null;
        const R = this.rank;
        if (packed) {
          a.set(packed.a, slot * inF * R);
          b.set(packed.b, slot * R * outF);
        } else {
          a.fill(0, slot * inF * R, (slot + 1) * inF * R);
          b.fill(0, slot * R * outF, (slot + 1) * R * outF);
        }
      }),
    );
  }
}
