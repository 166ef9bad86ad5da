// downloadRepo against a local stand-in for the Hugging Face hub: the same URLs, headers and
// redirects (api/models/.../revision/..., resolve/... with HEAD and GET, LFS objects behind a 302
// to a "CDN" on another port carrying X-Linked-Etag / X-Linked-Size), Range, and a token check.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { downloadRepo } from '../src/model/hub-download.js';

delete process.env.HF_TOKEN;
delete process.env.HF_ENDPOINT;

const SHA = 'a'.repeat(40);
const REPO = 'test-org/tiny-gpt2';

interface FakeFile {
  content: Buffer;
  lfs?: boolean;
  /** Served instead of the true checksum, to simulate a corrupted transfer. */
  wrongEtag?: string;
}

interface HubOptions {
  files: Record<string, FakeFile>;
  token?: string;
  /** LFS file whose first GET is cut after this many bytes. */
  cut?: { file: string; after: number };
  /** The CDN ignores Range and always answers 200 with the whole body. */
  ignoreRange?: boolean;
}

interface Hit {
  server: 'hub' | 'cdn';
  method: string;
  url: string;
  range?: string;
  auth?: string;
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const gitSha1 = (b: Buffer) => createHash('sha1').update(`blob ${b.length}\0`).update(b).digest('hex');

async function listen(server: http.Server): Promise<string> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

/** Answers with the whole body or the requested Range of it. */
function sendBody(req: http.IncomingMessage, res: http.ServerResponse, body: Buffer, headers: http.OutgoingHttpHeaders, ranges: boolean) {
  const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
  if (ranges && m) {
    const start = Number(m[1]);
    if (start >= body.length) {
      res.writeHead(416, { 'Content-Range': `bytes */${body.length}` }).end();
      return;
    }
    res.writeHead(206, { ...headers, 'Content-Length': body.length - start, 'Content-Range': `bytes ${start}-${body.length - 1}/${body.length}` });
    res.end(req.method === 'HEAD' ? undefined : body.subarray(start));
    return;
  }
  res.writeHead(200, { ...headers, 'Content-Length': body.length });
  res.end(req.method === 'HEAD' ? undefined : body);
}

async function startHub(t: TestContext, opts: HubOptions) {
  const hits: Hit[] = [];
  const log = (server: Hit['server'], req: http.IncomingMessage) =>
    hits.push({ server, method: req.method ?? '', url: req.url ?? '', range: req.headers.range, auth: req.headers.authorization });
  const byHash = new Map(Object.entries(opts.files).map(([name, f]) => [sha256(f.content), name]));
  let cutDone = false;

  const cdn = http.createServer((req, res) => {
    log('cdn', req);
    const name = byHash.get(req.url?.replace('/objects/', '') ?? '');
    if (!name) return void res.writeHead(404).end();
    const body = opts.files[name].content;
    if (opts.cut?.file === name && req.method === 'GET' && !cutDone) {
      cutDone = true;
      res.writeHead(200, { 'Content-Length': body.length });
      // Flush part of the body, then drop the connection as a broken network would.
      res.write(body.subarray(0, opts.cut.after), () => setTimeout(() => res.socket?.destroy(), 20));
      return;
    }
    sendBody(req, res, body, {}, !opts.ignoreRange);
  });
  const cdnUrl = await listen(cdn);

  const hub = http.createServer((req, res) => {
    log('hub', req);
    if (opts.token && req.headers.authorization !== `Bearer ${opts.token}`) {
      return void res.writeHead(401, { 'X-Error-Code': 'RepoNotFound' }).end();
    }
    const url = new URL(req.url ?? '/', 'http://x');
    const api = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/([^/]+)$/.exec(url.pathname);
    const resolve = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname);
    const m = api ?? resolve;
    if (!m || m[1] !== REPO) return void res.writeHead(404, { 'X-Error-Code': 'RepoNotFound' }).end();
    const rev = decodeURIComponent(m[2]);
    if (rev !== 'main' && rev !== SHA) return void res.writeHead(404, { 'X-Error-Code': 'RevisionNotFound' }).end();
    if (api) {
      const siblings = Object.keys(opts.files).map((rfilename) => ({ rfilename }));
      res.writeHead(200, { 'Content-Type': 'application/json' }).end(JSON.stringify({ id: REPO, sha: SHA, siblings }));
      return;
    }
    const name = decodeURIComponent(m[3]);
    const file = opts.files[name];
    if (!file) return void res.writeHead(404, { 'X-Error-Code': 'EntryNotFound' }).end();
    if (file.lfs) {
      const etag = file.wrongEtag ?? sha256(file.content);
      res.writeHead(302, {
        Location: `${cdnUrl}/objects/${sha256(file.content)}`,
        'X-Linked-Etag': `"${etag}"`,
        'X-Linked-Size': file.content.length,
        'X-Repo-Commit': SHA,
        ETag: `"${gitSha1(Buffer.from('version https://git-lfs.github.com/spec/v1\n'))}"`,
      });
      return void res.end();
    }
    const etag = file.wrongEtag ?? gitSha1(file.content);
    sendBody(req, res, file.content, { ETag: `"${etag}"`, 'X-Repo-Commit': SHA }, true);
  });
  const endpoint = await listen(hub);

  t.after(() => {
    hub.closeAllConnections();
    cdn.closeAllConnections();
    hub.close();
    cdn.close();
  });
  return { endpoint, hits, gets: (name?: string) => hits.filter((h) => h.method === 'GET' && (!name || h.url.endsWith(name))) };
}

async function tempDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'hub-download-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

function gpt2Files(): Record<string, FakeFile> {
  return {
    'config.json': { content: Buffer.from('{"model_type":"gpt2","n_layer":2}\n') },
    'model.safetensors': { content: randomBytes(300_000), lfs: true },
    'pytorch_model.bin': { content: randomBytes(1000), lfs: true },
    'tokenizer.json': { content: Buffer.from('{"model":{"type":"BPE"}}') },
    'tokenizer_config.json': { content: Buffer.from('{}') },
    'generation_config.json': { content: Buffer.from('{"bos_token_id":50256}') },
    'README.md': { content: Buffer.from('# tiny') },
  };
}

const snapshotDir = (cacheDir: string) => path.join(cacheDir, 'test-org--tiny-gpt2', SHA);

test('downloads the wanted files at the pinned commit and checks them', async (t) => {
  const files = gpt2Files();
  const hub = await startHub(t, { files, token: 'secret' });
  const cacheDir = await tempDir(t);
  const progress = new Map<string, { received: number; total: number | null }>();

  const dir = await downloadRepo({
    repoId: REPO,
    cacheDir,
    endpoint: hub.endpoint,
    token: 'secret',
    onProgress: (e) => progress.set(e.file, e),
  });

  assert.equal(dir, snapshotDir(cacheDir));
  const want = ['config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json'];
  assert.deepEqual((await readdir(dir)).sort(), want);
  for (const name of want) assert.ok((await readFile(path.join(dir, name))).equals(files[name].content), name);
  // Files come from the commit the revision resolved to, not from the moving branch.
  assert.ok(hub.hits.filter((h) => h.url.includes('/resolve/')).every((h) => h.url.includes(`/resolve/${SHA}/`)));
  // The token goes to the hub, never to the CDN that the LFS redirect points at.
  assert.ok(hub.hits.filter((h) => h.server === 'hub').every((h) => h.auth === 'Bearer secret'));
  assert.ok(hub.hits.filter((h) => h.server === 'cdn').every((h) => h.auth === undefined));
  assert.equal(hub.gets('pytorch_model.bin').length, 0);
  assert.deepEqual(progress.get('model.safetensors'), { file: 'model.safetensors', received: 300_000, total: 300_000 });
});

test('resumes a transfer cut mid-body with Range, in the same call', async (t) => {
  const files = gpt2Files();
  const hub = await startHub(t, { files, cut: { file: 'model.safetensors', after: 120_000 } });
  const cacheDir = await tempDir(t);

  const dir = await downloadRepo({ repoId: REPO, cacheDir, endpoint: hub.endpoint });

  const cdnGets = hub.hits.filter((h) => h.server === 'cdn' && h.method === 'GET' && h.url.includes(sha256(files['model.safetensors'].content)));
  assert.equal(cdnGets.length, 2);
  assert.equal(cdnGets[0].range, undefined);
  const from = Number(/^bytes=(\d+)-$/.exec(cdnGets[1].range ?? '')?.[1]);
  assert.ok(from > 0 && from <= 120_000, `second request resumed from ${cdnGets[1].range}`);
  assert.ok((await readFile(path.join(dir, 'model.safetensors'))).equals(files['model.safetensors'].content));
});

test('resumes from a .incomplete file left by an earlier run', async (t) => {
  const files = gpt2Files();
  const hub = await startHub(t, { files });
  const cacheDir = await tempDir(t);
  const content = files['model.safetensors'].content;
  await mkdir(snapshotDir(cacheDir), { recursive: true });
  await writeFile(path.join(snapshotDir(cacheDir), 'model.safetensors.incomplete'), content.subarray(0, 1000));

  const dir = await downloadRepo({ repoId: REPO, cacheDir, endpoint: hub.endpoint });

  const cdnGets = hub.hits.filter((h) => h.server === 'cdn' && h.method === 'GET');
  assert.equal(cdnGets.length, 1);
  assert.equal(cdnGets[0].range, 'bytes=1000-');
  assert.ok((await readFile(path.join(dir, 'model.safetensors'))).equals(content));
  assert.ok(!(await readdir(dir)).some((f) => f.endsWith('.incomplete')));
});

test('starts over when the server ignores Range (200 instead of 206)', async (t) => {
  const files = gpt2Files();
  const hub = await startHub(t, { files, ignoreRange: true });
  const cacheDir = await tempDir(t);
  const content = files['model.safetensors'].content;
  await mkdir(snapshotDir(cacheDir), { recursive: true });
  await writeFile(path.join(snapshotDir(cacheDir), 'model.safetensors.incomplete'), content.subarray(0, 1000));

  const dir = await downloadRepo({ repoId: REPO, cacheDir, endpoint: hub.endpoint });

  assert.equal(hub.hits.find((h) => h.server === 'cdn' && h.method === 'GET')?.range, 'bytes=1000-');
  assert.ok((await readFile(path.join(dir, 'model.safetensors'))).equals(content));
});

test('a checksum mismatch fails naming the file and both hashes, and leaves no file', async (t) => {
  for (const [name, lfs] of [['model.safetensors', true], ['config.json', false]] as const) {
    const files = gpt2Files();
    const wrong = lfs ? 'b'.repeat(64) : 'c'.repeat(40);
    files[name] = { ...files[name], wrongEtag: wrong };
    const hub = await startHub(t, { files });
    const cacheDir = await tempDir(t);
    const actual = lfs ? sha256(files[name].content) : gitSha1(files[name].content);

    await assert.rejects(downloadRepo({ repoId: REPO, cacheDir, endpoint: hub.endpoint }), (err: Error) => {
      assert.match(err.message, new RegExp(`checksum mismatch for ${name.replace('.', '\\.')}`));
      assert.ok(err.message.includes(wrong) && err.message.includes(actual), err.message);
      return true;
    });
    const left = await readdir(snapshotDir(cacheDir));
    assert.ok(!left.includes(name) && !left.includes(`${name}.incomplete`), `left behind: ${left.join(', ')}`);
  }
});

test('401 without a token says to set HF_TOKEN', async (t) => {
  const hub = await startHub(t, { files: gpt2Files(), token: 'secret' });
  const cacheDir = await tempDir(t);
  await assert.rejects(downloadRepo({ repoId: REPO, cacheDir, endpoint: hub.endpoint }), /HTTP 401.*test-org\/tiny-gpt2.*set HF_TOKEN/);
  await assert.rejects(downloadRepo({ repoId: REPO, cacheDir, endpoint: hub.endpoint, token: 'nope' }), /token in HF_TOKEN was refused/);
});

test('unknown repo, unknown revision and a dead endpoint give clear errors', async (t) => {
  const hub = await startHub(t, { files: gpt2Files() });
  const cacheDir = await tempDir(t);
  await assert.rejects(downloadRepo({ repoId: 'test-org/nope', cacheDir, endpoint: hub.endpoint }), /repository test-org\/nope not found/);
  await assert.rejects(downloadRepo({ repoId: REPO, revision: 'v9', cacheDir, endpoint: hub.endpoint }), /revision "v9" not found in test-org\/tiny-gpt2/);

  const dead = http.createServer();
  const endpoint = await listen(dead);
  await new Promise((r) => dead.close(r));
  await assert.rejects(downloadRepo({ repoId: REPO, cacheDir, endpoint }), /network error fetching the file list of test-org\/tiny-gpt2.*ECONNREFUSED/);
});

test('repos without model.safetensors fail clearly', async (t) => {
  const cacheDir = await tempDir(t);
  const binOnly = gpt2Files();
  delete binOnly['model.safetensors'];
  let hub = await startHub(t, { files: binOnly });
  await assert.rejects(downloadRepo({ repoId: REPO, cacheDir, endpoint: hub.endpoint }), /only pytorch_model\.bin; only safetensors/);

  const none = gpt2Files();
  delete none['model.safetensors'];
  delete none['pytorch_model.bin'];
  hub = await startHub(t, { files: none });
  await assert.rejects(downloadRepo({ repoId: REPO, cacheDir, endpoint: hub.endpoint }), /has no model\.safetensors/);
  assert.equal(hub.gets().filter((h) => h.url.includes('/resolve/')).length, 0);
});

test('a repo with vocab.json + merges.txt instead of tokenizer.json gets those', async (t) => {
  const files = gpt2Files();
  delete files['tokenizer.json'];
  delete files['tokenizer_config.json'];
  delete files['generation_config.json'];
  files['vocab.json'] = { content: Buffer.from('{"!":0}') };
  files['merges.txt'] = { content: Buffer.from('#version: 0.2\nĠ t\n') };
  const hub = await startHub(t, { files });
  const cacheDir = await tempDir(t);

  const dir = await downloadRepo({ repoId: REPO, cacheDir, endpoint: hub.endpoint });

  assert.deepEqual((await readdir(dir)).sort(), ['config.json', 'merges.txt', 'model.safetensors', 'vocab.json']);
  assert.ok((await readFile(path.join(dir, 'merges.txt'))).equals(files['merges.txt'].content));
});

test('files already present with the right checksum are not fetched again', async (t) => {
  const files = gpt2Files();
  const hub = await startHub(t, { files });
  const cacheDir = await tempDir(t);
  const dir = await downloadRepo({ repoId: REPO, cacheDir, endpoint: hub.endpoint });
  hub.hits.length = 0;

  await downloadRepo({ repoId: REPO, cacheDir, endpoint: hub.endpoint });
  assert.deepEqual(hub.gets().filter((h) => !h.url.startsWith('/api/')), []);

  // A damaged copy does not count as present.
  await writeFile(path.join(dir, 'config.json'), '{"model_type":"gpt2","n_layer":9}\n');
  hub.hits.length = 0;
  await downloadRepo({ repoId: REPO, cacheDir, endpoint: hub.endpoint });
  assert.deepEqual(
    hub.gets().filter((h) => !h.url.startsWith('/api/')).map((h) => h.url),
    [`/${REPO}/resolve/${SHA}/config.json`],
  );
  assert.ok((await readFile(path.join(dir, 'config.json'))).equals(files['config.json'].content));
});

test('npm run download end to end: a real GPT-2 checkpoint from the hub layout is downloaded and exported', async (t) => {
  const { tinyModel } = await import('./helpers/tiny-model.js');
  const { readManifest } = await import('../src/model/manifest.js');
  const { execFile } = await import('node:child_process');
  const checkpoint = path.join(await tinyModel(1), 'checkpoint');
  const files: Record<string, FakeFile> = {};
  for (const name of await readdir(checkpoint)) files[name] = { content: await readFile(path.join(checkpoint, name)), lfs: name.endsWith('.safetensors') };
  // A chat model's tokenizer_config.json (DialoGPT's template) reaches the served folder.
  const tokenizerConfig = Buffer.from(JSON.stringify({ eos_token: '<|endoftext|>', chat_template: '{% for message in messages %}{{ message.content }}{{ eos_token }}{% endfor %}' }));
  files['tokenizer_config.json'] = { content: tokenizerConfig };
  const hub = await startHub(t, { files });
  const work = await tempDir(t);
  const out = path.join(work, 'gpt2');
  const script = path.join(import.meta.dirname, '..', 'scripts', 'download.ts');
  const stderr = await new Promise<string>((resolve, reject) =>
    execFile(
      process.execPath,
      ['--import', 'tsx', script, REPO, '--out', out, '--cache-dir', path.join(work, 'cache')],
      { env: { ...process.env, HF_ENDPOINT: hub.endpoint } },
      (err, _stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stderr)),
    ),
  );
  assert.match(stderr, /exported to/);
  const manifest = readManifest(out);
  assert.equal(manifest.source.checkpointSha256, sha256(files['model.safetensors'].content));
  assert.equal(manifest.numLayers, 2);
  assert.ok((await readFile(path.join(out, 'tokenizer_config.json'))).equals(tokenizerConfig), 'tokenizer_config.json is copied into the model folder');
});
