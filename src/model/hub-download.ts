// Downloads the files of a GPT-2 checkpoint from the Hugging Face hub (or any server with its
// URL layout: HF_ENDPOINT) into a per-commit folder, the way huggingface_hub's snapshot_download
// does: list the repo at a revision, pin its commit, then per file a HEAD for the checksum and
// the real location, a streamed GET into FILE.incomplete (resumed with Range), a checksum check
// and a rename.
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import { pipeline } from 'node:stream/promises';

export interface DownloadProgress {
  file: string;
  /** Bytes on disk so far, resumed bytes included. */
  received: number;
  total: number | null;
}

export interface DownloadRepoOptions {
  repoId: string;
  revision?: string;
  cacheDir: string;
  endpoint?: string;
  token?: string;
  onProgress?: (e: DownloadProgress) => void;
  fetchImpl?: typeof fetch;
}

/** An error meant for the user as is: its message names the repo and the file. */
export class HubDownloadError extends Error {
  override name = 'HubDownloadError';
}

interface Ctx {
  repoId: string;
  revision: string;
  endpoint: string;
  token: string | undefined;
  fetch: typeof fetch;
}

interface FileMeta {
  /** Where the bytes are: the resolve URL itself, or the CDN URL it redirects to. */
  location: string;
  checksum: Checksum | null;
  size: number | null;
}

interface Checksum {
  kind: 'sha256' | 'git-sha1';
  hex: string;
}

// A transfer cut mid-body is resumed with Range this many times in one call before giving up.
const MAX_ATTEMPTS = 4;

export async function downloadRepo(opts: DownloadRepoOptions): Promise<string> {
  if (!/^[\w.-]+(\/[\w.-]+)?$/.test(opts.repoId)) {
    throw new HubDownloadError(`invalid repo id "${opts.repoId}": expected OWNER/NAME, e.g. openai-community/gpt2`);
  }
  const realFetch = opts.fetchImpl ?? globalThis.fetch;
  const ctx: Ctx = {
    repoId: opts.repoId,
    revision: opts.revision ?? 'main',
    endpoint: (opts.endpoint ?? process.env.HF_ENDPOINT ?? 'https://huggingface.co').replace(/\/+$/, ''),
    token: opts.token ?? (process.env.HF_TOKEN || undefined),
    fetch: (input, init) => realFetch(input, init),
  };

  const { commit, files } = await repoInfo(ctx);
  const wanted = pickFiles(ctx, files);
  // Files are fetched at the pinned commit, so a push to the branch mid-download cannot mix versions.
  const rev = commit ?? ctx.revision;
  const dir = path.join(opts.cacheDir, ctx.repoId.replace('/', '--'), rev.replace(/[^\w.-]/g, '_'));
  await mkdir(dir, { recursive: true });

  for (const file of wanted) {
    const meta = await fileMeta(ctx, rev, file);
    const dest = path.join(dir, file);
    const progress = (received: number, total: number | null) => opts.onProgress?.({ file, received, total });
    if (await isComplete(dest, meta)) {
      progress(meta.size ?? 0, meta.size);
      continue;
    }
    const partial = `${dest}.incomplete`;
    await fetchToFile(ctx, file, meta, partial, progress);
    await verify(file, partial, meta);
    await rename(partial, dest);
  }
  return dir;
}

/** The checkpoint files this project uses, or an error saying what the repo lacks. */
function pickFiles(ctx: Ctx, files: Set<string>): string[] {
  const where = `${ctx.repoId}@${ctx.revision}`;
  if (!files.has('config.json')) throw new HubDownloadError(`${where} has no config.json: not a transformers checkpoint`);
  if (!files.has('model.safetensors')) {
    if (files.has('model.safetensors.index.json')) {
      throw new HubDownloadError(`${where} has a sharded safetensors checkpoint; only a single model.safetensors is supported`);
    }
    if (files.has('pytorch_model.bin')) {
      throw new HubDownloadError(
        `${where} has only pytorch_model.bin; only safetensors checkpoints are supported (look for a revision or fork with model.safetensors)`,
      );
    }
    throw new HubDownloadError(`${where} has no model.safetensors`);
  }
  const wanted = ['config.json', 'model.safetensors'];
  if (files.has('tokenizer.json')) wanted.push('tokenizer.json');
  else if (files.has('vocab.json') && files.has('merges.txt')) wanted.push('vocab.json', 'merges.txt');
  else throw new HubDownloadError(`${where} has no tokenizer: neither tokenizer.json nor vocab.json + merges.txt`);
  for (const optional of ['generation_config.json', 'tokenizer_config.json']) {
    if (files.has(optional)) wanted.push(optional);
  }
  return wanted;
}

async function repoInfo(ctx: Ctx): Promise<{ commit: string | null; files: Set<string> }> {
  const url = `${ctx.endpoint}/api/models/${ctx.repoId}/revision/${encodeURIComponent(ctx.revision)}`;
  const res = await request(ctx, 'the file list', url, { headers: authHeaders(ctx) });
  if (!res.ok) throw httpError(ctx, res, 'the file list');
  const body = (await res.json().catch(() => null)) as { sha?: unknown; siblings?: { rfilename?: unknown }[] } | null;
  if (!body || !Array.isArray(body.siblings)) {
    throw new HubDownloadError(`${ctx.endpoint} answered the file list of ${ctx.repoId} without "siblings": is it a Hugging Face hub?`);
  }
  const files = new Set(body.siblings.map((s) => s.rfilename).filter((f): f is string => typeof f === 'string'));
  return { commit: typeof body.sha === 'string' && /^[0-9a-f]{40}$/.test(body.sha) ? body.sha : null, files };
}

// huggingface_hub's get_hf_file_metadata: HEAD without following a redirect to another host,
// because X-Linked-Etag / X-Linked-Size (the LFS object's sha256 and size) come on the hub's 302,
// not on the CDN's answer. Relative redirects (a renamed repo) are followed.
async function fileMeta(ctx: Ctx, rev: string, file: string): Promise<FileMeta> {
  let url = `${ctx.endpoint}/${ctx.repoId}/resolve/${encodeURIComponent(rev)}/${encodeURIComponent(file)}`;
  for (let hops = 0; ; hops++) {
    const res = await request(ctx, file, url, {
      method: 'HEAD',
      redirect: 'manual',
      // Compression would make Content-Length the compressed size.
      headers: { ...authHeaders(ctx), 'Accept-Encoding': 'identity' },
    });
    const location = res.headers.get('location');
    const redirected = res.status >= 300 && res.status < 400 && location !== null;
    if (redirected && location.startsWith('/') && !location.startsWith('//') && hops < 5) {
      url = new URL(location, url).href;
      continue;
    }
    if (!res.ok && !redirected) throw httpError(ctx, res, file);
    const size = res.headers.get('x-linked-size') ?? res.headers.get('content-length');
    return {
      location: redirected ? new URL(location, url).href : url,
      checksum: parseEtag(res.headers.get('x-linked-etag') ?? res.headers.get('etag')),
      size: size !== null && /^\d+$/.test(size) ? Number(size) : null,
    };
  }
}

/** The hub's ETag is the sha256 of an LFS object or the git blob sha1 of a small file; anything else is not checkable. */
function parseEtag(etag: string | null): Checksum | null {
  const hex = etag?.replace(/^W\//, '').replace(/"/g, '').trim().toLowerCase() ?? '';
  if (/^[0-9a-f]{64}$/.test(hex)) return { kind: 'sha256', hex };
  if (/^[0-9a-f]{40}$/.test(hex)) return { kind: 'git-sha1', hex };
  return null;
}

async function fetchToFile(
  ctx: Ctx,
  file: string,
  meta: FileMeta,
  partial: string,
  progress: (received: number, total: number | null) => void,
): Promise<void> {
  // Signed CDN URLs carry their own credentials; the hub token must not leak to another host.
  const sameHost = new URL(meta.location).host === new URL(ctx.endpoint).host;
  const base: Record<string, string> = { ...(sameHost ? authHeaders(ctx) : {}), 'Accept-Encoding': 'identity' };
  for (let attempt = 1; ; attempt++) {
    let have = Math.max(0, await sizeOf(partial));
    if (meta.size !== null && have === meta.size) return;
    if (meta.size !== null && have > meta.size) {
      await rm(partial, { force: true });
      have = 0;
    }
    const headers = have > 0 ? { ...base, Range: `bytes=${have}-` } : base;
    const res = await request(ctx, file, meta.location, { headers });
    const startsAt = Number(/^bytes (\d+)-/.exec(res.headers.get('content-range') ?? '')?.[1] ?? -1);
    if (res.status === 416 || (res.status === 206 && startsAt !== have)) {
      // The partial file does not fit what the server has: start over.
      await res.body?.cancel();
      await rm(partial, { force: true });
      if (attempt >= MAX_ATTEMPTS) throw new HubDownloadError(`${file} of ${ctx.repoId}: the server would not resume the download`);
      continue;
    }
    if (!res.ok || !res.body) throw httpError(ctx, res, file);

    const append = res.status === 206;
    let received = append ? have : 0;
    const length = res.headers.get('content-length');
    const total = meta.size ?? (length !== null ? received + Number(length) : null);
    progress(received, total);
    try {
      await pipeline(
        Readable.fromWeb(res.body as WebReadableStream<Uint8Array>),
        async function* (chunks: AsyncIterable<Buffer>) {
          for await (const chunk of chunks) {
            received += chunk.length;
            progress(received, total);
            yield chunk;
          }
        },
        createWriteStream(partial, { flags: append ? 'a' : 'w' }),
      );
      return;
    } catch (err) {
      if (attempt >= MAX_ATTEMPTS) {
        throw new HubDownloadError(
          `download of ${file} from ${ctx.repoId} was interrupted ${attempt} times (${describe(err)}); run again to resume from ${received} bytes`,
        );
      }
      await new Promise((r) => setTimeout(r, 200 * attempt));
    }
  }
}

async function isComplete(dest: string, meta: FileMeta): Promise<boolean> {
  const size = await sizeOf(dest);
  if (size < 0 || (meta.size !== null && size !== meta.size)) return false;
  if (meta.checksum === null) return meta.size !== null;
  return (await hashFile(dest, meta.checksum.kind)) === meta.checksum.hex;
}

async function verify(file: string, partial: string, meta: FileMeta): Promise<void> {
  const size = await sizeOf(partial);
  if (meta.size !== null && size !== meta.size) {
    await rm(partial, { force: true });
    throw new HubDownloadError(`${file}: expected ${meta.size} bytes, got ${size}; deleted it, run again`);
  }
  if (meta.checksum === null) return;
  const actual = await hashFile(partial, meta.checksum.kind);
  if (actual !== meta.checksum.hex) {
    await rm(partial, { force: true });
    throw new HubDownloadError(
      `checksum mismatch for ${file}: expected ${meta.checksum.kind} ${meta.checksum.hex}, got ${actual}; deleted the download`,
    );
  }
}

async function hashFile(file: string, kind: Checksum['kind']): Promise<string> {
  const hash = createHash(kind === 'sha256' ? 'sha256' : 'sha1');
  // What git hashes for a blob: a header with the size, then the content.
  if (kind === 'git-sha1') hash.update(`blob ${await sizeOf(file)}\0`);
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** The file's size, -1 when it does not exist. */
async function sizeOf(file: string): Promise<number> {
  return stat(file).then(
    (s) => s.size,
    () => -1,
  );
}

function authHeaders(ctx: Ctx): Record<string, string> {
  return ctx.token ? { Authorization: `Bearer ${ctx.token}` } : {};
}

async function request(ctx: Ctx, what: string, url: string, init: RequestInit): Promise<Response> {
  try {
    return await ctx.fetch(url, init);
  } catch (err) {
    const u = new URL(url);
    throw new HubDownloadError(`network error fetching ${what} of ${ctx.repoId} from ${u.origin}${u.pathname}: ${describe(err)}`);
  }
}

function httpError(ctx: Ctx, res: Response, what: string): HubDownloadError {
  const where = `${ctx.repoId}@${ctx.revision}`;
  const code = res.headers.get('x-error-code');
  if (res.status === 401 || res.status === 403) {
    const hint = ctx.token
      ? 'the token in HF_TOKEN was refused: check that it has read access to this repo'
      : 'if the repo is private or gated, set HF_TOKEN to a Hugging Face access token';
    const gated = code === 'GatedRepo' ? ' (gated repo: accept its terms on the hub first)' : '';
    return new HubDownloadError(`access denied (HTTP ${res.status}) fetching ${what} of ${where}${gated}: ${hint}`);
  }
  if (res.status === 404) {
    if (code === 'RepoNotFound') return new HubDownloadError(`repository ${ctx.repoId} not found on ${ctx.endpoint}`);
    if (code === 'RevisionNotFound') return new HubDownloadError(`revision "${ctx.revision}" not found in ${ctx.repoId}`);
    if (code === 'EntryNotFound') return new HubDownloadError(`${what} not found in ${where}`);
    return new HubDownloadError(`${what} of ${where} not found (HTTP 404): check the repo id and the revision`);
  }
  return new HubDownloadError(`HTTP ${res.status} ${res.statusText} fetching ${what} of ${where}`);
}

function describe(err: unknown): string {
  const cause = (err as { cause?: { message?: string; code?: string } })?.cause;
  if (cause?.message || cause?.code) return (cause.message || cause.code) as string;
  return err instanceof Error ? err.message : String(err);
}
