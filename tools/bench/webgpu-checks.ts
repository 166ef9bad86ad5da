// What the GPU check (tools/gpu-check.ts) and the WebGPU tests judge the WebGPU runner by: its
// logits against the float32 CPU graph's, within tolerances derived here, and a session error that
// means "no Vulkan driver here" rather than a real failure. The server needs neither: it only
// runs the graphs.

/**
 * Logit tolerances of the WebGPU graphs against the float32 CPU graph. fp32: the same arithmetic
 * in another order, so rounding differences only, far below 1e-3. fp16: a logit's path rounds to
 * float16 (unit roundoff u = 2^-11) at 3 * layers + 3 points (the embeddings, then per layer the
 * layer-norm output, the attention output and the MLP activation, then the final norm and the
 * head); a rounding of a product of two rounded factors is off by up to 2u of the values it
 * touches, and those values (residual stream, pre-softmax scores) exceed the logit that results,
 * taken as twice the largest logit: 4u per point. What the tiny model measures against this bound
 * is in docs/webgpu-notes.md.
 */
export const FP32_LOGIT_TOLERANCE = 1e-3;
export const FP16_UNIT_ROUNDOFF = 2 ** -11;
export function fp16LogitTolerance(largestLogit: number, layers: number): number {
  return 4 * (3 * layers + 3) * FP16_UNIT_ROUNDOFF * Math.max(1, largestLogit);
}

/** Largest |a - b| over logits rows of two runs, and the largest |logit| of the first. */
export function compareLogits(a: readonly Float32Array[], b: readonly Float32Array[]): { maxDiff: number; maxLogit: number } {
  let maxDiff = 0;
  let maxLogit = 0;
  a.forEach((row, i) =>
    row.forEach((v, j) => {
      maxDiff = Math.max(maxDiff, Math.abs(v - b[i]![j]!));
      maxLogit = Math.max(maxLogit, Math.abs(v));
    }),
  );
  return { maxDiff, maxLogit };
}

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
