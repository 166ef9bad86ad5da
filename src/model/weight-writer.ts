// The exporter's WeightSource: reads each checkpoint tensor when the graph asks for it, encodes it
// (float32 or float16, or quantized per the graph's request) and appends it to the external data
// file, so only one tensor is in memory at a time.
import { closeSync, openSync, writeSync } from 'node:fs';
import { Float16Array } from '@petamoriken/float16';
import { DataType, type DataTypeId, type ExternalTensorRef, type GraphBuilder } from './onnx-builder.js';
import { blockCount, quantizeBlockwise, quantizePerColumn, type QuantBits, type SourceLayout } from './quantize.js';
import { quantizedNames, type QuantizedRef, type WeightSource } from './weight-ops.js';

/** ORT maps external data; page-aligned offsets let it do so without copying. */
const DATA_ALIGNMENT = 4096;

type Transform = ((data: Float32Array) => void) | undefined;

export class ExternalWeightWriter implements WeightSource {
  private readonly fd: number;
  private offset = 0;
  private readonly refs = new Map<string, ExternalTensorRef>();

  /**
   * `read` returns a checkpoint tensor as float32 by its prefix-free name. With `float16`, float
   * tensors are stored as float16 under their own name and the graph reads them through a Cast
   * to float32, which ONNX Runtime folds into a float32 initializer when the session loads.
   */
  constructor(
    private readonly graph: GraphBuilder,
    path: string,
    private readonly location: string,
    private readonly read: (name: string) => Float32Array,
    private readonly float16 = false,
  ) {
    this.fd = openSync(path, 'w');
  }

  float(name: string, dims: number[], transform?: Transform): string {
    const data = this.load(name, transform);
    if (!this.float16) return this.put(name, DataType.FLOAT, dims, data);
    const half = new Float16Array(data);
    const stored = this.put(name, DataType.FLOAT16, dims, new Uint16Array(half.buffer, half.byteOffset, half.length));
    return this.graph.op('Cast', [stored], { to: DataType.FLOAT });
  }

  blockwise(name: string, n: number, k: number, layout: SourceLayout, bits: QuantBits, blockSize: number, transform?: Transform): QuantizedRef {
    const q = quantizeBlockwise(this.load(name, transform), n, k, layout, bits, blockSize);
    const kb = blockCount(k, blockSize);
    const names = quantizedNames(name);
    this.put(names.data, DataType.UINT8, [n, kb, (blockSize * bits) / 8], q.data);
    this.put(names.scales, DataType.FLOAT, [n, kb], q.scales);
    return names;
  }

  perColumn(name: string, k: number, n: number, transform?: Transform): QuantizedRef {
    const q = quantizePerColumn(this.load(name, transform), k, n);
    const names = quantizedNames(name);
    this.put(names.data, DataType.INT8, [k, n], q.data);
    this.put(names.scales, DataType.FLOAT, [n], q.scales);
    return names;
  }

  view(of: string, name: string, dims: number[]): string {
    const ref = this.refs.get(of);
    if (!ref) throw new Error(`view of ${of}: not written`);
    return this.graph.external(name, DataType.UINT8, dims, ref);
  }

  close(): void {
    closeSync(this.fd);
  }

  private load(name: string, transform: Transform): Float32Array {
    const data = this.read(name);
    transform?.(data);
    return data;
  }

  private put(name: string, type: DataTypeId, dims: number[], data: ArrayBufferView): string {
    const pad = (DATA_ALIGNMENT - (this.offset % DATA_ALIGNMENT)) % DATA_ALIGNMENT;
    if (pad) writeSync(this.fd, new Uint8Array(pad));
    this.offset += pad;
    writeSync(this.fd, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    const ref = { location: this.location, offset: this.offset, length: data.byteLength };
    this.offset += data.byteLength;
    this.refs.set(name, ref);
    return this.graph.external(name, type, dims, ref);
  }
}
