// Which ModelRunner the engine drives: ONNX Runtime on the chosen execution provider. `auto`
// prefers CUDA, then WebGPU on a hardware GPU, then CPU, and logs one line saying which and why.
// (Tests that need the real engine around a scripted runner pass their own runner factory through
// EngineHooks instead; see engine-loop.ts.)
import { existsSync } from 'node:fs';
import type { Manifest } from '../model/manifest.js';
import { cudaProviderPath } from './ort-session.js';
import { createOnnxRunner, type CreateRunnerOptions, type ModelRunner } from './runner.js';
import type { EngineOptions } from './types.js';
import { WebGpuRunner, deviceDtypeFor } from './webgpu-runner.js';
import { gpuDeviceNodes, softwareAdapterInUse } from './webgpu.js';

/** What a model runner is built for: the model, and the KV pool's size. */
export interface RunnerContext {
  manifest: Manifest;
  /** KV blocks in the pool, the null block included. */
  numBlocks: number;
  log: (msg: string) => void;
}

export async function createRunner(options: EngineOptions, ctx: RunnerContext): Promise<ModelRunner> {
  const host = (executionProvider: CreateRunnerOptions['executionProvider'], why?: string) =>
    createOnnxRunner({
      modelDir: options.modelDir,
      manifest: ctx.manifest,
      executionProvider,
      why,
      intraOpThreads: options.intraOpThreads,
      ortLogLevel: options.ortLogLevel,
      ...(options.ortProfile !== undefined ? { profilePrefix: options.ortProfile } : {}),
      numBlocks: ctx.numBlocks,
      blockSize: options.blockSize,
      log: ctx.log,
      ...(options.lora ? { lora: options.lora } : {}),
    }).then((r) => r.runner);
  const webgpu = () =>
    WebGpuRunner.create({
      modelDir: options.modelDir,
      manifest: ctx.manifest,
      dtype: deviceDtypeFor(ctx.manifest),
      numBlocks: ctx.numBlocks,
      blockSize: options.blockSize,
      ortLogLevel: options.ortLogLevel,
    });
  const webgpuLine = (runner: WebGpuRunner, why: string) =>
    `execution provider: webgpu (${why}; ${runner.dtype} step graph, KV pool of ${(runner.poolBytes / 2 ** 20).toFixed(1)} MiB on the device)`;

  const choice = options.executionProvider;
  if (choice === 'cpu' || choice === 'cuda') return host(choice);
  // The WebGPU step graph (webgpu-graph.ts) has no LoRA inputs.
  if (options.lora && choice === 'webgpu') throw new Error('--enable-lora needs the cpu or cuda execution provider; the webgpu step graph has no LoRA adapters');
  if (choice === 'webgpu') {
    const runner = await webgpu();
    ctx.log(webgpuLine(runner, softwareAdapterInUse() ? 'requested; a software Vulkan adapter (lavapipe): slower than the CPU provider' : 'requested'));
    return runner;
  }

  const passed: string[] = [];
  const cudaLib = cudaProviderPath();
  if (existsSync(cudaLib)) {
    try {
      return await host('cuda', 'auto');
    } catch (err) {
      passed.push(`the CUDA session failed: ${firstLine(err)}`);
    }
  } else {
    passed.push('no CUDA provider library');
  }
  // Without a GPU device node any adapter Dawn finds is a software one: skip WebGPU without
  // creating a device (that alone starts lavapipe's threads, a start-up cost for nothing).
  const nodes = options.lora ? [] : gpuDeviceNodes();
  if (options.lora) {
    passed.push('--enable-lora (the WebGPU step graph has no LoRA adapters)');
  } else if (nodes.length === 0) {
    passed.push('no GPU device node for WebGPU (/dev/nvidia*, /dev/dri/renderD*)');
  } else {
    try {
      const runner = await webgpu();
      if (!softwareAdapterInUse()) {
        ctx.log(webgpuLine(runner, `auto: ${[...passed, `GPU device ${nodes.join(', ')}`].join('; ')}`));
        return runner;
      }
      await runner.dispose();
      passed.push('WebGPU found only a software Vulkan adapter (lavapipe), slower than the CPU provider');
    } catch (err) {
      passed.push(`WebGPU failed: ${firstLine(err)}`);
    }
  }
  return host('cpu', `auto: ${passed.join('; ')}`);
}

function firstLine(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).split('\n')[0]!;
}
