// Prometheus metrics of one app, in a registry of its own (tests build many apps per process).
// Engine-side figures (queue, running sequences, KV usage, token totals, steps) are read from the
// engine's last heartbeat once per scrape; latencies are observed at the edge as tokens go out.
//
// The `vllm:` gauges are the Gateway API Inference Extension's model-server protocol (its
// docs/proposals/003-model-server-protocol), under the names its endpoint picker reads by default
// (deploy/gateway/ names them too): the picker routes each request to the replica with the
// shortest queue and the most free KV cache. They repeat figures the `gpt2_` names also carry,
// which dashboards, alerts and the HPA use.
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { EngineStats } from '../engine/types.js';

const PREFIX = 'gpt2_';

/** Engine totals the metrics count up from (heartbeats carry totals; Prometheus wants counters). */
type CountedStat =
  | 'promptTokensTotal'
  | 'generatedTokensTotal'
  | 'preemptions'
  | 'steps'
  | 'stepMsTotal'
  | 'prefixCacheQueries'
  | 'prefixCacheHits'
  | 'specDecodeDrafts'
  | 'specDecodeDraftTokens'
  | 'specDecodeAcceptedTokens';

export class ServerMetrics {
  readonly registry = new Registry();
  readonly requests: Counter<'method' | 'route' | 'status'>;
  readonly timeToFirstToken: Histogram;
  readonly interTokenLatency: Histogram;
  readonly e2eLatency: Histogram<'status'>;
  readonly queueLength: Gauge;
  readonly runningSequences: Gauge;
  readonly pausedSequences: Gauge;
  readonly inflightRequests: Gauge;
  readonly kvUsage: Gauge;
  readonly kvBlocksUsed: Gauge;
  readonly kvCommittedBytes: Gauge;
  readonly steps: Counter;
  readonly stepSeconds: Counter;
  readonly promptTokens: Counter;
  readonly generationTokens: Counter;
  readonly preemptions: Counter;
  readonly gatewayWaiting: Gauge;
  readonly gatewayRunning: Gauge;
  readonly gatewayKvUsage: Gauge;
  readonly cacheConfigInfo: Gauge<'block_size' | 'num_gpu_blocks'>;
  /** Per tenant (the API key's name, never the key; `default` without keys): sequences running, waiting. */
  readonly tenantRunning: Gauge<'tenant'>;
  readonly tenantWaiting: Gauge<'tenant'>;
  /** Prompt tokens admissions looked up in the prefix cache, and those found (gpt2_ and vLLM's names). */
  readonly prefixCacheQueries: Counter[];
  readonly prefixCacheHits: Counter[];
  /** Speculative decoding: verifications, draft tokens checked, draft tokens kept (gpt2_ and vLLM's names). */
  readonly specDecodeDrafts: Counter[];
  readonly specDecodeDraftTokens: Counter[];
  readonly specDecodeAcceptedTokens: Counter[];
  /**
   * LoRA (--enable-lora only): vLLM's `vllm:lora_requests_info`, which the gateway reads for
   * adapter affinity, and requests per adapter.
   */
  readonly loraRequestsInfo: Gauge<'max_lora' | 'running_lora_adapters' | 'waiting_lora_adapters'> | null = null;
  readonly loraRequests: Counter<'adapter'> | null = null;
  private readonly maxLoras: number | undefined;
  /** Engine totals at the last scrape: counters grow by the difference. */
  private last: Pick<EngineStats, CountedStat> | null = null;

  /** `maxLoras`: --max-loras, given only with --enable-lora (the LoRA metrics exist only then). */
  constructor(options: { defaultMetrics?: boolean; maxLoras?: number } = {}) {
    const registers = [this.registry];
    this.requests = new Counter({
      name: `${PREFIX}http_requests_total`,
      help: 'HTTP requests (and websocket completions) by method, route and status code',
      labelNames: ['method', 'route', 'status'],
      registers,
    });
    this.timeToFirstToken = new Histogram({
      name: `${PREFIX}time_to_first_token_seconds`,
      help: 'Seconds from a completion request being accepted to its first generated token',
      buckets: [0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80],
      registers,
    });
    this.interTokenLatency = new Histogram({
      name: `${PREFIX}inter_token_latency_seconds`,
      help: 'Seconds between consecutive generated tokens of one choice',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5],
      registers,
    });
    this.e2eLatency = new Histogram({
      name: `${PREFIX}e2e_request_latency_seconds`,
      help: 'Seconds from a completion request being accepted to its last byte, by status',
      labelNames: ['status'],
      buckets: [0.05, 0.1, 0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120],
      registers,
    });
    this.queueLength = new Gauge({
      name: `${PREFIX}num_requests_waiting`,
      help: 'Engine requests waiting for admission',
      registers,
    });
    this.runningSequences = new Gauge({
      name: `${PREFIX}num_sequences_running`,
      help: 'Sequences in the engine running batch (each choice counts)',
      registers,
    });
    this.pausedSequences = new Gauge({
      name: `${PREFIX}num_sequences_paused`,
      help: 'Sequences kept out of steps because their client stopped reading',
      registers,
    });
    this.inflightRequests = new Gauge({
      name: `${PREFIX}num_requests_inflight`,
      help: 'Requests (completions, chats, /tokenize) admitted and not yet answered (limit: --max-concurrent-requests)',
      registers,
    });
    this.kvUsage = new Gauge({
      name: `${PREFIX}kv_cache_usage_ratio`,
      help: 'Fraction of KV cache blocks in use (0..1)',
      registers,
    });
    this.kvBlocksUsed = new Gauge({
      name: `${PREFIX}kv_cache_blocks_used`,
      help: 'KV cache blocks in use',
      registers,
    });
    this.kvCommittedBytes = new Gauge({
      name: `${PREFIX}kv_cache_committed_bytes`,
      help: 'Process memory the KV cache pools have committed: grows as blocks are first written, up to the pools\' size in the startup log (all of it from the start on huge pages)',
      registers,
    });
    this.steps = new Counter({
      name: `${PREFIX}engine_steps_total`,
      help: 'Engine steps (model runs over the batch)',
      registers,
    });
    this.stepSeconds = new Counter({
      name: `${PREFIX}engine_step_seconds_total`,
      help: 'Seconds spent in engine steps (divide its rate by the steps rate for the mean step time)',
      registers,
    });
    this.promptTokens = new Counter({
      name: `${PREFIX}prompt_tokens_total`,
      help: 'Prompt tokens processed by the engine',
      registers,
    });
    this.generationTokens = new Counter({
      name: `${PREFIX}generation_tokens_total`,
      help: 'Tokens generated by the engine',
      registers,
    });
    this.preemptions = new Counter({
      name: `${PREFIX}preemptions_total`,
      help: 'Sequences preempted by the scheduler for lack of KV memory',
      registers,
    });
    const counter = (name: string, help: string) => new Counter({ name, help, registers });
    this.prefixCacheQueries = [
      counter(`${PREFIX}prefix_cache_queries_total`, 'Prompt tokens looked up in the prefix cache when sequences were admitted'),
      counter('vllm:prefix_cache_queries_total', 'Prompt tokens looked up in the prefix cache (vLLM name)'),
    ];
    this.prefixCacheHits = [
      counter(`${PREFIX}prefix_cache_hits_total`, 'Of the prompt tokens looked up, those found in the prefix cache'),
      counter('vllm:prefix_cache_hits_total', 'Of the prompt tokens looked up, those found in the prefix cache (vLLM name)'),
    ];
    const both = (name: string, help: string) => [counter(`${PREFIX}${name}`, help), counter(`vllm:${name}`, `${help} (vLLM name)`)];
    this.specDecodeDrafts = both('spec_decode_num_drafts_total', 'Speculative decoding: sequence steps that carried draft tokens to verify');
    this.specDecodeDraftTokens = both('spec_decode_num_draft_tokens_total', 'Speculative decoding: draft tokens verified');
    this.specDecodeAcceptedTokens = both('spec_decode_num_accepted_tokens_total', 'Speculative decoding: draft tokens the target model kept');
    this.gatewayWaiting = new Gauge({
      name: 'vllm:num_requests_waiting',
      help: 'Requests waiting for admission to the running batch (gateway protocol TotalQueuedRequests)',
      registers,
    });
    this.gatewayRunning = new Gauge({
      name: 'vllm:num_requests_running',
      help: 'Sequences in the running batch, each choice of a request counting (gateway protocol TotalRunningRequests)',
      registers,
    });
    this.gatewayKvUsage = new Gauge({
      name: 'vllm:kv_cache_usage_perc',
      help: 'Fraction of KV cache blocks in use, 0 to 1 (gateway protocol KVCacheUtilization)',
      registers,
    });
    this.cacheConfigInfo = new Gauge({
      name: 'vllm:cache_config_info',
      help: 'Always 1; its labels are the KV cache block size in tokens and the number of blocks',
      labelNames: ['block_size', 'num_gpu_blocks'],
      registers,
    });
    this.tenantRunning = new Gauge({
      name: `${PREFIX}tenant_sequences_running`,
      help: "Sequences in the running batch per tenant (each choice counts; label: the API key's name, or default without keys)",
      labelNames: ['tenant'],
      registers,
    });
    this.tenantWaiting = new Gauge({
      name: `${PREFIX}tenant_sequences_waiting`,
      help: "Sequences waiting for admission per tenant (each choice counts; label: the API key's name, or default without keys)",
      labelNames: ['tenant'],
      registers,
    });
    this.maxLoras = options.maxLoras;
    if (options.maxLoras !== undefined) {
      this.loraRequestsInfo = new Gauge({
        name: 'vllm:lora_requests_info',
        help: 'Running stats on LoRA requests: one series whose labels are --max-loras and the adapters of running and waiting requests (comma-separated names); its value is when it was set (Unix seconds)',
        labelNames: ['max_lora', 'running_lora_adapters', 'waiting_lora_adapters'],
        registers,
      });
      this.loraRequests = new Counter({
        name: `${PREFIX}lora_requests_total`,
        help: 'Requests (completions, chats, responses) that named a LoRA adapter, per adapter',
        labelNames: ['adapter'],
        registers,
      });
    }
    if (options.defaultMetrics) collectDefaultMetrics({ register: this.registry, prefix: PREFIX });
  }

  /**
   * Sets vLLM's `vllm:lora_requests_info` from the engine's per-adapter counts: the names of the
   * adapters with running sequences and of those with waiting ones (`nameOf` maps the engine's ids
   * to names), stamped with the time in Unix seconds as vLLM does. One series at a time, so a
   * reader never sees a stale set of adapters beside the current one.
   */
  applyLoraStats(adapters: EngineStats['adapters'], nameOf: (id: number) => string | undefined, nowSeconds: number): void {
    if (!this.loraRequestsInfo) return;
    // A name unloaded and loaded again while its old copy still runs has two ids: listed once.
    const names = (pick: (a: EngineStats['adapters'][number]) => number) =>
      [...new Set(adapters.filter((a) => pick(a) > 0).flatMap((a) => nameOf(a.adapter) ?? []))].join(',');
    this.loraRequestsInfo.reset();
    this.loraRequestsInfo.set(
      { max_lora: String(this.maxLoras), running_lora_adapters: names((a) => a.running), waiting_lora_adapters: names((a) => a.waiting) },
      nowSeconds,
    );
  }

  /**
   * Copies engine figures into the gauges; totals become counter increments since the last scrape.
   * `tenants` (the configured keys' names) are reported even when idle; a tenant gone from the
   * keys file stays only while its sequences do, so the labels are bounded by the keys.
   */
  applyEngineStats(stats: EngineStats, tenants: readonly string[]): void {
    this.tenantRunning.reset();
    this.tenantWaiting.reset();
    for (const tenant of tenants) {
      this.tenantRunning.set({ tenant }, 0);
      this.tenantWaiting.set({ tenant }, 0);
    }
    for (const { tenant, running, waiting } of stats.tenants) {
      this.tenantRunning.set({ tenant }, running);
      this.tenantWaiting.set({ tenant }, waiting);
    }
    this.queueLength.set(stats.waiting);
    this.runningSequences.set(stats.running);
    this.pausedSequences.set(stats.paused);
    this.kvUsage.set(stats.kvUsage);
    this.kvBlocksUsed.set(stats.kvBlocksUsed);
    this.kvCommittedBytes.set(stats.kvBytesCommitted);
    this.gatewayWaiting.set(stats.waiting);
    this.gatewayRunning.set(stats.running);
    this.gatewayKvUsage.set(stats.kvUsage);
    if (stats.kvBlocksTotal > 0) {
      this.cacheConfigInfo.reset();
      this.cacheConfigInfo.set({ block_size: String(stats.blockSize), num_gpu_blocks: String(stats.kvBlocksTotal) }, 1);
    }
    const prev = this.last;
    const next = {} as Pick<EngineStats, CountedStat>;
    const counted: Array<[CountedStat, Counter[], number]> = [
      ['promptTokensTotal', [this.promptTokens], 1],
      ['generatedTokensTotal', [this.generationTokens], 1],
      ['preemptions', [this.preemptions], 1],
      ['steps', [this.steps], 1],
      ['stepMsTotal', [this.stepSeconds], 1 / 1000],
      ['prefixCacheQueries', this.prefixCacheQueries, 1],
      ['prefixCacheHits', this.prefixCacheHits, 1],
      ['specDecodeDrafts', this.specDecodeDrafts, 1],
      ['specDecodeDraftTokens', this.specDecodeDraftTokens, 1],
      ['specDecodeAcceptedTokens', this.specDecodeAcceptedTokens, 1],
    ];
    for (const [key, counters, scale] of counted) {
      const before = prev?.[key] ?? 0;
      if (stats[key] > before) for (const c of counters) c.inc((stats[key] - before) * scale);
      next[key] = Math.max(before, stats[key]);
    }
    this.last = next;
  }
}
