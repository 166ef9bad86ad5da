// Hugging Face GPT-2 checkpoint folder -> serving model folder (see models/README.md).
// Weights stream tensor by tensor into the external data file (quantized on the way when the
// dtype asks for it), so peak memory is about one tensor plus the runtime, and the output appears
// only once complete (written under a temporary name, renamed at the end): a failed export never
// leaves a half-written model folder behind.
import { createHash } from 'node:crypto';
import { createReadStream, statSync, existsSync, mkdirSync, writeFileSync, renameSync, rmSync, readdirSync, copyFileSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { TOKENIZER_CONFIG_FILE } from './chat-template.js';
import { readGpt2Config, Gpt2Weights } from './gpt2-checkpoint.js';
import { ADAPTER_WEIGHTS_FILE, mergeLoraPair, readLoraAdapter, type LoraPair } from './lora-adapter.js';
import { GraphBuilder } from './onnx-builder.js';
import { SafetensorsFile } from './safetensors.js';
import { buildServingGraph, CONTRACT_VERSION, OPSET } from './serving-graph.js';
import { EXPORTER_VERSION, GRAPH_DATA_FILE, GRAPH_FILE, KV_LAYOUT, MANIFEST_FILE, manifestWeights, type Manifest } from './manifest.js';
import { writeTokenizerJson } from './tokenizer.js';
import { checkPlanFits, weightPlan, type WeightFormatOptions } from './weight-format.js';
import { ExternalWeightWriter } from './weight-writer.js';

export interface ExportProgress {
  phase: 'hash' | 'weights' | 'graph';
  done: number;
  total: number;
}

export interface ExportOptions {
  checkpoint: string;
  out: string;
  /** Replace an existing output folder. */
  force?: boolean;
  /** Weight dtype (default fp32) and quantization block size. */
  weights?: WeightFormatOptions;
  /** A PEFT LoRA adapter folder to merge into the weights before they are encoded. */
  mergeLora?: string;
  /** Adapters of a higher rank are refused (default DEFAULT_MAX_LORA_RANK). */
  maxLoraRank?: number;
  onProgress?: (p: ExportProgress) => void;
}

export async function exportCheckpoint(opts: ExportOptions): Promise<Manifest> {
  const checkpoint = resolve(opts.checkpoint);
  const out = resolve(opts.out);
  const weightsFile = join(checkpoint, 'model.safetensors');
  if (!existsSync(checkpoint)) throw new Error(`${checkpoint}: checkpoint folder does not exist`);
  const config = readGpt2Config(checkpoint);
  const plan = weightPlan(opts.weights ?? { dtype: 'fp32' });
  checkPlanFits(plan, config.n_embd);
  if (!existsSync(weightsFile)) {
    const hint = existsSync(join(checkpoint, 'pytorch_model.bin')) ? ' (only pytorch_model.bin is there; safetensors is required)' : '';
    throw new Error(`${weightsFile}: missing${hint}`);
  }
  if (existsSync(out) && readdirSync(out).length > 0 && !opts.force) {
    throw new Error(`${out}: already exists and is not empty (pass --force to replace it)`);
  }
  // Read and checked whole before anything is written: a bad adapter leaves no output behind.
  const adapter = opts.mergeLora === undefined ? null : readLoraAdapter(resolve(opts.mergeLora), config, { maxRank: opts.maxLoraRank });
  const adapted = new Map<string, LoraPair>(adapter?.pairs.map((p) => [`h.${p.layer}.${p.module}.weight`, p]));

  const file = new SafetensorsFile(weightsFile);
  const tmp = join(dirname(out), `.${basename(out)}.partial-${process.pid}`);
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  try {
    const weights = new Gpt2Weights(file, config);
    const checkpointSha256 = await sha256File(weightsFile, (done, total) => opts.onProgress?.({ phase: 'hash', done, total }));
    const tokenizerSource = existsSync(join(checkpoint, 'tokenizer.json')) ? 'tokenizer.json' : 'vocab.json + merges.txt';
    await writeTokenizerJson(join(tmp, 'tokenizer.json'), { dir: checkpoint });

    const graph = new GraphBuilder();
    const total = file.tensors.size;
    let done = 0;
    const writer = new ExternalWeightWriter(graph, join(tmp, GRAPH_DATA_FILE), GRAPH_DATA_FILE, (name) => {
      const data = weights.read(name);
      // Merged in float32 before the writer rounds or quantizes, as for any export.
      const pair = adapted.get(name);
      if (pair) mergeLoraPair(data, pair, adapter!.rank, adapter!.scale);
      opts.onProgress?.({ phase: 'weights', done: ++done, total });
      return data;
    }, plan.dtype === 'fp16');
    try {
      buildServingGraph(graph, config, writer, weights.tiedHead, plan);
    } finally {
      writer.close();
    }

    const manifest: Manifest = {
      format: 'gpt2-serve-model',
      contractVersion: CONTRACT_VERSION,
      graph: { file: GRAPH_FILE, externalData: GRAPH_DATA_FILE, opset: OPSET },
      ...manifestWeights(plan),
      kvLayout: KV_LAYOUT,
      numLayers: config.n_layer,
      numHeads: config.n_head,
      hiddenSize: config.n_embd,
      headDim: config.n_embd / config.n_head,
      vocabSize: config.vocab_size,
      contextLength: config.n_positions,
      eosTokenId: config.eos_token_id,
      tiedHead: weights.tiedHead,
      exporter: { name: 'gpt2-serve', version: EXPORTER_VERSION },
      source: {
        checkpointSha256,
        checkpointDtype: [...new Set([...file.tensors.values()].map((t) => t.dtype))].join(','),
        tokenizer: tokenizerSource,
        ...(adapter && {
          mergedLora: {
            path: adapter.dir,
            adapterSha256: await sha256File(join(adapter.dir, ADAPTER_WEIGHTS_FILE), () => {}),
            rank: adapter.rank,
            alpha: adapter.alpha,
            rslora: adapter.rslora,
            scale: adapter.scale,
            modules: adapter.pairs.length,
          },
        }),
      },
    };
    const encoded = graph.encode({
      opset: OPSET,
      producerVersion: EXPORTER_VERSION,
      doc: `GPT-2 serving graph, contract v${CONTRACT_VERSION} (see models/README.md)`,
      metadata: { contract_version: String(CONTRACT_VERSION), kv_layout: KV_LAYOUT },
    });
    writeFileSync(join(tmp, GRAPH_FILE), encoded);
    opts.onProgress?.({ phase: 'graph', done: 1, total: 1 });
    copyFileSync(join(checkpoint, 'config.json'), join(tmp, 'config.json'));
    // Its chat_template (and special tokens) is what /v1/chat/completions renders with.
    if (existsSync(join(checkpoint, TOKENIZER_CONFIG_FILE))) copyFileSync(join(checkpoint, TOKENIZER_CONFIG_FILE), join(tmp, TOKENIZER_CONFIG_FILE));
    writeFileSync(join(tmp, MANIFEST_FILE), JSON.stringify(manifest, null, 2) + '\n');

    if (existsSync(out)) rmSync(out, { recursive: true, force: true });
    mkdirSync(dirname(out), { recursive: true });
    renameSync(tmp, out);
    return manifest;
  } catch (err) {
    rmSync(tmp, { recursive: true, force: true });
    throw err;
  } finally {
    file.close();
  }
}

async function sha256File(path: string, onProgress: (done: number, total: number) => void): Promise<string> {
  const hash = createHash('sha256');
  const stream = createReadStream(path, { highWaterMark: 4 << 20 });
  let done = 0;
  const { size } = statSync(path);
  for await (const chunk of stream) {
    hash.update(chunk as Buffer);
    done += (chunk as Buffer).length;
    onProgress(done, size);
  }
  return hash.digest('hex');
}
