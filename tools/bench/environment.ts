// What a result file records about where it was measured: software versions and the machine.
// (With --url the versions are those of the benchmark's own installation.)
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface Software {
  node: string;
  onnxruntime_node: string | null;
  ws: string | null;
  package: { name: string; version: string } | null;
  /** The checkout's commit, when this runs from a git clone. */
  git_commit: string | null;
}

export interface Machine {
  cpu_model: string;
  cpus: number;
  memory_bytes: number;
  os: string;
  arch: string;
  /** 1, 5 and 15 minute load averages when the benchmark started (a shared machine's weather). */
  load_average: number[];
}

function packageRoot(): string | null {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    const up = dirname(dir);
    if (up === dir) return null;
    dir = up;
  }
}

function depVersion(name: string): string | null {
  try {
    const require = createRequire(import.meta.url);
    let dir = dirname(require.resolve(name));
    for (;;) {
      const file = join(dir, 'package.json');
      if (existsSync(file)) {
        const pkg = JSON.parse(readFileSync(file, 'utf8')) as { name?: string; version?: string };
        if (pkg.name === name) return pkg.version ?? null;
      }
      const up = dirname(dir);
      if (up === dir) return null;
      dir = up;
    }
  } catch {
    return null;
  }
}

export function software(): Software {
  const root = packageRoot();
  let pkg: Software['package'] = null;
  let commit: string | null = null;
  if (root) {
    const json = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { name: string; version: string };
    pkg = { name: json.name, version: json.version };
    try {
      commit = execFileSync('git', ['rev-parse', 'HEAD'], { cwd: root, stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim() || null;
    } catch {
      commit = null;
    }
  }
  return { node: process.version, onnxruntime_node: depVersion('onnxruntime-node'), ws: depVersion('ws'), package: pkg, git_commit: commit };
}

export function machine(): Machine {
  const cpus = os.cpus();
  return {
    cpu_model: cpus[0]?.model.trim() ?? 'unknown',
    cpus: cpus.length,
    memory_bytes: os.totalmem(),
    os: `${os.type()} ${os.release()}`,
    arch: os.arch(),
    load_average: os.loadavg().map((v) => Math.round(v * 100) / 100),
  };
}
