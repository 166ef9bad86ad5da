// JSON Schema -> byte NFA whose every accepted string is a JSON text that validates against the
// schema (the outlines construction). Output is compact JSON (one optional space after `:` and
// `,`), properties in the order the schema declares them, only declared properties. A keyword
// this module cannot enforce is refused by name: never silently ignored.
import toRegexRange from 'to-regex-range';
import { byteRange, concat, literal, optional, regexNfa, repeat, union, utf8CharSet } from './byte-automaton.js';
import { ConstraintError } from './constraint-error.js';
import { CharSet, type Char, type NFA } from 'refa';

type Schema = boolean | { [keyword: string]: unknown };

/** Keywords that only describe; they constrain nothing. */
const ANNOTATIONS = ['title', 'description', '$schema', '$id', '$comment', 'examples', 'default', 'deprecated', 'readOnly', 'writeOnly'];
const ENFORCED = [
  'type', 'enum', 'const', 'anyOf', '$ref', '$defs', 'definitions',
  'properties', 'required', 'additionalProperties',
  'items', 'minItems', 'maxItems',
  'minLength', 'maxLength', 'pattern', 'format',
  'minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum',
];
const KNOWN = new Set([...ANNOTATIONS, ...ENFORCED]);
const TYPES = ['string', 'number', 'integer', 'boolean', 'null', 'object', 'array'];
/** How deeply an unconstrained value inside a schema (`{}`, `{"type":"object"}`) may nest. */
const FREE_DEPTH = 2;
/** How deeply json_object mode's object may nest (the automaton grows fast with it). */
export const JSON_OBJECT_DEPTH = 3;

// Numbers stay within what a double holds: a random walk through digits (a small model) would
// otherwise run to max_tokens. Bounded integers may have as many digits as their bounds need.
const MAX_INTEGER_DIGITS = 16;
const MAX_FRACTION_DIGITS = 16;
const MAX_EXPONENT_DIGITS = 3;

const WS = () => optional(literal(' '));
const DIGIT = () => byteRange(0x30, 0x39);
const HEX = () => union([byteRange(0x30, 0x39), byteRange(0x41, 0x46), byteRange(0x61, 0x66)]);

/** One character of a JSON string's content: anything but `"`, `\` and controls, or an escape. */
function jsonStringChar(): NFA {
  const plain = CharSet.all(0x10ffff as Char).without(CharSet.empty(0x10ffff as Char).union([
    { min: 0 as Char, max: 0x1f as Char },
    { min: 0x22 as Char, max: 0x22 as Char },
    { min: 0x5c as Char, max: 0x5c as Char },
  ]));
  // \u escapes of lone surrogates are left out: a validator would count a pair as one character.
  const unicodeEscape = concat([
    literal('\\u'),
    union([concat([union([byteRange(0x30, 0x39), byteRange(0x41, 0x43), byteRange(0x61, 0x63), byteRange(0x45, 0x46), byteRange(0x65, 0x66)]), HEX(), HEX(), HEX()]),
      concat([union([literal('d'), literal('D')]), byteRange(0x30, 0x37), HEX(), HEX()])]),
  ]);
  return union([utf8CharSet(plain), concat([literal('\\'), union(['"', '\\', '/', 'b', 'f', 'n', 'r', 't'].map(literal))]), unicodeEscape]);
}

const JSON_NUMBER = () =>
  concat([
    optional(literal('-')),
    union([literal('0'), concat([byteRange(0x31, 0x39), repeat(DIGIT(), 0, MAX_INTEGER_DIGITS - 1)])]),
    optional(concat([literal('.'), repeat(DIGIT(), 1, MAX_FRACTION_DIGITS)])),
    optional(concat([union([literal('e'), literal('E')]), optional(union([literal('+'), literal('-')])), repeat(DIGIT(), 1, MAX_EXPONENT_DIGITS)])),
  ]);

const FORMATS: Record<string, string> = {
  date: '\\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\\d|3[01])',
  time: '([01]\\d|2[0-3]):[0-5]\\d:[0-5]\\d(\\.\\d{1,6})?(Z|[+-]([01]\\d|2[0-3]):[0-5]\\d)',
  'date-time': '\\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\\d|3[01])T([01]\\d|2[0-3]):[0-5]\\d:[0-5]\\d(\\.\\d{1,6})?(Z|[+-]([01]\\d|2[0-3]):[0-5]\\d)',
  uuid: '[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}',
};

export class JsonSchemaCompiler {
  private readonly refStack: string[] = [];

  constructor(
    private readonly root: Schema,
    /** Where the schema sits in the request, for error messages (e.g. `response_format.json_schema.schema`). */
    private readonly where: string,
  ) {}

  compile(): NFA {
    return this.value(this.root, '#');
  }

  /** Any JSON value, nesting at most `depth` containers deep. */
  static anyValue(depth = FREE_DEPTH): NFA {
    const parts = [JsonSchemaCompiler.string(), JSON_NUMBER(), literal('true'), literal('false'), literal('null')];
    if (depth > 0) {
      const member = () => concat([JsonSchemaCompiler.string(), literal(':'), WS(), JsonSchemaCompiler.anyValue(depth - 1)]);
      parts.push(JsonSchemaCompiler.list('{', '}', member, 0, Infinity), JsonSchemaCompiler.list('[', ']', () => JsonSchemaCompiler.anyValue(depth - 1), 0, Infinity));
    }
    return union(parts);
  }

  /** Any JSON object (response_format json_object). */
  static anyObject(depth = FREE_DEPTH): NFA {
    const member = () => concat([JsonSchemaCompiler.string(), literal(':'), WS(), JsonSchemaCompiler.anyValue(depth - 1)]);
    return JsonSchemaCompiler.list('{', '}', member, 0, Infinity);
  }

  private static string(min = 0, max = Infinity): NFA {
    return concat([literal('"'), repeat(jsonStringChar(), min, max), literal('"')]);
  }

  /** open item (, item)* close with between min and max items. */
  private static list(open: string, close: string, item: () => NFA, min: number, max: number): NFA {
    const more = () => repeat(concat([literal(','), WS(), item()]), Math.max(0, min - 1), max - 1);
    const some = concat([item(), more()]);
    return concat([literal(open), min > 0 ? some : optional(some), literal(close)]);
  }

  private fail(path: string, message: string): never {
    throw new ConstraintError(`${this.where}: ${message} (at ${path})`);
  }

  private value(schema: Schema, path: string): NFA {
    if (schema === true) return JsonSchemaCompiler.anyValue();
    if (schema === false) this.fail(path, 'the schema `false` accepts no value');
    if (typeof schema !== 'object' || schema === null || Array.isArray(schema)) this.fail(path, 'a schema must be an object or a boolean');
    for (const key of Object.keys(schema)) {
      if (!KNOWN.has(key)) this.fail(path, `the keyword \`${key}\` is not supported`);
    }
    if (schema.$ref !== undefined) return this.ref(schema, path);
    if (schema.const !== undefined) return literal(JSON.stringify(schema.const));
    if (schema.enum !== undefined) {
      if (!Array.isArray(schema.enum) || schema.enum.length === 0) this.fail(`${path}/enum`, '`enum` must be a non-empty array');
      return union(schema.enum.map((v) => literal(JSON.stringify(v))));
    }
    if (schema.anyOf !== undefined) {
      if (!Array.isArray(schema.anyOf) || schema.anyOf.length === 0) this.fail(`${path}/anyOf`, '`anyOf` must be a non-empty array');
      return union(schema.anyOf.map((s, i) => this.value(s as Schema, `${path}/anyOf/${i}`)));
    }
    const type = schema.type ?? this.impliedType(schema);
    if (type === undefined) return JsonSchemaCompiler.anyValue();
    const types = Array.isArray(type) ? type : [type];
    if (types.length === 0) this.fail(`${path}/type`, '`type` must not be empty');
    return union(types.map((t) => this.typed(schema, t, path)));
  }

  private impliedType(schema: Record<string, unknown>): string | undefined {
    if (schema.properties !== undefined || schema.required !== undefined || schema.additionalProperties !== undefined) return 'object';
    if (schema.items !== undefined || schema.minItems !== undefined || schema.maxItems !== undefined) return 'array';
    if (schema.pattern !== undefined || schema.format !== undefined || schema.minLength !== undefined || schema.maxLength !== undefined) return 'string';
    if (['minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum'].some((k) => schema[k] !== undefined)) return 'number';
    return undefined;
  }

  private typed(schema: Record<string, unknown>, type: unknown, path: string): NFA {
    if (typeof type !== 'string' || !TYPES.includes(type)) this.fail(`${path}/type`, `unknown type ${JSON.stringify(type)}`);
    switch (type) {
      case 'null':
        return literal('null');
      case 'boolean':
        return union([literal('true'), literal('false')]);
      case 'string':
        return this.stringValue(schema, path);
      case 'integer':
        return this.integer(schema, path);
      case 'number':
        return this.number(schema, path);
      case 'array':
        return this.array(schema, path);
      default:
        return this.object(schema, path);
    }
  }

  private ref(schema: Record<string, unknown>, path: string): NFA {
    const ref = schema.$ref;
    const match = typeof ref === 'string' ? /^#\/(\$defs|definitions)\/([^/]+)$/.exec(ref) : null;
    if (!match) this.fail(`${path}/$ref`, '`$ref` must point into this schema\'s `$defs` or `definitions` (`#/$defs/name`)');
    if (this.refStack.includes(ref as string)) this.fail(`${path}/$ref`, `recursive schemas are not supported (${ref} refers to itself)`);
    const defs = typeof this.root === 'object' ? (this.root[match[1]!] as Record<string, Schema> | undefined) : undefined;
    const name = match[2]!.replace(/~1/g, '/').replace(/~0/g, '~');
    const target = defs?.[name];
    if (target === undefined) this.fail(`${path}/$ref`, `${ref} is not defined`);
    this.refStack.push(ref as string);
    try {
      return this.value(target, ref as string);
    } finally {
      this.refStack.pop();
    }
  }

  private count(schema: Record<string, unknown>, key: string, path: string): number | undefined {
    const v = schema[key];
    if (v === undefined) return undefined;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) this.fail(`${path}/${key}`, `\`${key}\` must be a non-negative integer`);
    if (v > 1000) this.fail(`${path}/${key}`, `\`${key}\` above 1000 is not supported`);
    return v;
  }

  private stringValue(schema: Record<string, unknown>, path: string): NFA {
    const min = this.count(schema, 'minLength', path) ?? 0;
    const max = this.count(schema, 'maxLength', path) ?? Infinity;
    const { pattern, format } = schema;
    const hasLength = schema.minLength !== undefined || schema.maxLength !== undefined;
    if (pattern !== undefined || format !== undefined) {
      const key = pattern !== undefined ? 'pattern' : 'format';
      if (pattern !== undefined && format !== undefined) this.fail(path, '`pattern` and `format` cannot be combined');
      if (hasLength) this.fail(path, `\`minLength\`/\`maxLength\` cannot be combined with \`${key}\``);
      let source: string;
      if (pattern !== undefined) {
        if (typeof pattern !== 'string') this.fail(`${path}/pattern`, '`pattern` must be a string');
        source = pattern;
      } else {
        if (typeof format !== 'string' || !(format in FORMATS)) {
          this.fail(`${path}/format`, `the format ${JSON.stringify(format)} is not supported (supported: ${Object.keys(FORMATS).join(', ')})`);
        }
        source = FORMATS[format]!;
      }
      return concat([literal('"'), regexNfa(source, 'json-string', `${this.where} (at ${path}/${key})`), literal('"')]);
    }
    if (min > max) this.fail(path, '`minLength` is greater than `maxLength`');
    return JsonSchemaCompiler.string(min, max);
  }

  /** The integer bounds of an integer schema, inclusive, exclusive bounds turned inclusive. */
  private bound(schema: Record<string, unknown>, key: string, path: string): number | undefined {
    const v = schema[key];
    if (v === undefined) return undefined;
    if (typeof v !== 'number' || !Number.isFinite(v)) this.fail(`${path}/${key}`, `\`${key}\` must be a number`);
    if (Math.abs(v) > 1e15) this.fail(`${path}/${key}`, `\`${key}\` beyond 1e15 is not supported`);
    return v;
  }

  private integer(schema: Record<string, unknown>, path: string): NFA {
    const lo = [this.bound(schema, 'minimum', path), this.bound(schema, 'exclusiveMinimum', path)];
    const hi = [this.bound(schema, 'maximum', path), this.bound(schema, 'exclusiveMaximum', path)];
    const min = Math.max(lo[0] !== undefined ? Math.ceil(lo[0]) : -Infinity, lo[1] !== undefined ? Math.floor(lo[1]) + 1 : -Infinity);
    const max = Math.min(hi[0] !== undefined ? Math.floor(hi[0]) : Infinity, hi[1] !== undefined ? Math.ceil(hi[1]) - 1 : Infinity);
    if (min > max) this.fail(path, 'the bounds leave no integer');
    const parts: NFA[] = [];
    if (max >= 0) parts.push(integerRange(Math.max(min, 0), max));
    if (min < 0) parts.push(concat([literal('-'), integerRange(Math.max(-max, 1), -min)]));
    return union(parts);
  }

  private number(schema: Record<string, unknown>, path: string): NFA {
    const get = (key: string) => {
      const v = this.bound(schema, key, path);
      if (v !== undefined && !Number.isInteger(v)) this.fail(`${path}/${key}`, `\`${key}\` of a number must be an integer (fractional bounds are not supported)`);
      return v;
    };
    const [min, exMin, max, exMax] = [get('minimum'), get('exclusiveMinimum'), get('maximum'), get('exclusiveMaximum')];
    if (min === undefined && exMin === undefined && max === undefined && exMax === undefined) return JSON_NUMBER();
    // The tighter of each pair; on a tie the exclusive one.
    const a = exMin !== undefined && (min === undefined || exMin >= min) ? { v: exMin, incl: false } : min !== undefined ? { v: min, incl: true } : null;
    const b = exMax !== undefined && (max === undefined || exMax <= max) ? { v: exMax, incl: false } : max !== undefined ? { v: max, incl: true } : null;
    const parts: NFA[] = [];
    // x >= 0 written without a sign: magnitude in [max(a, 0), b].
    if (!b || b.v >= 0) {
      const lo = !a || a.v < 0 ? { v: 0, incl: true } : a;
      const m = magnitude(lo, b);
      if (m) parts.push(m);
    }
    // x < 0 written as -M: M in [max(-b, 0), -a].
    if (!a || a.v < 0) {
      const lo = !b || b.v > 0 ? { v: 0, incl: false } : { v: -b.v, incl: b.incl };
      const m = magnitude(lo, a ? { v: -a.v, incl: a.incl } : null);
      if (m) parts.push(concat([literal('-'), m]));
    }
    if (parts.length === 0) this.fail(path, 'the bounds leave no number');
    return union(parts);
  }

  private array(schema: Record<string, unknown>, path: string): NFA {
    const min = this.count(schema, 'minItems', path) ?? 0;
    const max = this.count(schema, 'maxItems', path) ?? Infinity;
    if (min > max) this.fail(path, '`minItems` is greater than `maxItems`');
    if (max === 0) return literal('[]');
    const items = schema.items ?? true;
    if (Array.isArray(items)) this.fail(`${path}/items`, '`items` must be a schema (tuple form is not supported)');
    const item = () => this.value(items as Schema, `${path}/items`);
    return JsonSchemaCompiler.list('[', ']', item, min, max);
  }

  private object(schema: Record<string, unknown>, path: string): NFA {
    const { properties, required, additionalProperties } = schema;
    if (additionalProperties !== undefined && typeof additionalProperties !== 'boolean') {
      this.fail(`${path}/additionalProperties`, '`additionalProperties` must be true or false (a schema is not supported)');
    }
    if (properties === undefined) {
      if (required !== undefined && (!Array.isArray(required) || required.length > 0)) this.fail(`${path}/required`, '`required` needs `properties`');
      return additionalProperties === false ? literal('{}') : JsonSchemaCompiler.anyObject();
    }
    if (typeof properties !== 'object' || properties === null || Array.isArray(properties)) this.fail(`${path}/properties`, '`properties` must be an object');
    const names = Object.keys(properties);
    const req = new Set<string>();
    if (required !== undefined) {
      if (!Array.isArray(required)) this.fail(`${path}/required`, '`required` must be an array of property names');
      for (const r of required) {
        if (typeof r !== 'string' || !names.includes(r)) this.fail(`${path}/required`, `required property ${JSON.stringify(r)} is not in \`properties\``);
        req.add(r);
      }
    }
    if (names.length === 0) return literal('{}');
    const member = (name: string) => concat([literal(JSON.stringify(name)), literal(':'), WS(), this.value((properties as Record<string, Schema>)[name]!, `${path}/properties/${name}`)]);
    // Declared order. Alternative i: property i comes first, every later one follows with a comma
    // (optional ones may be left out); only properties up to the first required one can lead.
    const alternatives: NFA[] = [];
    for (let i = 0; i < names.length; i++) {
      const rest = names.slice(i + 1).map((n) => {
        const part = concat([literal(','), WS(), member(n)]);
        return req.has(n) ? part : optional(part);
      });
      alternatives.push(concat([member(names[i]!), ...rest]));
      if (req.has(names[i]!)) break;
    }
    const body = union(alternatives);
    return concat([literal('{'), req.size > 0 ? body : optional(body), literal('}')]);
  }
}

/** Decimal integers lo..hi (hi may be Infinity), 0 <= lo, no leading zeros. */
function integerRange(lo: number, hi: number): NFA {
  if (hi !== Infinity) return regexNfa(toRegexRange(lo, hi, { capture: false }), 'raw', 'integer range');
  // [lo, inf): lo up to the largest number of as many digits, then anything longer.
  const digits = String(Math.max(lo, 1)).length;
  const top = 10 ** digits - 1;
  return union([
    regexNfa(toRegexRange(lo, top, { capture: false }), 'raw', 'integer range'),
    ...(digits < MAX_INTEGER_DIGITS ? [concat([byteRange(0x31, 0x39), repeat(DIGIT(), digits, Math.max(digits, MAX_INTEGER_DIGITS - 1))])] : []),
  ]);
}

interface Bound {
  v: number;
  incl: boolean;
}

/**
 * Unsigned decimals (no exponent) in the interval from `lo` to `hi` (null: unbounded), both
 * integers: the integer part decides, except at the ends where the fraction must be zero or
 * non-zero. Null when the interval is empty.
 */
function magnitude(lo: Bound, hi: Bound | null): NFA | null {
  const anyFraction = () => optional(concat([literal('.'), repeat(DIGIT(), 1, MAX_FRACTION_DIGITS)]));
  const zeroFraction = () => optional(concat([literal('.'), repeat(literal('0'), 1, MAX_FRACTION_DIGITS)]));
  // A non-zero digit somewhere in at most MAX_FRACTION_DIGITS digits.
  const nonZeroFraction = () =>
    concat([literal('.'), union(Array.from({ length: MAX_FRACTION_DIGITS }, (_, k) =>
      concat([repeat(DIGIT(), k, k), byteRange(0x31, 0x39), repeat(DIGIT(), 0, MAX_FRACTION_DIGITS - k - 1)])))]);
  const exactly = (n: number) => literal(String(n));
  if (hi && hi.v < lo.v) return null;
  if (hi && hi.v === lo.v) return lo.incl && hi.incl ? concat([exactly(lo.v), zeroFraction()]) : null;
  const parts = [concat([exactly(lo.v), lo.incl ? anyFraction() : nonZeroFraction()])];
  const innerTop = hi ? hi.v - 1 : Infinity;
  if (lo.v + 1 <= innerTop) parts.push(concat([integerRange(lo.v + 1, innerTop), anyFraction()]));
  if (hi?.incl) parts.push(concat([exactly(hi.v), zeroFraction()]));
  return union(parts);
}
