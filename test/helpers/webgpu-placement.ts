// Child process of the WebGPU placement test: creates the WebGPU runner's sessions with ONNX
// Runtime's verbose log, which goes to this process's stderr (native code, not capturable in
// the test's own process), then exits.   node --import tsx webgpu-placement.ts MODEL_DIR fp16|fp32
import { WebGpuRunner } from '../../src/engine/webgpu-runner.js';
import { readManifest } from '../../src/model/manifest.js';

const [dir, dtype] = process.argv.slice(2) as [string, 'fp16' | 'fp32'];
const runner = await WebGpuRunner.create({
  modelDir: dir,
  manifest: readManifest(dir),
  dtype,
  numBlocks: 4,
  blockSize: 16,
  ortLogLevel: 'verbose',
  session: { logSeverityLevel: 0, logVerbosityLevel: 0 },
});
await runner.dispose();
