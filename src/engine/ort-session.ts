// Creates the ONNX Runtime session for the CPU or CUDA provider (the host-pool runner). `auto`
// here prefers CUDA and falls back to CPU with one log line saying why; a CPU-only machine never
// touches CUDA code beyond a file-existence check. The engine's full `auto` order (CUDA, then
// WebGPU, then CPU) is in runner-factory.ts.
import { closeSync, existsSync, openSync, readSync, statSync } from 'node:fs';
import { constants as bufferConstants } from 'node:buffer';
import { createRequire } from 'node:module';
import { basename, dirname, join } from 'node:path';
import * as ort from 'onnxruntime-node';
import type { ExecutionProviderChoice, OrtLogLevel } from './types.js';

export type ExecutionProvider = 'cpu' | 'cuda';

export interface SessionResult {
  session: ort.InferenceSession;
  provider: ExecutionProvider;
}

export interface SessionOptions {
  /** `webgpu` is not this module's: runner-factory.ts builds the WebGPU runner. */
  executionProvider: Exclude<ExecutionProviderChoice, 'webgpu'>;
  intraOpThreads: number;
  /** ONNX Runtime's process-wide log level (default: its own, 'warning'). */
  ortLogLevel?: OrtLogLevel;
  log: (msg: string) => void;
  /** Why an explicit `cpu` or `cuda` was chosen, for the log line (default: requested). */
  why?: string;
  /** The graph's external weights file (next to the graph), read into memory; see inMemoryWeights. */
  externalData?: string;
  /** How that file is read (default WEIGHTS_READ_LIMITS; tests pass small limits). */
  weightsRead?: WeightsReadLimits;
  /** ONNX Runtime's profiler on: its trace goes to `<prefix>_<date>.json` when profiling ends. */
  profilePrefix?: string;
}

export interface WeightsReadLimits {
  /** Largest file read into one Buffer; ONNX Runtime maps a bigger one itself. */
  maxBytes: number;
  /**
   * Bytes per read call. One fs read moves at most 2 GiB - 1 bytes, which is also why
   * readFileSync refuses bigger files: the file is read in pieces into one preallocated Buffer.
   */
  chunkBytes: number;
}

export const WEIGHTS_READ_LIMITS: WeightsReadLimits = { maxBytes: bufferConstants.MAX_LENGTH, chunkBytes: 64 * 2 ** 20 };

/** The file's bytes in one Buffer, read `chunkBytes` at a time; null when it is over `maxBytes`. */
export function readWeightsFile(file: string, limits: WeightsReadLimits = WEIGHTS_READ_LIMITS): Buffer | null {
  const size = statSync(file).size;
  if (size > limits.maxBytes) return null;
  const data = Buffer.allocUnsafe(size);
  const fd = openSync(file, 'r');
  try {
    for (let at = 0; at < size; ) {
      const read = readSync(fd, data, at, Math.min(limits.chunkBytes, size - at), at);
      if (read === 0) throw new Error(`${file} ended at byte ${at} of ${size} while it was being read (was it replaced?)`);
      at += read;
    }
  } finally {
    closeSync(fd);
  }
  return data;
}

/**
 * The weights file, read into process memory for ONNX Runtime (which otherwise maps the file and
 * reads the weights through that mapping every step). Under memory pressure the kernel may drop a
 * mapping's clean pages and read them back while the model runs, which makes step times erratic
 * and slow; memory the process owns is not dropped (figures: docs/benchmark.md, "Figures behind
 * the code"). Files too big for one Buffer (over buffer.constants.MAX_LENGTH) keep the mapping,
 * with a log line saying so. ONNX Runtime copies the weights while it creates the session, so the
 * buffer is garbage once the session exists (test/model-export.test.ts overwrites it and checks
 * the logits); holding it would keep the file's size in memory twice.
 */
function inMemoryWeights(file: string | undefined, limits: WeightsReadLimits, log: (msg: string) => void): ort.InferenceSession.SessionOptions {
  if (!file || !existsSync(file)) return {};
  const data = readWeightsFile(file, limits);
  if (data) return { externalData: [{ path: basename(file), data }] };
  log(`weights: ${basename(file)} (${statSync(file).size} bytes) is larger than one buffer (${limits.maxBytes} bytes): ONNX Runtime reads it through a file mapping`);
  return {};
}

/** The CUDA provider is a separate download (design.md); without it, asking for CUDA cannot work. */
export function cudaProviderPath(): string {
  const pkg = dirname(createRequire(import.meta.url).resolve('onnxruntime-node/package.json'));
  return join(pkg, 'bin', 'napi-v6', `${process.platform}`, process.arch, 'libonnxruntime_providers_cuda.so');
}

/** `model`: the graph's file, or its bytes (a graph built at load time, whose external data is opts.externalData). */
export async function createSession(model: string | Uint8Array, opts: SessionOptions): Promise<SessionResult> {
  if (opts.ortLogLevel) ort.env.logLevel = opts.ortLogLevel;
  const base: ort.InferenceSession.SessionOptions = {
    graphOptimizationLevel: 'all',
    executionMode: 'sequential',
    enableCpuMemArena: true,
    enableMemPattern: true,
    ...(opts.intraOpThreads > 0 ? { intraOpNumThreads: opts.intraOpThreads } : {}),
    ...inMemoryWeights(opts.externalData, opts.weightsRead ?? WEIGHTS_READ_LIMITS, opts.log),
    ...(opts.profilePrefix !== undefined ? { enableProfiling: true, profileFilePrefix: opts.profilePrefix } : {}),
  };
  const cpu = async (why: string): Promise<SessionResult> => {
    opts.log(`execution provider: cpu (${why})`);
    return { session: await createOrtSession(model, { ...base, executionProviders: ['cpu'] }), provider: 'cpu' };
  };
  if (opts.executionProvider === 'cpu') return cpu(opts.why ?? 'requested');
  const cudaLib = cudaProviderPath();
  if (!existsSync(cudaLib)) {
    const why = `the CUDA provider library is not installed (${cudaLib}; install with ONNXRUNTIME_NODE_INSTALL=cuda12)`;
    if (opts.executionProvider === 'cuda') throw new Error(`--execution-provider cuda: ${why}`);
    return cpu(`auto: ${why}`);
  }
  try {
    const session = await createOrtSession(model, { ...base, executionProviders: [{ name: 'cuda', deviceId: 0 }] });
    opts.log(`execution provider: cuda (device 0, ${opts.why ?? (opts.executionProvider === 'auto' ? 'auto' : 'requested')})`);
    return { session, provider: 'cuda' };
  } catch (err) {
    if (opts.executionProvider === 'cuda') throw new Error(`--execution-provider cuda: ${(err as Error).message}`);
    return cpu(`auto: the CUDA session failed: ${(err as Error).message.split('\n')[0]}`);
  }
}

/** InferenceSession.create from a file or from bytes (its overloads take one or the other). */
export function createOrtSession(model: string | Uint8Array, options: ort.InferenceSession.SessionOptions): Promise<ort.InferenceSession> {
  return typeof model === 'string' ? ort.InferenceSession.create(model, options) : ort.InferenceSession.create(model, options);
}
