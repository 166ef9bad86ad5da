// A WeightSource over an exported folder's initializers: every tensor the serving graph declared
// is declared again, by the same name, over the same bytes of model.onnx.data. Graphs built from
// it at load time (the WebGPU step graphs, benchmark probes) share the folder's weights without
// another export. Transforms are not applied again: the stored bytes already carry them.
import { readFileSync } from 'node:fs';
import onnxProto from 'onnx-proto';
import { DataType, type DataTypeId, type GraphBuilder } from './onnx-builder.js';
import { quantizedNames, type QuantizedRef, type WeightSource } from './weight-ops.js';

/**
 * `floatType`: the float type the new graph computes in. Float tensors stored in another float
 * type are read through a Cast (ONNX Runtime folds it at load, so the session holds the weights
 * once, in the graph's type). Quantized scales follow it too (they are in the activations' type).
 */
export function exportedWeights(g: GraphBuilder, modelFile: string, floatType: DataTypeId = DataType.FLOAT): WeightSource {
  const { onnx } = onnxProto;
  const model = onnx.ModelProto.decode(readFileSync(modelFile));
  const inits = new Map(model.graph!.initializer!.map((t) => [t.name!, t]));
  const declared = new Map<string, string>();
  const reuse = (name: string, as = name, dims?: number[]): { name: string; type: DataTypeId } => {
    const t = inits.get(name);
    if (!t) throw new Error(`${modelFile}: no initializer ${name}`);
    const type = t.dataType as DataTypeId;
    if (!declared.has(as)) {
      const ext = Object.fromEntries(t.externalData!.map((e) => [e.key, e.value]));
      declared.set(as, g.external(as, type, dims ?? t.dims!.map(Number), { location: ext.location!, offset: Number(ext.offset), length: Number(ext.length) }));
    }
    return { name: declared.get(as)!, type };
  };
  const inFloatType = ({ name, type }: { name: string; type: DataTypeId }) => (type === floatType ? name : g.op('Cast', [name], { to: floatType }));
  const quantized = (name: string): QuantizedRef => {
    const names = quantizedNames(name);
    return { data: reuse(names.data).name, scales: inFloatType(reuse(names.scales)) };
  };
  return {
    float: (name) => inFloatType(reuse(name)),
    blockwise: (name) => quantized(name),
    perColumn: (name) => quantized(name),
    view: (of, name, dims) => reuse(of, name, dims).name,
  };
}
