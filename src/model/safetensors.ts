// Reading and writing the safetensors format (an 8-byte little-endian header length, a JSON
// header, then raw little-endian tensor bytes). There is no maintained npm reader, and the format
// is small enough that a reader which never loads the whole file is a few dozen lines: the
// exporter reads one tensor at a time so peak memory stays near one tensor, not one checkpoint.
import { closeSync, openSync, readSync, writeSync, fstatSync } from 'node:fs';

export type SafetensorsDtype = 'F32' | 'F16' | 'BF16' | 'F64' | 'I64' | 'I32' | 'U8' | 'BOOL';

export interface TensorInfo {
  dtype: SafetensorsDtype;
  shape: number[];
  /** Byte range inside the data section. */
  begin: number;
  end: number;
}

const FLOAT_BYTES: Partial<Record<SafetensorsDtype, number>> = { F32: 4, F16: 2, BF16: 2, F64: 8 };

export class SafetensorsFile {
  readonly tensors: ReadonlyMap<string, TensorInfo>;
  private readonly fd: number;
  private readonly dataStart: number;

  constructor(readonly path: string) {
    this.fd = openSync(path, 'r');
    try {
      const size = fstatSync(this.fd).size;
      const lenBuf = Buffer.alloc(8);
      if (size < 8 || readSync(this.fd, lenBuf, 0, 8, 0) !== 8) throw new Error('file is shorter than its 8-byte header length');
      const headerLen = Number(lenBuf.readBigUInt64LE(0));
      if (headerLen <= 0 || 8 + headerLen > size) throw new Error(`header length ${headerLen} does not fit a ${size}-byte file`);
      const header = Buffer.alloc(headerLen);
      readSync(this.fd, header, 0, headerLen, 8);
      let json: Record<string, unknown>;
      try {
        json = JSON.parse(header.toString('utf8'));
      } catch {
        throw new Error('header is not valid JSON (not a safetensors file?)');
      }
      this.dataStart = 8 + headerLen;
      const tensors = new Map<string, TensorInfo>();
      for (const [name, raw] of Object.entries(json)) {
        if (name === '__metadata__') continue;
        const info = raw as { dtype: SafetensorsDtype; shape: number[]; data_offsets: [number, number] };
        const [begin, end] = info.data_offsets;
        if (this.dataStart + end > size) throw new Error(`tensor ${name} ends past the end of the file (truncated download?)`);
        tensors.set(name, { dtype: info.dtype, shape: info.shape, begin, end });
      }
      this.tensors = tensors;
    } catch (err) {
      closeSync(this.fd);
      throw new Error(`${path}: ${(err as Error).message}`);
    }
  }

  /** Reads one tensor converted to float32 (F32, F16, BF16 and F64 are accepted). */
  readFloat32(name: string): Float32Array {
    const info = this.tensors.get(name);
    if (!info) throw new Error(`${this.path}: tensor ${name} is missing`);
    const width = FLOAT_BYTES[info.dtype];
    if (!width) throw new Error(`${this.path}: tensor ${name} has dtype ${info.dtype}; only F32, F16, BF16 and F64 weights are supported`);
    const count = info.shape.reduce((a, b) => a * b, 1);
    if ((info.end - info.begin) !== count * width) throw new Error(`${this.path}: tensor ${name} byte size does not match its shape ${JSON.stringify(info.shape)}`);
    const out = new Float32Array(count);
    const bytes = info.dtype === 'F32' ? new Uint8Array(out.buffer) : new Uint8Array(count * width);
    readSync(this.fd, bytes, 0, bytes.length, this.dataStart + info.begin);
    if (info.dtype === 'F16') decodeF16(new Uint16Array(bytes.buffer, 0, count), out);
    else if (info.dtype === 'BF16') decodeBF16(new Uint16Array(bytes.buffer, 0, count), out);
    else if (info.dtype === 'F64') out.set(new Float64Array(bytes.buffer, 0, count));
    return out;
  }

  close(): void {
    closeSync(this.fd);
  }
}

function decodeF16(src: Uint16Array, dst: Float32Array): void {
  for (let i = 0; i < src.length; i++) {
    const h = src[i];
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    if (exp === 0) dst[i] = sign * frac * 2 ** -24;
    else if (exp === 31) dst[i] = frac ? NaN : sign * Infinity;
    else dst[i] = sign * (1 + frac / 1024) * 2 ** (exp - 15);
  }
}

function decodeBF16(src: Uint16Array, dst: Float32Array): void {
  const bits = new Uint32Array(dst.buffer, dst.byteOffset, dst.length);
  for (let i = 0; i < src.length; i++) bits[i] = src[i] << 16;
}

/** Writes float32 tensors as a safetensors file (used to make test checkpoints). */
export function writeSafetensors(path: string, tensors: ReadonlyMap<string, { shape: number[]; data: Float32Array }>): void {
  const header: Record<string, unknown> = {};
  let offset = 0;
  for (const [name, t] of tensors) {
    header[name] = { dtype: 'F32', shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8); // keeps tensor data 8-byte aligned, as HF's writer does
  const fd = openSync(path, 'w');
  try {
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
    writeSync(fd, len);
    writeSync(fd, Buffer.from(json, 'utf8'));
    for (const t of tensors.values()) writeSync(fd, new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  } finally {
    closeSync(fd);
  }
}
