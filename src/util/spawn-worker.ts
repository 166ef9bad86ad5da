// Starts a worker thread from a module beside the caller. Built code runs the .js file; under
// tsx (tests, dev) the worker first registers tsx, then imports the .ts file.
import { Worker } from 'node:worker_threads';

/** `callerUrl` is the caller's import.meta.url; `name` the sibling module without extension. */
export function spawnWorker(callerUrl: string, name: string, workerData: unknown): Worker {
  if (!callerUrl.endsWith('.ts')) return new Worker(new URL(`./${name}.js`, callerUrl), { workerData });
  const entry = new URL(`./${name}.ts`, callerUrl).href;
  const bootstrap = `import('tsx/esm/api').then((tsx) => { tsx.register(); return import(${JSON.stringify(entry)}); })`;
  return new Worker(bootstrap, { eval: true, workerData });
}
