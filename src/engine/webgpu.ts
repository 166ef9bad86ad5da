// The WebGPU execution provider: Dawn over Vulkan, built into onnxruntime-node's linux-x64
// package. What it can and cannot do through the Node binding is measured in docs/webgpu-notes.md.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import type * as ort from 'onnxruntime-node';
import { createOrtSession } from './ort-session.js';

export async function createWebGpuSession(
  model: string | Uint8Array,
  options: ort.InferenceSession.SessionOptions = {},
): Promise<ort.InferenceSession> {
  const opts: ort.InferenceSession.SessionOptions = { graphOptimizationLevel: 'all', ...options, executionProviders: ['webgpu'] };
  return createOrtSession(model, opts);
}

/**
 * The device nodes a hardware Vulkan driver needs (NVIDIA's, or a DRM render node for Mesa's
 * Intel/AMD drivers). With none, any adapter Dawn finds is a software one.
 */
export function gpuDeviceNodes(): string[] {
  const list = (dir: string, pattern: RegExp) => (existsSync(dir) ? readdirSync(dir).filter((f) => pattern.test(f)).map((f) => `${dir}/${f}`) : []);
  return [...list('/dev', /^nvidia\d+$/), ...list('/dev/dri', /^renderD\d+$/)];
}

/**
 * Whether the WebGPU device this process created runs on Mesa's software Vulkan driver
 * (lavapipe). ONNX Runtime does not report Dawn's adapter, and every installed Vulkan driver's
 * library is loaded while adapters are enumerated, so neither says which one was picked. But
 * lavapipe starts its rasterizer threads, named `llvmpipe-N`, only when a device is created on
 * it: enumerating its adapter (as Dawn does for every adapter) starts none (checked with a
 * Vulkan program that enumerates and queries devices without creating one). Call it after a
 * WebGPU session exists.
 */
export function softwareAdapterInUse(): boolean {
  try {
    return readdirSync('/proc/self/task').some((t) => {
      try {
        return readFileSync(`/proc/self/task/${t}/comm`, 'utf8').startsWith('llvmpipe-');
      } catch {
        return false; // the thread ended while we looked
      }
    });
  } catch {
    return false; // no /proc: not Linux, and no lavapipe
  }
}
