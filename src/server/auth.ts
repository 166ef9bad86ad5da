// Optional API key: `Authorization: Bearer <key>` on /v1/*, /tokenize and /detokenize.
// Keys are compared as SHA-256 digests with timingSafeEqual, so neither the key's content nor
// its length leaks through timing.
import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyRequest } from 'fastify';
import { ApiError } from './openai/errors.js';

const PROTECTED = /^\/(v1|tokenize|detokenize)(\/|\?|$)/;

export function isProtectedPath(url: string): boolean {
  return PROTECTED.test(url);
}

function digest(s: string): Buffer {
  return createHash('sha256').update(s, 'utf8').digest();
}

export function makeApiKeyCheck(apiKey: string): (request: FastifyRequest) => void {
  const expected = digest(apiKey);
  return (request) => {
    // The matched route template too, so no encoding trick reaches a protected handler unchecked.
    const route = request.routeOptions?.url;
    if (!isProtectedPath(request.url) && !(route && isProtectedPath(route))) return;
    const header = request.headers.authorization ?? '';
    const match = /^Bearer\s+(.+)$/i.exec(header.trim());
    const given = match ? digest(match[1]!) : Buffer.alloc(expected.length);
    if (!match || !timingSafeEqual(given, expected)) {
      throw new ApiError(
        'invalid_api_key',
        match ? 'Incorrect API key provided' : 'Missing API key: send "Authorization: Bearer <key>"',
        null,
        { 'www-authenticate': 'Bearer' },
      );
    }
  };
}
