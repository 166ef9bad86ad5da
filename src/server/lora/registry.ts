// The LoRA adapters this server serves, by the names requests use as `model` (--enable-lora).
// The engine knows adapters only by number: every time an adapter goes into the engine it gets a
// new id (never reused, so no prefix-cache block of an earlier load can be mistaken for this
// one's), and the engine keeps it until told to remove it.
//
// At most --max-cpu-loras adapters are in the engine at once. Loading one more (a request for an
// adapter that is registered but not in memory, or POST /v1/load_lora_adapter) removes the least
// recently used adapter that no request is using; when every one in memory is in use, the count
// goes over the limit for the time being, and the surplus is removed as requests end. An adapter
// out of memory stays registered and is read again from its folder when a request names it: in a
// worker thread (read-off-thread.ts), while the request is admitted and tokenized; the request
// goes to the engine once the adapter is there (LoraLease.ready), and every request that names it
// meanwhile waits for the same read.
//
// A request holds a lease from admission until its response is done (start.ts), so an adapter is
// never removed from the engine between the edge choosing its id and the engine receiving the
// request. Unloading by name (POST /v1/unload_lora_adapter) forgets the name at once, so new
// requests get 404, and removes the adapter from the engine when its last lease ends.
import { basename } from 'node:path';
import type { EngineClient } from '../../engine/types.js';
import type { Gpt2Config } from '../../model/gpt2-checkpoint.js';
import { readLoraAdapter, type LoraAdapter } from '../../model/lora-adapter.js';
import { ApiError } from '../openai/errors.js';
import type { LoraModuleSpec } from './module-spec.js';
import { readLoraAdapterOffThread } from './read-off-thread.js';

export interface LoraRegistryOptions {
  /** The base model's config.json, which every adapter must fit. */
  baseConfig: Gpt2Config;
  /** The base model's served name: no adapter may take it. */
  baseModel: string;
  /** --max-lora-rank */
  maxRank: number;
  /** --max-cpu-loras */
  maxCpuLoras: number;
  /** Reads an adapter folder while serving (default: readLoraAdapterOffThread); tests inject slow or failing ones. */
  read?: (dir: string) => Promise<LoraAdapter>;
}

/** A request's hold on an adapter: the engine id to submit with; release once the request is over. */
export interface LoraLease {
  adapter: number;
  /**
   * Resolves once the engine has the adapter (at once unless its folder is being read again);
   * rejects with ApiError 500 when the folder no longer reads (the error's cause says why).
   */
  ready: Promise<void>;
  release(): void;
}

const READY: Promise<void> = Promise.resolve();

/** What /v1/models lists per adapter. */
export interface LoraCard {
  name: string;
  path: string;
  /** --lora-modules' base_model_name, else undefined: the served base model. */
  parent: string | undefined;
}

interface Entry extends LoraCard {
  /** Its engine id while in memory (or being read into it), else null. */
  id: number | null;
  /** While its folder is read again: resolves once the engine has it. */
  loading: Promise<void> | null;
  /** Requests holding a lease on it. */
  inflight: number;
  /** When it was last loaded or leased, on the registry's own counter (recency is all that matters). */
  lastUsed: number;
}

/** A --lora-modules adapter that cannot be served (or no adapter can: adapter null): the server does not start. */
export class LoraModuleError extends Error {
  constructor(
    readonly adapter: string | null,
    message: string,
  ) {
    super(message);
    this.name = 'LoraModuleError';
  }
}

export class LoraRegistry {
  private readonly entries = new Map<string, Entry>();
  /** Unloaded by name while requests still held them: engine id -> name, until the last lease ends. */
  private readonly draining = new Map<number, { name: string; inflight: number }>();
  /** Read at start, given to the engine once it is up (attach). */
  private startup: Array<[Entry, LoraAdapter]> = [];
  private engine: EngineClient | null = null;
  /** Engine ids whose adapter is still being read: a removal waits for the read (the engine ignores removing an id it never had). */
  private readonly pending = new Map<number, Promise<void>>();
  private nextId = 1;
  private tick = 0;

  private constructor(private readonly options: LoraRegistryOptions) {}

  /**
   * Reads and checks every --lora-modules adapter against the base model; throws LoraModuleError
   * naming the first that cannot be served. The first --max-cpu-loras are kept for the engine.
   */
  static open(modules: readonly LoraModuleSpec[], options: LoraRegistryOptions): LoraRegistry {
    const registry = new LoraRegistry(options);
    for (const m of modules) {
      const problem = registry.nameProblem(m.name);
      if (problem) throw new LoraModuleError(m.name, `--lora-modules ${m.name}: ${problem}`);
      let adapter: LoraAdapter;
      try {
        adapter = registry.read(m.path);
      } catch (err) {
        throw new LoraModuleError(m.name, `--lora-modules ${m.name}: ${(err as Error).message}`);
      }
      const entry = registry.register(m.name, m.path, m.baseModelName);
      // The rest were read only to be checked: memory holds --max-cpu-loras at most.
      if (registry.startup.length < options.maxCpuLoras) registry.startup.push([entry, adapter]);
    }
    return registry;
  }

  /** The engine is up: the adapters read at start go into it. */
  attach(engine: EngineClient): void {
    this.engine = engine;
    for (const [entry, adapter] of this.startup) if (this.entries.get(entry.name) === entry) this.addToEngine(entry, adapter);
    this.startup = [];
  }

  has(name: string): boolean {
    return this.entries.has(name);
  }

  get cards(): LoraCard[] {
    return [...this.entries.values()].map(({ name, path, parent }) => ({ name, path, parent }));
  }

  /** The name of engine adapter `id` (for metrics), unloaded ones still in use included. */
  nameOf(id: number): string | undefined {
    for (const e of this.entries.values()) if (e.id === id) return e.name;
    return this.draining.get(id)?.name;
  }

  /**
   * A lease on adapter `name` for one request; when it is not in memory, its folder is read again
   * (off this thread: the lease's `ready` says when the engine has it). Throws ApiError 404 for a
   * name not registered.
   */
  acquire(name: string): LoraLease {
    const entry = this.entries.get(name);
    if (!entry) throw new ApiError('model_not_found', `The model \`${name.slice(0, 200)}\` does not exist`, 'model');
    if (entry.id === null) this.readAgain(entry);
    const id = entry.id!;
    const ready = entry.loading ?? READY;
    entry.inflight++;
    entry.lastUsed = ++this.tick;
    this.evictIdle();
    let released = false;
    return {
      adapter: id,
      ready,
      release: () => {
        if (released) return;
        released = true;
        this.release(name, entry, id);
      },
    };
  }

  /**
   * POST /v1/load_lora_adapter: registers `name` and puts it in memory. Rejects with ApiError 400
   * for a name taken (by the base model or an adapter) or a folder that cannot be served, naming why.
   */
  async load(name: string, path: string): Promise<void> {
    const problem = this.nameProblem(name);
    if (problem) throw new ApiError('invalid_value', `\`lora_name\`: ${problem}`, 'lora_name');
    let adapter: LoraAdapter;
    try {
      adapter = await this.readWhileServing(path);
    } catch (err) {
      throw new ApiError('invalid_value', `\`lora_path\`: ${(err as Error).message}`, 'lora_path');
    }
    // Another load of the same name may have finished while this one read.
    const taken = this.nameProblem(name);
    if (taken) throw new ApiError('invalid_value', `\`lora_name\`: ${taken}`, 'lora_name');
    const entry = this.register(name, path, undefined);
    this.addToEngine(entry, adapter);
    this.evictIdle(entry);
  }

  /** POST /v1/unload_lora_adapter: forgets `name` (new requests get 404); false if there is none. */
  unload(name: string): boolean {
    const entry = this.entries.get(name);
    if (!entry) return false;
    this.entries.delete(name);
    if (entry.id === null) return true;
    if (entry.inflight === 0) this.removeFromEngine(entry.id);
    else this.draining.set(entry.id, { name, inflight: entry.inflight });
    return true;
  }

  private release(name: string, entry: Entry, id: number): void {
    const draining = this.draining.get(id);
    if (draining) {
      if (--draining.inflight === 0) {
        this.draining.delete(id);
        this.removeFromEngine(id);
      }
      return;
    }
    // Not draining: the lease's entry is still the registered one (a name unloaded and loaded
    // again is a new entry, and this lease's adapter was draining then).
    entry.inflight--;
    if (this.entries.get(name) === entry) this.evictIdle();
  }

  /** Removes least recently used idle adapters while more than --max-cpu-loras are in memory. */
  private evictIdle(keep?: Entry): void {
    while (this.inMemory > this.options.maxCpuLoras) {
      let victim: Entry | null = null;
      for (const e of this.entries.values()) {
        if (e.id === null || e.inflight > 0 || e === keep) continue;
        if (!victim || e.lastUsed < victim.lastUsed) victim = e;
      }
      if (!victim) return; // every one is in use: over the limit until some request ends
      this.removeFromEngine(victim.id!);
      victim.id = null;
    }
  }

  /** Adapters the engine holds for us, unloaded ones still in use included. */
  private get inMemory(): number {
    let n = this.draining.size;
    for (const e of this.entries.values()) if (e.id !== null) n++;
    return n;
  }

  private addToEngine(entry: Entry, adapter: LoraAdapter): void {
    entry.id = this.nextId++;
    entry.lastUsed = ++this.tick;
    this.engine!.addAdapter(entry.id, adapter);
  }

  /**
   * Gives `entry` its new engine id now and reads its folder again; the engine gets the adapter
   * when the read is done. A failed read leaves the entry out of memory (the next request tries
   * again) and fails the requests that waited for it.
   */
  private readAgain(entry: Entry): void {
    const id = this.nextId++;
    entry.id = id;
    const loading = this.readWhileServing(entry.path).then(
      (adapter) => this.engine!.addAdapter(id, adapter),
      (err: Error) => {
        if (entry.id === id) entry.id = null;
        // The operator's folder changed under the server: the client hears that much, the log why.
        const apiErr = new ApiError('internal_error', `The LoRA adapter \`${entry.name}\` could not be read from its folder`);
        apiErr.cause = err.message;
        throw apiErr;
      },
    );
    entry.loading = loading;
    this.pending.set(id, loading);
    void loading.then(
      () => this.settled(entry, id, loading),
      () => this.settled(entry, id, loading),
    );
  }

  private settled(entry: Entry, id: number, loading: Promise<void>): void {
    this.pending.delete(id);
    if (entry.loading === loading) entry.loading = null;
  }

  /** Takes adapter `id` out of the engine, after its read if that is still going on. */
  private removeFromEngine(id: number): void {
    const read = this.pending.get(id);
    if (!read) return this.engine!.removeAdapter(id);
    void read.then(
      () => this.engine!.removeAdapter(id),
      () => {},
    );
  }

  private readWhileServing(path: string): Promise<LoraAdapter> {
    const { read, baseConfig, maxRank } = this.options;
    return read ? read(path) : readLoraAdapterOffThread({ dir: path, base: baseConfig, maxRank });
  }

  private register(name: string, path: string, parent: string | undefined): Entry {
    const entry: Entry = { name, path, parent, id: null, loading: null, inflight: 0, lastUsed: ++this.tick };
    this.entries.set(name, entry);
    return entry;
  }

  private read(path: string): LoraAdapter {
    return readLoraAdapter(path, this.options.baseConfig, { maxRank: this.options.maxRank });
  }

  private nameProblem(name: string): string | null {
    if (name === this.options.baseModel) return `the name \`${name}\` is the base model's`;
    if (this.entries.has(name)) return `the LoRA adapter \`${name}\` has already been loaded`;
    return null;
  }
}

/** The base model's served name before the engine is up: --served-model-name, else the folder's name (as the engine names it). */
export function servedBaseName(servedModelName: string | undefined, modelDir: string): string {
  return servedModelName ?? basename(modelDir);
}
