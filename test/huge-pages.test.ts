import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { HUGE_PAGES_TUNABLE, hugePages, hugePagesAdvice, largeBlocksOnHugePages, mallocHugetlbIn, parseAnonHugeMiB, parseThpMode } from '../src/util/huge-pages.js';

test('the kernel THP mode is the bracketed word of sysfs', () => {
  assert.equal(parseThpMode('always [madvise] never\n'), 'madvise');
  assert.equal(parseThpMode('[always] madvise never'), 'always');
  assert.equal(parseThpMode('always madvise [never]'), 'never');
  assert.equal(parseThpMode('always madvise never'), null);
});

test('glibc.malloc.hugetlb is found among other tunables, the last setting winning', () => {
  assert.equal(mallocHugetlbIn(undefined), null);
  assert.equal(mallocHugetlbIn(''), null);
  assert.equal(mallocHugetlbIn(HUGE_PAGES_TUNABLE), '1');
  assert.equal(mallocHugetlbIn('glibc.malloc.check=3:glibc.malloc.hugetlb=2'), '2');
  assert.equal(mallocHugetlbIn('glibc.malloc.hugetlb=0'), '0');
  assert.equal(mallocHugetlbIn('glibc.malloc.hugetlb=1:glibc.malloc.hugetlb=0'), '0');
  assert.equal(mallocHugetlbIn('glibc.malloc.mmap_threshold=4096'), null);
});

test('large blocks are on huge pages under THP always, or madvise with the tunable at 1 or 2', () => {
  assert.equal(largeBlocksOnHugePages({ thp: 'always', mallocHugetlb: null }), true);
  assert.equal(largeBlocksOnHugePages({ thp: 'madvise', mallocHugetlb: '1' }), true);
  assert.equal(largeBlocksOnHugePages({ thp: 'madvise', mallocHugetlb: '2' }), true);
  assert.equal(largeBlocksOnHugePages({ thp: 'madvise', mallocHugetlb: '0' }), false);
  assert.equal(largeBlocksOnHugePages({ thp: 'madvise', mallocHugetlb: null }), false);
  assert.equal(largeBlocksOnHugePages({ thp: 'never', mallocHugetlb: '1' }), false);
  assert.equal(largeBlocksOnHugePages({ thp: null, mallocHugetlb: '1' }), false);
});

test('AnonHugePages of smaps_rollup, in MiB', () => {
  assert.equal(parseAnonHugeMiB('Rss:   378300 kB\nAnonHugePages:    258048 kB\nShmemPmdMapped: 0 kB\n'), 252);
  assert.equal(parseAnonHugeMiB('Rss: 1 kB\n'), null);
});

test('the advice is given only where THP waits for a request that nobody told glibc to make or not', () => {
  const reads = (thp: string | null) => (path: string) => (path.includes('transparent_hugepage') ? thp : null);
  const at = (thp: string | null, tunables?: string) => hugePagesAdvice(hugePages({ GLIBC_TUNABLES: tunables }, reads(thp)));
  assert.match(at('always [madvise] never') ?? '', /add glibc\.malloc\.hugetlb=1 to GLIBC_TUNABLES/);
  assert.equal(at('always [madvise] never', HUGE_PAGES_TUNABLE), null);
  assert.equal(at('always [madvise] never', 'glibc.malloc.hugetlb=0'), null, 'turned off on purpose');
  assert.match(at('always [madvise] never', 'glibc.malloc.check=3') ?? '', /add glibc\.malloc\.hugetlb=1/, 'other tunables are no choice about pages');
  assert.equal(at('[always] madvise never'), null);
  assert.equal(at('always madvise [never]'), null);
  assert.equal(at(null), null);
  assert.deepEqual(hugePages({}, reads(null)), { thp: null, mallocHugetlb: null, anonHugeMiB: null });
});

// The premise of `npm start`'s GLIBC_TUNABLES: under THP "madvise", the KV pool (ONNX Runtime's
// weights come from the same malloc) is on huge pages with the tunable and not without it, and
// the pool knows which, so that it commits itself up front only where a write commits 2 MiB.
test('with the tunable the KV pool is on huge pages and committed up front; without it neither', (t) => {
  const thp = hugePages().thp;
  if (thp !== 'madvise') return t.skip(`THP mode here is ${thp ?? 'unknown'}, not madvise`);
  const url = (path: string) => JSON.stringify(fileURLToPath(new URL(path, import.meta.url)));
  const script = `
    const { hugePages, largeBlocksOnHugePages } = await import(${url('../src/util/huge-pages.ts')});
    const { KvPool, committedBytes } = await import(${url('../src/engine/kv-cache.ts')});
    const before = hugePages().anonHugeMiB;
    // 128 MiB: 2 layers x keys and values x 4 heads x 2048 blocks of 16 tokens x 64 floats.
    const pool = new KvPool({ layers: 2, heads: 4, headDim: 64, numBlocks: 2048, blockSize: 16 }, largeBlocksOnHugePages(hugePages()));
    const state = hugePages();
    process.stdout.write(JSON.stringify({ ...state, added: state.anonHugeMiB - before, committedMiB: committedBytes(pool, 3) / 2 ** 20 }));`;
  const run = (tunables: string | undefined) => {
    const env = { ...process.env };
    if (tunables === undefined) delete env.GLIBC_TUNABLES;
    else env.GLIBC_TUNABLES = tunables;
    const child = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { env, encoding: 'utf8' });
    assert.equal(child.status, 0, child.stderr);
    return JSON.parse(child.stdout) as ReturnType<typeof hugePages> & { added: number; committedMiB: number };
  };
  const on = run(HUGE_PAGES_TUNABLE);
  assert.equal(on.mallocHugetlb, '1');
  // Each array's first and last 2 MiB may be partly outside it and stay on small pages.
  assert.ok(on.added >= 96, `with the tunable: ${on.added} MiB more on huge pages`);
  assert.equal(on.committedMiB, 128, 'the whole pool is reported committed');
  const off = run(undefined);
  assert.equal(off.mallocHugetlb, null);
  assert.ok(off.added < 8, `without it: ${off.added} MiB more on huge pages`);
  assert.equal(off.committedMiB, 3 * 2 * 2 * 4 * 16 * 64 * 4 / 2 ** 20, 'three blocks, as written');
});
