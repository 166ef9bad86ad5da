// Optional API keys (tenants.ts): `Authorization: Bearer <key>` on /v1/*, /tokenize and /detokenize.
// Keys are compared as SHA-256 digests with timingSafeEqual, so neither the key's content nor
// its length leaks through timing.
//
// Browsers cannot set headers on a websocket, so a websocket upgrade may instead carry the key as
// a subprotocol, `gpt2-serve.bearer.<base64url of the key>`, beside the plain `gpt2-serve` one
// that the server then selects (the key is never echoed back). Kubernetes' API server takes a
// bearer token the same way.
import { timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { FastifyRequest } from 'fastify';
import { ApiError } from './openai/errors.js';
import { keyDigest, type Tenants } from './tenants.js';

const PROTECTED = /^\/(v1|tokenize|detokenize)(\/|\?|$)/;

/** Prefix of the subprotocol that carries the key, base64url-encoded (subprotocols are HTTP tokens). */
export const WS_BEARER_PROTOCOL_PREFIX = 'gpt2-serve.bearer.';

export function isProtectedPath(url: string): boolean {
  return PROTECTED.test(url);
}

function offeredProtocols(request: IncomingMessage): string[] {
  const header = request.headers['sec-websocket-protocol'];
  return typeof header === 'string' ? header.split(',').map((p) => p.trim()).filter((p) => p.length > 0) : [];
}

export function isWebsocketUpgrade(request: IncomingMessage): boolean {
  return request.method === 'GET' && (request.headers.upgrade ?? '').toLowerCase() === 'websocket';
}

/** The key a websocket upgrade carries as a subprotocol, or null. */
function keyFromSubprotocol(request: IncomingMessage): string | null {
  if (!isWebsocketUpgrade(request)) return null;
  const offered = offeredProtocols(request).find((p) => p.startsWith(WS_BEARER_PROTOCOL_PREFIX));
  if (offered === undefined) return null;
  const encoded = offered.slice(WS_BEARER_PROTOCOL_PREFIX.length);
  return /^[A-Za-z0-9_-]+$/.test(encoded) ? Buffer.from(encoded, 'base64url').toString('utf8') : null;
}

/**
 * ws's subprotocol choice: the first one offered that carries no key (a browser that offered
 * subprotocols fails the handshake unless one is selected), never the key itself.
 */
export function selectWebsocketProtocol(protocols: Set<string>): string | false {
  for (const p of protocols) if (!p.startsWith(WS_BEARER_PROTOCOL_PREFIX)) return p;
  return false;
}

/**
 * The check of the API keys (tenants.ts): returns the tenant of a protected request (its key's
 * name), or null for an unprotected path. Every key is compared, so the time taken does not say
 * which one matched. The keys are looked up on each request, so a reload (SIGHUP) applies at once.
 */
export function makeApiKeyCheck(tenants: Tenants): (request: FastifyRequest) => string | null {
  return (request) => {
    // The matched route template too, so no encoding trick reaches a protected handler unchecked.
    const route = request.routeOptions?.url;
    if (!isProtectedPath(request.url) && !(route && isProtectedPath(route))) return null;
    const header = request.headers.authorization ?? '';
    const match = /^Bearer\s+(.+)$/i.exec(header.trim());
    const key = match ? match[1]! : keyFromSubprotocol(request.raw);
    const given = key !== null ? keyDigest(key) : Buffer.alloc(32);
    let tenant: string | null = null;
    for (const k of tenants.keys) {
      if (timingSafeEqual(given, k.digest) && key !== null) tenant = k.name;
    }
    if (tenant !== null) return tenant;
    throw new ApiError(
      'invalid_api_key',
      key !== null ? 'Incorrect API key provided' : 'Missing API key: send "Authorization: Bearer <key>"',
      null,
      { 'www-authenticate': 'Bearer' },
    );
  };
}
