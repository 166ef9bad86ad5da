// The browser playground (`/`, files under /playground/): one static page that streams
// completions over the websocket. Its files live in the package's playground/ folder, served as
// they are (no build step); the page holds nothing about the server, so it may be served without
// the API key, which the page asks for when the API answers 401.
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import fastifyStatic from '@fastify/static';
import type { FastifyPluginAsync } from 'fastify';

/** The page may load only its own files and talk only to this origin (the API and the websocket). */
const SECURITY_HEADERS = {
  'content-security-policy':
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
};

/**
 * The package's playground/ folder, found from this module whether it runs from src/ (tsx) or
 * from dist/src/ (npm start, the Docker image): the nearest folder above that has package.json.
 */
export function playgroundDir(from: string = path.dirname(fileURLToPath(import.meta.url))): string {
  for (let dir = from; ; dir = path.dirname(dir)) {
    if (existsSync(path.join(dir, 'package.json'))) return path.join(dir, 'playground');
    if (path.dirname(dir) === dir) throw new Error(`no package.json above ${from}: cannot find the playground folder`);
  }
}

export const playgroundRoutes: FastifyPluginAsync<{ dir?: string }> = async (app, options) => {
  const root = options.dir ?? playgroundDir();
  if (!existsSync(path.join(root, 'index.html'))) {
    // A broken install should not cost the API: say so, serve the rest.
    app.log.warn({ dir: root }, 'the playground files are missing, so / is not served (reinstall, or run with --no-playground)');
    return;
  }
  app.addHook('onSend', async (_request, reply) => {
    reply.headers(SECURITY_HEADERS);
  });
  await app.register(fastifyStatic, { root, prefix: '/playground/', index: false, wildcard: false });
  app.get('/', (_request, reply) => reply.sendFile('index.html'));
};
