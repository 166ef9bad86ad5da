// npm run bench:attention -- [--rounds 20]
// Why the serving graph's attention is one-row products (docs/design.md, "Exact under any
// schedule"), measured on this machine's ONNX Runtime:
//   1. exactness: row 0 of A·B, computed with A of 1, 2, 3, 17 and 128 rows on 1 and 2 threads,
//      compared bit for bit with the 2-row, 1-thread result, for the products attention makes
//      (q·kᵀ: inner 64; probs·V: inner = key count, 64 columns);
//   2. cost: decode-shaped products (one query per row) as one-row products against the query
//      padded to two rows (MLAS's general kernel, the only way to share a path with prefill
//      GEMMs), and prefill-tile-shaped products (128 queries) one row per query against one
//      GEMM per tile with probs·V in 256-key slices (no slice long enough for a thread split to
//      re-block it). Interleaved in one process, medians; only the ratios mean anything.
import { rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import * as ort from 'onnxruntime-node';
import { DataType, GraphBuilder } from '../src/model/onnx-builder.js';
import { Rng } from '../src/util/rng.js';

const HEADS = 12;
const HEAD_DIM = 64;
/** probs·V slices: MLAS never blocks an inner dimension of 256 or less when N is 64 or less. */
const SLICE = 256;

const { values } = parseArgs({ options: { rounds: { type: 'string', default: '20' } } });
const rounds = Number(values.rounds);
const rng = new Rng(7);
const random = (n: number) => Float32Array.from({ length: n }, () => rng.next() - 0.5);
const median = (v: number[]) => [...v].sort((a, b) => a - b)[v.length >> 1]!;

async function session(build: (g: GraphBuilder) => void, threads = 0): Promise<ort.InferenceSession> {
  const g = new GraphBuilder();
  build(g);
  const file = join(tmpdir(), `bench-attention-${process.pid}.onnx`);
  writeFileSync(file, g.encode({ opset: 20, producerVersion: 'bench-attention', doc: '', metadata: {} }));
  try {
    return await ort.InferenceSession.create(file, { graphOptimizationLevel: 'all', ...(threads > 0 ? { intraOpNumThreads: threads } : {}) });
  } finally {
    rmSync(file, { force: true });
  }
}

const tensor = (data: Float32Array, dims: number[]) => new ort.Tensor('float32', data, dims);
const lastTwoSwapped = (g: GraphBuilder, x: string, rank: number) =>
  g.op('Transpose', [x], { perm: [...Array.from({ length: rank - 2 }, (_, i) => i), rank - 1, rank - 2] });

/** probs·V as a sum, in key order, of products over SLICE-key slices (the key axis of each given). */
function overKeySlices(g: GraphBuilder, probs: string, probsAxis: number, values: string, valuesAxis: number, keys: number): string {
  const slice = (x: string, from: number, axis: number) => g.op('Slice', [x, g.constInt64([from]), g.constInt64([from + SLICE]), g.constInt64([axis])]);
  let sum = '';
  for (let from = 0; from < keys; from += SLICE) {
    const part = g.op('MatMul', [slice(probs, from, probsAxis), slice(values, from, valuesAxis)]);
    sum = sum ? g.op('Add', [sum, part]) : part;
  }
  return sum;
}

/** 1. Which row counts and thread counts change row 0's bits. */
async function exactness(): Promise<void> {
  console.log('row 0 of A·B against A of 2 rows on 1 thread (bitwise):');
  const cases: Array<{ what: string; inner: number; cols: number; transB: boolean; sliced?: boolean }> = [
    ...[16, 200, 1000].map((cols) => ({ what: `q·kᵀ, ${cols} keys`, inner: HEAD_DIM, cols, transB: true })),
    ...[200, 256, 512, 1000].map((inner) => ({ what: `probs·V, ${inner} keys`, inner, cols: HEAD_DIM, transB: false })),
    { what: `probs·V, 1000 keys in ${SLICE}-key slices`, inner: 1000, cols: HEAD_DIM, transB: false, sliced: true },
  ];
  for (const c of cases) {
    const a = random(128 * c.inner);
    const b = random(c.inner * c.cols);
    const rows = new Map<string, Float32Array>();
    for (const threads of [1, 2]) {
      const s = await session((g) => {
        const x = g.input('a', DataType.FLOAT, ['m', c.inner]);
        const y = g.input('b', DataType.FLOAT, c.transB ? [c.cols, c.inner] : [c.inner, c.cols]);
        const product = c.sliced ? overKeySlices(g, x, 1, y, 0, c.inner) : g.op('MatMul', [x, c.transB ? lastTwoSwapped(g, y, 2) : y]);
        g.output(product, 'c', DataType.FLOAT, ['m', c.cols]);
      }, threads);
      for (const m of [1, 2, 3, 17, 128]) {
        const out = await s.run({ a: tensor(a.subarray(0, m * c.inner), [m, c.inner]), b: tensor(b, c.transB ? [c.cols, c.inner] : [c.inner, c.cols]) });
        rows.set(`${m} rows/${threads} thread${threads > 1 ? 's' : ''}`, (out.c.data as Float32Array).slice(0, c.cols));
      }
      await s.release();
    }
    const ref = rows.get('2 rows/1 thread')!;
    const differ = [...rows].filter(([, row]) => !row.every((v, i) => Object.is(v, ref[i]))).map(([k]) => k);
    console.log(`  ${c.what.padEnd(36)} differ: ${differ.length ? differ.join(', ') : 'none'}`);
  }
}

/** Runs two sessions, each on its own feeds, in interleaved rounds; returns their median times. */
async function race(a: ort.InferenceSession, feedsA: Record<string, ort.Tensor>, b: ort.InferenceSession, feedsB: Record<string, ort.Tensor>): Promise<[number, number]> {
  const times: [number[], number[]] = [[], []];
  for (let round = 0; round < rounds; round++) {
    for (const [i, [s, f]] of ([[a, feedsA], [b, feedsB]] as const).entries()) {
      for (let run = 0; run < 5; run++) {
        const t = performance.now();
        await s.run(f);
        if (run > 0) times[i]!.push(performance.now() - t); // a switch's first run is cold
      }
    }
  }
  return [median(times[0]), median(times[1])];
}

/**
 * Attention products of `rows` rows of `queries` queries over `keys` keys: `oneRow` makes each
 * query its own product (the query axis a broadcast batch axis, contract 5's layout); otherwise
 * one GEMM per row, probs·V summed over 256-key slices in order.
 */
function products(rows: number, queries: number, keys: number, oneRow: boolean) {
  return (g: GraphBuilder) => {
    const dims = (n: number) => [HEADS, rows, n, HEAD_DIM];
    const q = g.input('q', DataType.FLOAT, dims(queries));
    const k = g.input('k', DataType.FLOAT, dims(keys));
    const v = g.input('v', DataType.FLOAT, dims(keys));
    let out: string;
    if (oneRow) {
      const at = (x: string, axis: number) => g.op('Unsqueeze', [x, g.constInt64([axis])]);
      const scores = g.op('MatMul', [at(q, 3), lastTwoSwapped(g, at(k, 2), 5)]); // [H, rows, S, 1, keys]
      out = g.op('Reshape', [g.op('MatMul', [scores, at(v, 2)]), g.constInt64(dims(queries))]);
    } else {
      const scores = g.op('MatMul', [q, lastTwoSwapped(g, k, 4)]); // [H, rows, S, keys]
      out = overKeySlices(g, scores, 3, v, 2, keys);
    }
    g.output(out, 'out', DataType.FLOAT, dims(queries));
  };
}

function feeds(rows: number, queries: number, keys: number): Record<string, ort.Tensor> {
  const of = (n: number) => tensor(random(HEADS * rows * n * HEAD_DIM), [HEADS, rows, n, HEAD_DIM]);
  return { q: of(queries), k: of(keys), v: of(keys) };
}

/** The same feeds with every row's one query written twice ([H, rows, 1, D] -> [H, rows, 2, D]). */
function queryTwice(f: Record<string, ort.Tensor>): Record<string, ort.Tensor> {
  const q = f.q!.data as Float32Array;
  const [, rows] = f.q!.dims;
  const twice = new Float32Array(q.length * 2);
  for (let i = 0; i < HEADS * rows!; i++) {
    const query = q.subarray(i * HEAD_DIM, (i + 1) * HEAD_DIM);
    twice.set(query, 2 * i * HEAD_DIM);
    twice.set(query, (2 * i + 1) * HEAD_DIM);
  }
  return { ...f, q: tensor(twice, [HEADS, rows!, 2, HEAD_DIM]) };
}

/** 2. What sharing the general kernel would cost decode rows, and what it would save prefill tiles. */
async function cost(): Promise<void> {
  console.log('\n| product | rows x queries x keys | one-row (ms) | general kernel (ms) | general / one-row |');
  console.log('| --- | --- | ---: | ---: | ---: |');
  for (const [rows, keys] of [[1, 64], [1, 512], [8, 512], [32, 192]] as const) {
    const one = await session(products(rows, 1, keys, true));
    const two = await session(products(rows, 2, keys, false));
    const f = feeds(rows, 1, keys);
    const [a, b] = await race(one, f, two, queryTwice(f));
    console.log(`| decode (query padded to 2 rows) | ${rows} x 1 x ${keys} | ${a.toFixed(3)} | ${b.toFixed(3)} | ${(b / a).toFixed(2)} |`);
    await Promise.all([one.release(), two.release()]);
  }
  for (const [rows, queries, keys] of [[4, 128, 512], [1, 128, 1024], [8, 64, 256]] as const) {
    const one = await session(products(rows, queries, keys, true));
    const gemm = await session(products(rows, queries, keys, false));
    const f = feeds(rows, queries, keys);
    const [a, b] = await race(one, f, gemm, f);
    console.log(`| prefill tile (one GEMM, ${SLICE}-key slices) | ${rows} x ${queries} x ${keys} | ${a.toFixed(2)} | ${b.toFixed(2)} | ${(b / a).toFixed(2)} |`);
    await Promise.all([one.release(), gemm.release()]);
  }
}

await exactness();
await cost();
