// Browsers apply no CORS to websockets: a page on any site may open a socket to this server from
// a visitor's browser and read what comes back (cross-site websocket hijacking). A browser always
// sends the page's Origin with the upgrade, so the server checks it, as Jupyter does: a page of
// this server (the playground), or of an --allowed-origins entry, may connect; any other page is
// refused with 403. Clients that are not browsers send no Origin and are not affected.
import type { FastifyRequest } from 'fastify';
import { isWebsocketUpgrade } from './auth.js';
import { ApiError } from './openai/errors.js';

export function makeWebsocketOriginCheck(allowedOrigins: readonly string[]): (request: FastifyRequest) => void {
  const anyOrigin = allowedOrigins.includes('*');
  const allowed = new Set(allowedOrigins.map((o) => o.toLowerCase()));
  return (request) => {
    const origin = request.headers.origin;
    if (origin === undefined || anyOrigin || !isWebsocketUpgrade(request.raw)) return;
    if (allowed.has(origin.toLowerCase()) || sameHost(origin, request.headers.host)) return;
    throw new ApiError(
      'origin_not_allowed',
      `A page from ${JSON.stringify(origin)} may not open a websocket to this server: only its own pages and the origins in --allowed-origins may`,
    );
  };
}

/** Whether the page's origin names the host (and port) the browser connected to. */
function sameHost(origin: string, host: string | undefined): boolean {
  if (host === undefined) return false;
  try {
    return new URL(origin).host === host.toLowerCase();
  } catch {
    return false; // "null" (sandboxed pages, file://) or malformed
  }
}
