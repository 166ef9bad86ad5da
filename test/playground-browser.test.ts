// The playground in a real browser: Debian's headless Chromium (installed by .ci/run), driven by
// playwright-core, loads the page from the real serving CLI (the ONNX engine on the tiny model):
// no console errors, several streams fill in token by token over one websocket, Stop cancels one
// while the others go on, and with an API key the page works once the key is entered while the
// websocket refuses a socket without it. Skipped, saying so, where no Chromium is installed;
// fails instead when REQUIRE_CHROMIUM is set (CI sets it, so a lost install step cannot turn into
// a skip). PLAYGROUND_SCREENSHOT=path saves the page after a run (docs/playground.png is one).
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { chromium, type BrowserContext, type ConsoleMessage, type Page } from 'playwright-core';
import { spawnServer } from './helpers/server-process.js';

const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
// The machine has no network: without the background-networking flags Chromium waits on
// connections it tries to make by itself.
const CHROMIUM_FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const API_KEY = 'sk-playground-test';

/** A fresh headless Chromium profile, closed and removed after the test; null after skipping. */
async function openBrowser(t: TestContext): Promise<BrowserContext | null> {
  if (!existsSync(CHROMIUM)) {
    const why = `no Chromium at ${CHROMIUM} (Debian: apt-get install chromium; .ci/run installs it)`;
    if (process.env.REQUIRE_CHROMIUM) assert.fail(`${why}, and REQUIRE_CHROMIUM is set`);
    t.skip(why);
    return null;
  }
  const profile = mkdtempSync(path.join(tmpdir(), 'gpt2-serve-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_FLAGS,
    viewport: { width: 1280, height: 820 },
    timeout: 60_000,
  });
  // Waits for the page end when what they wait for happens; their bound only catches a hang, so it
  // leaves a loaded machine (browser and server sharing its cores) room to be slow.
  context.setDefaultTimeout(120_000);
  t.after(async () => {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  });
  return context;
}

/** Console errors and uncaught exceptions of the page, as text. */
function collectErrors(page: Page): string[] {
  const errors: string[] = [];
  page.on('console', (msg: ConsoleMessage) => {
    if (msg.type() === 'error') errors.push(`console: ${msg.text()}`);
  });
  page.on('pageerror', (err) => errors.push(`pageerror: ${err.message}`));
  return errors;
}

async function settings(page: Page, s: { prompt: string; maxTokens: number; streams: number; seed?: number }): Promise<void> {
  await page.getByLabel('Prompt').fill(s.prompt);
  await page.getByLabel('max_tokens').fill(String(s.maxTokens));
  await page.getByLabel('streams').fill(String(s.streams));
  await page.getByLabel('seed').fill(s.seed === undefined ? '' : String(s.seed));
}

interface StreamView {
  state: string;
  tokens: number;
  spans: number;
  ttft: string;
  tps: string;
  text: string;
}

async function streamViews(page: Page): Promise<StreamView[]> {
  return page.locator('.stream').evaluateAll((els) =>
    els.map((el) => ({
      state: el.querySelector('.state')!.textContent ?? '',
      tokens: Number(el.querySelector('.count')!.textContent),
      spans: el.querySelectorAll('.generated .tok').length,
      ttft: el.querySelector('.ttft')!.textContent ?? '',
      tps: el.querySelector('.tps')!.textContent ?? '',
      text: el.querySelector('.generated')!.textContent ?? '',
    })),
  );
}

/** Opens a websocket from the page; resolves with the selected subprotocol, or 'refused'. */
function pageSocket(page: Page, protocols: string[]): Promise<string> {
  return page.evaluate(
    (protocols) =>
      new Promise<string>((resolve) => {
        const ws = new WebSocket(`ws://${location.host}/v1/completions/ws`, protocols);
        ws.onopen = () => {
          resolve(ws.protocol);
          ws.close();
        };
        ws.onclose = () => resolve('refused');
      }),
    protocols,
  );
}

test('the playground streams several continuations over one websocket; Stop cancels one while the others go on', async (t) => {
  const context = await openBrowser(t);
  if (!context) return;
  const server = await spawnServer(t, []);
  const page = await context.newPage();
  const errors = collectErrors(page);
  const sockets: string[] = [];
  page.on('websocket', (ws) => sockets.push(ws.url()));

  await page.goto(server.url.href);
  await page.getByRole('status').filter({ hasText: 'Connected' }).waitFor();
  await assert.doesNotReject(page.getByText('model: tiny-model').waitFor({ timeout: 5000 }));

  // One short run: every stream finishes with its tokens, each shown with its probability.
  await settings(page, { prompt: 'Once upon a time', maxTokens: 12, streams: 2, seed: 7 });
  await page.getByRole('button', { name: 'Generate' }).click();
  await page.waitForFunction(() => [...document.querySelectorAll('.stream .state')].every((s) => s.textContent?.startsWith('done')));
  const short = await streamViews(page);
  assert.equal(short.length, 2);
  for (const s of short) {
    assert.equal(s.state, 'done (length)');
    assert.equal(s.tokens, 12);
    assert.ok(s.spans >= 1 && s.text.length > 0, JSON.stringify(s));
    assert.match(s.ttft, /^\d+ ms$/);
    assert.match(s.tps, /^\d+(\.\d)?$/);
  }
  const title = await page.locator('.generated .tok').first().getAttribute('title');
  assert.match(title ?? '', /^".*": [\d.e+-]+%/, 'a token shows its probability on hover');

  // The keyboard alone: focus an output and step through its tokens.
  await page.locator('.output').first().focus();
  await page.keyboard.press('End');
  assert.match((await page.locator('.inspect').first().textContent()) ?? '', /%/);

  // Three long streams; stop the second once it has tokens: it ends cancelled, the others finish.
  await settings(page, { prompt: 'The quick brown fox', maxTokens: 1000, streams: 3, seed: 1 });
  await page.getByLabel('Prompt').press('Control+Enter');
  await page.waitForFunction(() => Number(document.querySelectorAll('.stream .count')[1]?.textContent) >= 3);
  await page.getByRole('button', { name: 'Stop stream 2' }).click();
  // 2,000 tokens rendered with their probabilities: many times the other waits' work.
  await page.waitForFunction(() => [...document.querySelectorAll('.stream .state')].every((s) => /^(done|cancelled)/.test(s.textContent ?? '')), null, { timeout: 300_000 });
  const long = await streamViews(page);
  assert.deepEqual(long.map((s) => s.state), ['done (length)', 'cancelled', 'done (length)']);
  assert.ok(long[1]!.tokens > 0 && long[1]!.tokens < 1000, `stream 2 stopped early: ${long[1]!.tokens} tokens`);
  assert.equal(long[0]!.tokens, 1000);
  assert.equal(long[2]!.tokens, 1000);
  assert.equal(await page.getByRole('status').textContent(), 'All streams finished.');

  assert.equal(sockets.length, 1, 'every stream of both runs went over one websocket');
  assert.deepEqual(errors, []);
  const cancelled = server.logs.filter((l) => l.msg === 'request finished' && l.error === 'cancelled_by_client');
  assert.equal(cancelled.length, 1, 'the server cancelled one request');

  if (process.env.PLAYGROUND_SCREENSHOT) {
    // A shorter run reads better in a picture.
    await settings(page, { prompt: 'Once upon a time, in a small village by the sea,', maxTokens: 60, streams: 3, seed: 3 });
    await page.getByRole('button', { name: 'Generate' }).click();
    await page.waitForFunction(() => Number(document.querySelectorAll('.stream .count')[1]?.textContent) >= 20);
    await page.getByRole('button', { name: 'Stop stream 2' }).click();
    await page.waitForFunction(() => [...document.querySelectorAll('.stream .state')].every((s) => /^(done|cancelled)/.test(s.textContent ?? '')));
    await page.locator('.stream').first().locator('.generated .tok').nth(5).hover();
    await page.screenshot({ path: process.env.PLAYGROUND_SCREENSHOT, fullPage: true });
    t.diagnostic(`screenshot: ${process.env.PLAYGROUND_SCREENSHOT}`);
  }
});

test('with an API key the page asks for it and then works; the websocket refuses a socket without it', async (t) => {
  const context = await openBrowser(t);
  if (!context) return;
  const server = await spawnServer(t, ['--api-key', API_KEY]);
  const page = await context.newPage();
  const errors = collectErrors(page);

  const response = await page.goto(server.url.href);
  assert.ok(!(await response!.text()).includes(API_KEY));
  const keyBox = page.getByLabel('API key');
  await keyBox.waitFor();
  assert.equal(await page.getByRole('button', { name: 'Generate' }).isDisabled(), true);

  await keyBox.fill('sk-wrong');
  await keyBox.press('Enter');
  await page.getByText('That key was refused.').waitFor();

  await keyBox.fill(API_KEY);
  await page.getByRole('button', { name: 'Connect' }).click();
  await page.getByRole('status').filter({ hasText: 'Connected' }).waitFor();
  assert.equal(await page.locator('#key-form').isHidden(), true);
  await settings(page, { prompt: 'Hello', maxTokens: 5, streams: 1 });
  await page.getByRole('button', { name: 'Generate' }).click();
  await page.getByText('done (length)').waitFor();
  assert.equal((await streamViews(page))[0]!.tokens, 5);

  // The key as the page sends it works from any page script; without it, or with another, no socket.
  const bearer = (key: string) => `gpt2-serve.bearer.${Buffer.from(key).toString('base64url')}`;
  assert.equal(await pageSocket(page, ['gpt2-serve', bearer(API_KEY)]), 'gpt2-serve', 'the key is never echoed as the protocol');
  assert.equal(await pageSocket(page, ['gpt2-serve']), 'refused');
  assert.equal(await pageSocket(page, ['gpt2-serve', bearer('sk-wrong')]), 'refused');
  assert.equal(await pageSocket(page, []), 'refused');

  // Only the expected refusals reached the console: the two 401s of /v1/models and the three refused sockets.
  const unexpected = errors.filter((e) => !/status of 401|WebSocket connection to .* failed/.test(e));
  assert.deepEqual(unexpected, []);
  assert.equal(errors.filter((e) => /WebSocket connection/.test(e)).length, 3, errors.join('\n'));
  // The server logged the same five refusals (its log lines arrive through a pipe: wait for them).
  const refused = () => server.logs.filter((l) => l.msg === 'request finished' && l.status === 401).length;
  for (const deadline = Date.now() + 5000; refused() < 5 && Date.now() < deadline; ) await new Promise((r) => setTimeout(r, 50));
  assert.equal(refused(), 5);
});
