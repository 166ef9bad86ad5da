// A plain GPT-2 forward pass in float64 with no ONNX: the yardstick the serving graph is
// checked against. Written for clarity, not speed; it keeps its own per-sequence KV cache.
import { join } from 'node:path';
import { readGpt2Config, Gpt2Weights, type Gpt2Config } from '../../src/model/gpt2-checkpoint.js';
import { SafetensorsFile } from '../../src/model/safetensors.js';

type Vec = Float64Array;

interface Layer {
  ln1w: Vec; ln1b: Vec; attnW: Vec; attnB: Vec; projW: Vec; projB: Vec;
  ln2w: Vec; ln2b: Vec; fcW: Vec; fcB: Vec; fcProjW: Vec; fcProjB: Vec;
}

export class ReferenceGpt2 {
  readonly config: Gpt2Config;
  private readonly wte: Vec;
  private readonly wpe: Vec;
  private readonly head: Vec;
  private readonly layers: Layer[] = [];
  private readonly lnfw: Vec;
  private readonly lnfb: Vec;

  constructor(checkpointDir: string) {
    this.config = readGpt2Config(checkpointDir);
    const file = new SafetensorsFile(join(checkpointDir, 'model.safetensors'));
    const w = new Gpt2Weights(file, this.config);
    const r = (n: string) => Float64Array.from(w.read(n));
    this.wte = r('wte.weight');
    this.wpe = r('wpe.weight');
    this.head = w.tiedHead ? this.wte : r('lm_head.weight');
    for (let i = 0; i < this.config.n_layer; i++) {
      const h = `h.${i}.`;
      this.layers.push({
        ln1w: r(`${h}ln_1.weight`), ln1b: r(`${h}ln_1.bias`),
        attnW: r(`${h}attn.c_attn.weight`), attnB: r(`${h}attn.c_attn.bias`),
        projW: r(`${h}attn.c_proj.weight`), projB: r(`${h}attn.c_proj.bias`),
        ln2w: r(`${h}ln_2.weight`), ln2b: r(`${h}ln_2.bias`),
        fcW: r(`${h}mlp.c_fc.weight`), fcB: r(`${h}mlp.c_fc.bias`),
        fcProjW: r(`${h}mlp.c_proj.weight`), fcProjB: r(`${h}mlp.c_proj.bias`),
      });
    }
    this.lnfw = r('ln_f.weight');
    this.lnfb = r('ln_f.bias');
    file.close();
  }

  newSequence(): ReferenceSequence {
    return new ReferenceSequence(this);
  }

  /** Logits for every position of `tokens`, computed from scratch. */
  logitsAll(tokens: number[]): Vec[] {
    const seq = this.newSequence();
    return tokens.map((t) => seq.step(t));
  }

  /** Greedy continuation from scratch. */
  greedy(prompt: number[], steps: number): number[] {
    const seq = this.newSequence();
    let logits: Vec = new Float64Array();
    for (const t of prompt) logits = seq.step(t);
    const out: number[] = [];
    for (let i = 0; i < steps; i++) {
      const next = argmax(logits);
      out.push(next);
      logits = seq.step(next);
    }
    return out;
  }

  /** @internal one token through the network with a sequence's cache. */
  forwardToken(token: number, pos: number, keys: Vec[][], values: Vec[][]): Vec {
    const { n_embd: E, n_head: H, layer_norm_epsilon: eps, vocab_size: V } = this.config;
    const D = E / H;
    let x: Vec = new Float64Array(E);
    for (let i = 0; i < E; i++) x[i] = this.wte[token * E + i] + this.wpe[pos * E + i];
    this.layers.forEach((layer, l) => {
      const a = layerNorm(x, layer.ln1w, layer.ln1b, eps);
      const qkv = linear(a, layer.attnW, layer.attnB, 3 * E);
      keys[l].push(qkv.slice(E, 2 * E));
      values[l].push(qkv.slice(2 * E, 3 * E));
      const attn = new Float64Array(E);
      for (let h = 0; h < H; h++) {
        const scores = keys[l].map((k) => {
          let s = 0;
          for (let d = 0; d < D; d++) s += qkv[h * D + d] * k[h * D + d];
          return s / Math.sqrt(D);
        });
        const max = Math.max(...scores);
        const exps = scores.map((s) => Math.exp(s - max));
        const sum = exps.reduce((p, c) => p + c, 0);
        values[l].forEach((v, j) => {
          for (let d = 0; d < D; d++) attn[h * D + d] += (exps[j] / sum) * v[h * D + d];
        });
      }
      x = add(x, linear(attn, layer.projW, layer.projB, E));
      const m = layerNorm(x, layer.ln2w, layer.ln2b, eps);
      const fc = linear(m, layer.fcW, layer.fcB, 4 * E).map(geluNew);
      x = add(x, linear(fc, layer.fcProjW, layer.fcProjB, E));
    });
    const f = layerNorm(x, this.lnfw, this.lnfb, eps);
    const logits = new Float64Array(V);
    for (let v = 0; v < V; v++) {
      let s = 0;
      for (let i = 0; i < E; i++) s += f[i] * this.head[v * E + i];
      logits[v] = s;
    }
    return logits;
  }
}

export class ReferenceSequence {
  private readonly keys: Vec[][];
  private readonly values: Vec[][];
  private pos = 0;

  constructor(private readonly model: ReferenceGpt2) {
    this.keys = Array.from({ length: model.config.n_layer }, () => []);
    this.values = Array.from({ length: model.config.n_layer }, () => []);
  }

  /** Appends a token and returns the logits predicting the next one. */
  step(token: number): Vec {
    return this.model.forwardToken(token, this.pos++, this.keys, this.values);
  }
}

export function argmax(v: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < v.length; i++) if (v[i] > v[best]) best = i;
  return best;
}

function layerNorm(x: Vec, w: Vec, b: Vec, eps: number): Vec {
  let mean = 0;
  for (const v of x) mean += v;
  mean /= x.length;
  let variance = 0;
  for (const v of x) variance += (v - mean) ** 2;
  variance /= x.length;
  const inv = 1 / Math.sqrt(variance + eps);
  return x.map((v, i) => (v - mean) * inv * w[i] + b[i]);
}

/** Conv1D: weight stored [in, out]. */
function linear(x: Vec, w: Vec, b: Vec, out: number): Vec {
  const y = Float64Array.from(b);
  for (let i = 0; i < x.length; i++) {
    const xi = x[i];
    const row = i * out;
    for (let o = 0; o < out; o++) y[o] += xi * w[row + o];
  }
  return y;
}

function add(a: Vec, b: Vec): Vec {
  return a.map((v, i) => v + b[i]);
}

function geluNew(x: number): number {
  return 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));
}
