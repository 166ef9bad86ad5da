// Starts the server as a child process the way a user would (`node dist/src/main.js serve ...`)
// on a free loopback port, waits for /health 200, and always stops it again: SIGTERM (the server
// drains), then SIGKILL if it has not exited in time. Children still alive when this process
// exits (an uncaught error, process.exit) are killed by an 'exit' hook.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { HUGE_PAGES_TUNABLE } from '../../src/util/huge-pages.js';

export interface ServerOptions {
  modelDir: string;
  /** Extra `serve` flags, e.g. ['--max-num-seqs', '1']. */
  args?: string[];
  /** How long the model may take to load. */
  startTimeoutMs?: number;
  /** Called with each line the server prints (its log). */
  onLog?: (line: string) => void;
}

export interface ServerHandle {
  url: string;
  port: number;
  pid: number;
  /** The full command line (for the JSON report). */
  command: string[];
  /** The server's last log lines. */
  logTail(): string;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves once the process is gone. Idempotent. */
  stop(graceMs?: number): Promise<void>;
  readonly exited: Promise<void>;
  isRunning(): boolean;
  /** How it exited ("code 1", "signal SIGTERM"), or null while it runs. */
  exitStatus(): string | null;
}

const live = new Set<ChildProcess>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const child of live) child.kill('SIGKILL');
  });
}

/** PIDs of servers this process started that are still running (for tests and signal handlers). */
export function liveServerPids(): number[] {
  return [...live].map((c) => c.pid!).filter((p) => p !== undefined);
}

/** Stops every server this process started (Ctrl-C path). */
export async function stopAllServers(graceMs = 5000): Promise<void> {
  await Promise.all([...live].map((c) => stopChild(c, graceMs)));
}

/** Ctrl-C or a kill: stop the servers this process started before going (never leave one running). */
export function stopServersOnSignals(name: string): void {
  let stopping = false;
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(signal, () => {
      if (stopping) process.exit(130);
      stopping = true;
      process.stderr.write(`\n${name}: ${signal}: stopping the server(s) ...\n`);
      stopAllServers(5000).finally(() => process.exit(130));
    });
  }
}

/** A port that was free a moment ago: bind port 0 on loopback, read it, close. */
export function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, host, () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolvePort(port));
    });
  });
}

/** How to run the server: compiled dist/src/main.js, or src/main.ts through tsx (tests). */
export function serverEntry(): { execArgv: string[]; script: string; cwd: string } {
  const here = dirname(fileURLToPath(import.meta.url));
  const js = resolve(here, '..', '..', 'src', 'main.js');
  const ts = resolve(here, '..', '..', 'src', 'main.ts');
  const root = findRoot(here);
  if (existsSync(js)) return { execArgv: [], script: js, cwd: root };
  if (existsSync(ts)) return { execArgv: ['--import', 'tsx'], script: ts, cwd: root };
  throw new Error(`cannot find the server entry (${js}); run npm run build`);
}

function findRoot(from: string): string {
  let dir = from;
  while (!existsSync(join(dir, 'package.json'))) {
    const up = dirname(dir);
    if (up === dir) return process.cwd();
    dir = up;
  }
  return dir;
}

/**
 * This process's environment with GLIBC_TUNABLES as `npm start` sets it (huge pages, unless it is
 * set and not empty): what a benchmarked process, ours or a peer, starts with.
 */
export function hugePagesEnv(): NodeJS.ProcessEnv {
  return { ...process.env, GLIBC_TUNABLES: process.env.GLIBC_TUNABLES || HUGE_PAGES_TUNABLE };
}

export async function startServer(opts: ServerOptions): Promise<ServerHandle> {
  installExitHook();
  const port = await freePort();
  const host = '127.0.0.1';
  const entry = serverEntry();
  const args = [
    ...entry.execArgv,
    entry.script,
    'serve',
    '--model',
    resolve(opts.modelDir),
    '--host',
    host,
    '--port',
    String(port),
    '--log-level',
    'warn',
    ...(opts.args ?? []),
  ];
  const child = spawn(process.execPath, args, { cwd: entry.cwd, stdio: ['ignore', 'pipe', 'pipe'], env: hugePagesEnv() });
  live.add(child);
  const tail: string[] = [];
  const onData = (buf: Buffer) => {
    for (const line of buf.toString('utf8').split('\n')) {
      if (!line.trim()) continue;
      tail.push(line);
      if (tail.length > 40) tail.shift();
      opts.onLog?.(line);
    }
  };
  child.stdout!.on('data', onData);
  child.stderr!.on('data', onData);
  let exitInfo: string | null = null;
  const exited = new Promise<void>((res) => {
    child.once('exit', (code, signal) => {
      exitInfo = signal ? `signal ${signal}` : `code ${code}`;
      live.delete(child);
      res();
    });
    child.once('error', (err) => {
      exitInfo = err.message;
      live.delete(child);
      res();
    });
  });
  const url = `http://${host}:${port}`;
  const handle: ServerHandle = {
    url,
    port,
    pid: child.pid ?? -1,
    command: [process.execPath, ...args],
    logTail: () => tail.join('\n'),
    stop: (graceMs = 15000) => stopChild(child, graceMs).then(() => exited),
    exited,
    isRunning: () => exitInfo === null,
    exitStatus: () => exitInfo,
  };
  try {
    await waitHealthy(url, opts.startTimeoutMs ?? 180_000, () => exitInfo);
  } catch (err) {
    await handle.stop(2000);
    const log = handle.logTail();
    throw new Error(`${(err as Error).message}${log ? `\nserver log:\n${log}` : ''}`);
  }
  return handle;
}

async function stopChild(child: ChildProcess, graceMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise<void>((res) => child.once('exit', () => res()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await gone;
  clearTimeout(timer);
}

function getStatus(url: string): Promise<number> {
  return new Promise((res) => {
    const req = http.get(url, { agent: false, timeout: 2000 }, (r) => {
      r.resume();
      res(r.statusCode ?? 0);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => res(0));
  });
}

async function waitHealthy(url: string, timeoutMs: number, exitInfo: () => string | null): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const why = exitInfo();
    if (why !== null) throw new Error(`the server exited (${why}) before it was healthy`);
    if ((await getStatus(`${url}/health`)) === 200) return;
    if (Date.now() > deadline) throw new Error(`the server was not healthy after ${Math.round(timeoutMs / 1000)} s`);
    await new Promise((r) => setTimeout(r, 200));
  }
}
