// The WebGPU execution provider: Dawn over Vulkan, built into onnxruntime-node's linux-x64
// package. What it can and cannot do through the Node binding is measured in docs/webgpu-notes.md.
import * as ort from 'onnxruntime-node';

/**
 * Why WebGPU cannot run on this machine, when `err` (thrown while creating a webgpu session) says
 * Dawn found no adapter: no Vulkan driver or no Vulkan loader. Null for any other error, which is
 * a real failure and must not be mistaken for a missing driver.
 */
export function webgpuUnavailable(err: unknown): string | null {
  const message = err instanceof Error ? err.message : String(err);
  const found = /Failed to get a WebGPU adapter[^\n]*/.exec(message);
  return found ? `${found[0]} (no Vulkan driver or loader; Debian: sudo scripts/ci/install-vulkan.sh)` : null;
}

export async function createWebGpuSession(
  modelFile: string,
  options: ort.InferenceSession.SessionOptions = {},
): Promise<ort.InferenceSession> {
  return ort.InferenceSession.create(modelFile, { graphOptimizationLevel: 'all', ...options, executionProviders: ['webgpu'] });
}
