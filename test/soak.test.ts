// The soak test (npm run soak) run for a few seconds on the tiny model: every scenario runs, bad
// inputs get their 4xx, stalled readers are cut off by the server, no 5xx, KV blocks and requests
// in flight are back to 0 at the end, and the server it started is gone afterwards. (RSS growth
// needs a long run to mean anything; the CLI checks it, this test does not.)
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { liveServerPids } from '../tools/bench/server-process.js';
import { UsageError } from '../tools/bench/options.js';
import { parseSoakArgs } from '../tools/soak/options.js';
import { floodPromptTokens } from '../tools/soak/requests.js';
import { ROWS, TASKS } from '../tools/soak/scenarios.js';
import { reportText, runSoak } from '../tools/soak/soak.js';
import { tinyModel } from './helpers/tiny-model.js';

test('soak options: defaults, and flags the soak owns are refused as server args', () => {
  const o = parseSoakArgs([])!;
  assert.equal(o.durationS, 120);
  assert.equal(o.model, 'models/bench-gpt2-small');
  assert.equal(o.defaultModel, true);
  assert.equal(o.maxConcurrentRequests, 16);
  assert.equal(o.stallTimeoutMs, 3000);
  assert.equal(parseSoakArgs(['--help']), null);
  assert.throws(() => parseSoakArgs(['--duration', '0']), UsageError);
  assert.throws(() => parseSoakArgs(['--server-arg=--stall-timeout-ms=5']), /use --stall-timeout-ms/);
  assert.throws(() => parseSoakArgs(['--server-arg=--port=1']), /free port/);
});

test("a stalled reader's flood outgrows the socket buffers, within the context", () => {
  // 16 choices x 600 bytes per echoed token: 4 MiB of buffers + 3 MiB of margin need 765 tokens.
  assert.equal(floodPromptTokens(1024, 4 * 2 ** 20), 765);
  assert.equal(floodPromptTokens(1024, 64 * 2 ** 20), 1024 - 32);
  assert.equal(floodPromptTokens(128, 0), 96);
});

test('every row of the table is fed by some task, and every task feeds rows of the table', () => {
  assert.deepEqual([...new Set(TASKS.flatMap((t) => t.rows))].sort(), ROWS.map((r) => r.name).sort());
});

test('a short soak on the tiny model: every scenario ran, bad inputs got their 4xx, stalled readers were cut off, nothing leaked', async () => {
  const model = await tinyModel();
  const opts = parseSoakArgs(['--duration', '3', '--model', model, '--concurrency', '4', '--stall-timeout-ms', '500'])!;
  const result = await runSoak(opts, { out: () => {}, status: () => {} });
  const report = reportText(result);
  const check = (name: string) => {
    const c = result.checks.find((x) => x.name === name);
    assert.ok(c, `no check named ${name}`);
    assert.ok(c.ok, `${name}: ${c.measured}\n${report}`);
  };
  check('unexpected 5xx (no faults injected)');
  check('outcomes their scenario does not allow');
  check('every scenario ran');
  check('/health probes that did not answer 200');
  check('KV blocks in use at the end');
  check('requests in flight at the end');
  check('sequences running / paused / waiting at the end');
  check('server log lines at error level');
  check('server still running at the end');

  const row = (name: string) => result.rows.find((r) => r.name === name)!;
  assert.deepEqual(result.rows.map((r) => r.name), ROWS.map((r) => r.name));
  for (const r of result.rows.filter((x) => x.name.startsWith('bad_'))) {
    assert.ok(r.counts.expected_4xx > 0, `${r.name}: no request got its 4xx\n${report}`);
  }
  // The stalled readers were cut off by the server (which it does only to a stream it paused).
  // How many ran in these seconds is timing's choice: at least one did, and none got through.
  for (const name of ['sse_stall', 'ws_stall']) {
    const r = row(name);
    assert.ok(r.counts.stall_cutoff >= 1, `${name}: no stalled reader was cut off\n${report}`);
    assert.equal(r.counts.stall_cutoff + r.counts.overloaded, r.total, `${name}: a stalled reader that was not cut off\n${report}`);
  }
  // Clients that went away were counted as such, and ordinary requests completed.
  for (const name of ['sse', 'json', 'ws_stream']) assert.ok(row(name).counts.completed > 0, `${name}: nothing completed\n${report}`);
  for (const name of ['sse_disconnect', 'ws_cancel', 'ws_close']) assert.ok(row(name).counts.cancelled > 0, `${name}: nothing cancelled\n${report}`);
  assert.ok(result.health.probes > 10, 'the health probe ran');
  assert.match(report, /\| SSE, read to the end \| \d+ \|/);
  assert.deepEqual(liveServerPids(), [], 'the soak stopped its server');
});
