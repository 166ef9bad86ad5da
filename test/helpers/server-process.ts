// The serving CLI (`main()` of src/main.ts) in a child process on 127.0.0.1 and a free port
// (`args` may name others), serving the tiny model: with the scripted runner inside the real worker
// engine (faults can be injected), or with the real ONNX engine, as `npm start` runs it, when no
// runner is given. Its JSON log lines are collected; the process is killed after the test.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ScriptedRunnerOptions } from './scripted-runner.js';
import { MODEL } from './serving.js';
import { tinyModel } from './tiny-model.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const MAIN = path.join(ROOT, 'src', 'main.ts');
const SERVING = path.join(ROOT, 'test', 'helpers', 'serving.ts');

export interface ServerProcess {
  url: URL;
  logs: Array<Record<string, unknown>>;
  stderr: () => string;
  exited: Promise<number | null>;
  kill: (signal: NodeJS.Signals) => void;
}

/**
 * Resolves once the server logged 'model loaded; serving'. With a scripted runner, start-up
 * calibration is off (`--max-step-ms 0`, unless `args` says otherwise) so that the runner's run
 * indexes, which faults are injected at, count requests' steps only.
 */
export async function spawnServer(
  t: { after: (fn: () => unknown) => void },
  args: string[],
  runner?: ScriptedRunnerOptions,
): Promise<ServerProcess> {
  const modelDir = await tinyModel();
  const argv = ['serve', '--host', '127.0.0.1', '--port', '0', ...(runner ? ['--max-step-ms', '0'] : []), '--model', modelDir, '--served-model-name', MODEL, ...args];
  const script = runner
    ? `
    import { main } from ${JSON.stringify(MAIN)};
    import { startScriptedWorkerEngine } from ${JSON.stringify(SERVING)};
    await main(${JSON.stringify(argv)}, process.env, { startEngine: (o) => startScriptedWorkerEngine(o, ${JSON.stringify(runner)}) });
  `
    : `
    import { main } from ${JSON.stringify(MAIN)};
    await main(${JSON.stringify(argv)}, process.env, {});
  `;
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    cwd: ROOT,
    env: { PATH: process.env.PATH },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.after(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  const logs: Array<Record<string, unknown>> = [];
  let buf = '';
  child.stdout.on('data', (d) => {
    buf += String(d);
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (line.trim()) logs.push(JSON.parse(line));
    }
  });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += String(d)));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const deadline = Date.now() + 30_000;
  while (!logs.some((l) => l.msg === 'model loaded; serving')) {
    if (Date.now() > deadline || child.exitCode !== null) {
      const errors = logs.filter((l) => Number(l.level) >= 50).map((l) => JSON.stringify(l));
      assert.fail(`server did not start: ${[...errors, stderr].join('\n')}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  const url = new URL(String(logs.find((l) => l.msg === 'model loaded; serving')!.address));
  return { url, logs, stderr: () => stderr, exited, kill: (signal) => child.kill(signal) };
}
