// A small typed layer over onnx-proto for writing graphs by hand: nodes get unique output
// names, constants become initializers, and large weights go to an external data file so the
// protobuf itself stays a few hundred kilobytes whatever the model size.
import onnxProto from 'onnx-proto';

const { onnx } = onnxProto;
type TensorProto = InstanceType<typeof onnx.TensorProto>;
type GraphProto = InstanceType<typeof onnx.GraphProto>;

export const DataType = {
  FLOAT: onnx.TensorProto.DataType.FLOAT,
  INT64: onnx.TensorProto.DataType.INT64,
  BOOL: onnx.TensorProto.DataType.BOOL,
  UINT8: onnx.TensorProto.DataType.UINT8,
  INT8: onnx.TensorProto.DataType.INT8,
  INT32: onnx.TensorProto.DataType.INT32,
  FLOAT16: onnx.TensorProto.DataType.FLOAT16,
} as const;
export type DataTypeId = (typeof DataType)[keyof typeof DataType];

/** A symbolic or fixed dimension of a graph input/output. */
export type Dim = string | number;

type AttrValue = number | string | number[] | { float: number } | { graph: GraphProto };

export interface ExternalTensorRef {
  location: string;
  offset: number;
  length: number;
}

export class GraphBuilder {
  private readonly nodes: InstanceType<typeof onnx.NodeProto>[] = [];
  private readonly initializers: TensorProto[] = [];
  private readonly inputs: InstanceType<typeof onnx.ValueInfoProto>[] = [];
  private readonly outputs: InstanceType<typeof onnx.ValueInfoProto>[] = [];
  private readonly constCache = new Map<string, string>();
  private counter = 0;
  /** The top-level graph: a branch's constants and node names are the top level's, so they stay unique. */
  private readonly root: GraphBuilder;

  constructor(root?: GraphBuilder) {
    this.root = root ?? this;
  }

  /**
   * An If node: `then` runs when `cond` (a one-element bool) is true, else `otherwise`. Each
   * branch builds its nodes on its own builder, may read any value of the graph around it, and
   * returns its outputs, one per entry of `types`.
   */
  ifElse(cond: string, types: DataTypeId[], then: (g: GraphBuilder) => string[], otherwise: (g: GraphBuilder) => string[]): string[] {
    const branch = (name: string, build: (g: GraphBuilder) => string[]): { graph: GraphProto } => {
      const sub = new GraphBuilder(this.root);
      const values = build(sub);
      const id = this.root.counter++;
      // Outputs of any rank: a branch output's declared shape would be checked against the other branch's.
      // A value the branch computes is its output as it is; one from around it (a subgraph may not
      // output an outer value) goes through an Identity. Every node costs a step some microseconds.
      const produced = new Set(sub.nodes.flatMap((n) => n.output ?? []));
      values.forEach((v, i) => {
        let out = v;
        if (!produced.has(v)) sub.op('Identity', [v], {}, (out = `${name}_${id}_${i}`));
        sub.outputs.push(onnx.ValueInfoProto.create({ name: out, type: { tensorType: { elemType: types[i]! } } }));
      });
      return { graph: onnx.GraphProto.create({ name: `${name}_${id}`, node: sub.nodes, output: sub.outputs }) };
    };
    return this.opN('If', [cond], types.length, { then_branch: branch('then', then), else_branch: branch('else', otherwise) });
  }

  input(name: string, type: DataTypeId, dims: Dim[]): string {
    this.inputs.push(valueInfo(name, type, dims));
    return name;
  }

  /** Declares a graph output; name the producing node's output `name` to avoid an Identity node. */
  output(value: string, name: string, type: DataTypeId, dims: Dim[]): void {
    if (value !== name) this.op('Identity', [value], {}, name);
    this.outputs.push(valueInfo(name, type, dims));
  }

  /** Adds a node and returns its (first) output name; `outputs` > 1 returns several via opN. */
  op(type: string, inputs: string[], attrs: Record<string, AttrValue> = {}, outName?: string, domain = ''): string {
    return this.opN(type, inputs, 1, attrs, outName ? [outName] : undefined, domain)[0];
  }

  opN(
    type: string,
    inputs: string[],
    outputs: number,
    attrs: Record<string, AttrValue> = {},
    outNames?: string[],
    domain = '',
  ): string[] {
    const id = this.root.counter++;
    const names = outNames ?? Array.from({ length: outputs }, (_, i) => `${type.toLowerCase()}_${id}${outputs > 1 ? `_${i}` : ''}`);
    this.nodes.push(
      onnx.NodeProto.create({
        opType: type,
        domain,
        name: `${type}_${id}`,
        input: inputs,
        output: names,
        attribute: Object.entries(attrs).map(([name, value]) => attribute(name, value)),
      }),
    );
    return names;
  }

  /** A small constant initializer, deduplicated by value. */
  constInt64(values: number[], dims: number[] = [values.length]): string {
    return this.cached(`i64:${dims}:${values}`, (name) =>
      onnx.TensorProto.create({ name, dataType: DataType.INT64, dims, int64Data: values }),
    );
  }

  constFloat(values: number[], dims: number[] = [values.length]): string {
    return this.cached(`f32:${dims}:${values}`, (name) =>
      onnx.TensorProto.create({ name, dataType: DataType.FLOAT, dims, floatData: values }),
    );
  }

  /** A scalar zero of any numeric type (a fill value for Expand). */
  constZero(dataType: DataTypeId): string {
    const bytes = dataType === DataType.FLOAT16 ? 2 : dataType === DataType.INT64 ? 8 : dataType === DataType.UINT8 || dataType === DataType.INT8 || dataType === DataType.BOOL ? 1 : 4;
    return this.cached(`zero:${dataType}`, (name) => onnx.TensorProto.create({ name, dataType, dims: [], rawData: new Uint8Array(bytes) }));
  }

  constUint8(values: number[], dims: number[] = [values.length]): string {
    return this.cached(`u8:${dims}:${values}`, (name) =>
      onnx.TensorProto.create({ name, dataType: DataType.UINT8, dims, rawData: Uint8Array.from(values) }),
    );
  }

  /**
   * A weight of any type whose bytes live in the external data file at `ref`. Two initializers
   * may name the same bytes with different shapes (a tied embedding read by two ops).
   */
  external(name: string, dataType: DataTypeId, dims: number[], ref: ExternalTensorRef): string {
    this.initializers.push(
      onnx.TensorProto.create({
        name,
        dataType,
        dims,
        dataLocation: onnx.TensorProto.DataLocation.EXTERNAL,
        externalData: [
          { key: 'location', value: ref.location },
          { key: 'offset', value: String(ref.offset) },
          { key: 'length', value: String(ref.length) },
        ],
      }),
    );
    return name;
  }

  encode(opts: { opset: number; producerVersion: string; doc: string; metadata: Record<string, string> }): Uint8Array {
    const model = onnx.ModelProto.create({
      irVersion: 8,
      producerName: 'gpt2-serve',
      producerVersion: opts.producerVersion,
      docString: opts.doc,
      opsetImport: [
        { domain: '', version: opts.opset },
        { domain: 'com.microsoft', version: 1 },
      ],
      metadataProps: Object.entries(opts.metadata).map(([key, value]) => ({ key, value })),
      graph: onnx.GraphProto.create({
        name: 'gpt2',
        node: this.nodes,
        initializer: this.initializers,
        input: this.inputs,
        output: this.outputs,
      }),
    });
    return onnx.ModelProto.encode(model).finish();
  }

  private cached(key: string, make: (name: string) => TensorProto): string {
    const root = this.root;
    let name = root.constCache.get(key);
    if (!name) {
      name = `const_${root.constCache.size}`;
      root.initializers.push(make(name));
      root.constCache.set(key, name);
    }
    return name;
  }
}

function valueInfo(name: string, elemType: DataTypeId, dims: Dim[]) {
  return onnx.ValueInfoProto.create({
    name,
    type: {
      tensorType: {
        elemType,
        shape: { dim: dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) },
      },
    },
  });
}

function attribute(name: string, value: AttrValue) {
  const T = onnx.AttributeProto.AttributeType;
  if (typeof value === 'string') return { name, type: T.STRING, s: new TextEncoder().encode(value) };
  if (Array.isArray(value)) return { name, type: T.INTS, ints: value };
  if (typeof value === 'number') return { name, type: T.INT, i: value };
  if ('graph' in value) return { name, type: T.GRAPH, g: value.graph };
  return { name, type: T.FLOAT, f: value.float };
}
