// src/ holds the product, and nothing else: what builds into the image's dist/src and dist/scripts.
// Every module under src/ and scripts/ is reached through imports from a command a user runs (the
// package.json scripts that run dist/src/... or dist/scripts/...: the server, download, export,
// make-tiny), and every export of one, and every member of an exported class, is used by the
// product itself (its own module included: a test may import what the product uses too). Code
// that only tools or tests use belongs in tools/ or test/helpers/; code nothing uses, nowhere.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const PRODUCT_DIRS = ['src', 'scripts'];
const rel = (file: string) => path.relative(ROOT, file).split(path.sep).join('/');

function tsFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const full = path.join(dir, e.name);
    return e.isDirectory() ? tsFiles(full) : e.name.endsWith('.ts') ? [full] : [];
  });
}

const PRODUCT = PRODUCT_DIRS.flatMap((d) => tsFiles(path.join(ROOT, d)));

/**
 * Members only tests read, allowed: each observes private state that only its class can see, so
 * it cannot move to test/helpers. An entry the product starts to use, or that goes, fails the
 * test until it is taken off.
 */
const TEST_OBSERVERS = [
  'src/engine/kv-cache.ts: BlockAllocator.cachedIdleCount', // prefix cache: cached blocks nobody reads
  'src/engine/kv-cache.ts: BlockAllocator.refCount', // n > 1 choices share their prompt's blocks
  'src/engine/webgpu-runner.ts: WebGpuRunner.poolLocations', // the KV pool stays on the device
];
/** Members the language calls, never by name (`for await` calls return() when a loop leaves early). */
const PROTOCOL_MEMBERS = new Set(['return', 'throw']);

/** The modules package.json's scripts run from dist/src and dist/scripts, as their sources. */
function entryPoints(): string[] {
  const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
  const entries = new Set<string>();
  for (const command of Object.values(pkg.scripts)) {
    for (const m of command.matchAll(/\bdist\/((?:src|scripts)\/[\w/.-]+)\.js\b/g)) entries.add(path.join(ROOT, `${m[1]}.ts`));
  }
  return [...entries];
}

/**
 * The relative modules `file` loads: imports and re-exports (static, dynamic and type-only: a
 * module only the product's types name is still the product's), and the worker entries it starts
 * with spawnWorker(import.meta.url, 'name'), which no import names.
 */
function importsOf(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  const specifiers = ts.preProcessFile(text, true, true).importedFiles.map((f) => f.fileName);
  for (const m of text.matchAll(/spawnWorker\(\s*import\.meta\.url,\s*'([^']+)'/g)) specifiers.push(`./${m[1]}.js`);
  return specifiers.filter((s) => s.startsWith('.')).map((s) => path.resolve(path.dirname(file), s.replace(/\.js$/, '.ts')));
}

test('the entry points are the server and the user-facing scripts', () => {
  assert.deepEqual(entryPoints().map(rel).sort(), ['scripts/download.ts', 'scripts/export.ts', 'scripts/make-tiny.ts', 'src/main.ts']);
});

test('every module under src/ and scripts/ is reached by imports from an entry point', () => {
  const reached = new Set(entryPoints());
  const queue = [...reached];
  for (let file = queue.shift(); file; file = queue.shift()) {
    for (const dep of importsOf(file)) {
      if (!reached.has(dep)) {
        reached.add(dep);
        queue.push(dep);
      }
    }
  }
  const unreached = PRODUCT.filter((f) => !reached.has(f)).map(rel);
  assert.deepEqual(unreached, [], 'modules no command imports: move them to tools/ or test/helpers/ (whoever uses them)');
});

test('every export of a module under src/ and scripts/, and every member of an exported class, is used by the product', () => {
  const config = ts.getParsedCommandLineOfConfigFile(path.join(ROOT, 'tsconfig.json'), {}, {
    ...ts.sys,
    onUnRecoverableConfigFileDiagnostic: (d) => assert.fail(ts.flattenDiagnosticMessageText(d.messageText, '\n')),
  })!;
  const program = ts.createProgram(PRODUCT, { ...config.options, noEmit: true });
  const checker = program.getTypeChecker();
  const target = (s: ts.Symbol) => (s.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(s) : s);
  const productFiles = program.getSourceFiles().filter((sf) => PRODUCT.includes(path.resolve(sf.fileName)));

  // The declarations of every symbol a product module names, other than where it is declared.
  // (Declarations, not symbols: a member read through an instance type is an instantiated copy of
  // the class's symbol, since every class is generic over its `this` type.)
  const usedDeclarations = new Set<ts.Node>();
  const use = (s: ts.Symbol) => target(s).declarations?.forEach((d) => usedDeclarations.add(d));
  const used = (s: ts.Symbol) => target(s).declarations?.some((d) => usedDeclarations.has(d)) ?? false;
  const visit = (node: ts.Node): void => {
    // A re-export (`export { f } from`) is not a use: f is checked as the re-exporter's export.
    if (ts.isIdentifier(node) && !ts.isExportSpecifier(node.parent)) {
      const symbol = checker.getSymbolAtLocation(node);
      if (symbol && !symbol.declarations?.some((d) => (d as ts.NamedDeclaration).name === node)) use(symbol);
    }
    // `const { f } = await import('./m.js')`: the binding names m's export f.
    if (ts.isBindingElement(node) && ts.isObjectBindingPattern(node.parent)) {
      const key = node.propertyName ?? node.name;
      if (ts.isIdentifier(key)) {
        const property = checker.getTypeAtLocation(node.parent).getProperty(key.text);
        if (property) use(property);
      }
    }
    ts.forEachChild(node, visit);
  };
  productFiles.forEach(visit);

  // A class member counts as used when it, or the member of a base class or implemented
  // interface it stands for, is named somewhere (the engine calls runners through ModelRunner).
  const memberUsed = (cls: ts.ClassDeclaration, name: string, own: ts.Symbol): boolean => {
    if (used(own)) return true;
    const type = checker.getTypeAtLocation(cls);
    const bases = [...(type.isClassOrInterface() ? checker.getBaseTypes(type) : []), ...(cls.heritageClauses ?? []).flatMap((h) => h.types.map((t) => checker.getTypeAtLocation(t)))];
    const seen = new Set<ts.Type>();
    const pending = [...bases];
    for (let base = pending.pop(); base; base = pending.pop()) {
      if (seen.has(base)) continue;
      seen.add(base);
      const member = base.getProperty(name);
      if (member && used(member)) return true;
      if (base.isClassOrInterface()) pending.push(...checker.getBaseTypes(base));
    }
    return false;
  };

  const unused: string[] = [];
  for (const sf of productFiles) {
    const moduleSymbol = checker.getSymbolAtLocation(sf);
    if (!moduleSymbol) continue;
    for (const exported of checker.getExportsOfModule(moduleSymbol)) {
      const symbol = target(exported);
      if (!used(symbol)) unused.push(`${rel(sf.fileName)}: ${exported.name}`);
      const cls = symbol.declarations?.find(ts.isClassDeclaration);
      if (!cls) continue;
      for (const member of cls.members) {
        if (!member.name || ts.isComputedPropertyName(member.name) || PROTOCOL_MEMBERS.has(member.name.getText())) continue;
        const own = checker.getSymbolAtLocation(member.name);
        if (own && !memberUsed(cls, member.name.getText(), own)) unused.push(`${rel(sf.fileName)}: ${exported.name}.${member.name.getText()}`);
      }
    }
  }
  assert.deepEqual(
    unused.filter((u) => !TEST_OBSERVERS.includes(u)),
    [],
    'exports (or members) only tools or tests use: move them to tools/ or test/helpers/, and delete what nothing uses',
  );
  assert.deepEqual(TEST_OBSERVERS.filter((o) => !unused.includes(o)), [], 'TEST_OBSERVERS entries the product now uses, or that are gone');
});
