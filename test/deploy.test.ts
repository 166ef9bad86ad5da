// The deployment files against the repository they deploy: Dockerfile, .dockerignore, deploy/
// (Kubernetes manifests, Kustomization, adapter rule, download Job) and docs/deploy.md. Offline and
// without Docker or a cluster: the files are parsed and cross-checked with package.json,
// tsconfig.json, .ci/run, src/config.ts (SETTINGS), src/server/metrics.ts (the queue gauge) and the
// installed onnxruntime-node. YAML is read with the `yaml` package in YAML 1.1 mode, the way
// Kubernetes reads manifests (`yaml` is in node_modules through @fastify/swagger's peer dependency).
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments } from 'yaml';
import { loadConfig, SETTINGS } from '../src/config.js';
import { ServerMetrics } from '../src/server/metrics.js';
import { HUGE_PAGES_TUNABLE } from '../src/util/huge-pages.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const read = (rel: string): string => readFileSync(path.join(ROOT, rel), 'utf8');
const exists = (rel: string): boolean => existsSync(path.join(ROOT, rel));

const DEFAULT_PORT: number = SETTINGS.port.schema.parse(undefined);
const SETTING_ENVS = new Set<string>(Object.values(SETTINGS).map((s) => s.env));
const ORT_BIN = 'node_modules/onnxruntime-node/bin/napi-v6/linux/x64';
const CUDA_PROVIDER = `${ORT_BIN}/libonnxruntime_providers_cuda.so`;

// ------------------------------------------------------------------------------------------------
// Dockerfile parsing: just enough of the syntax for this project's file (continuations, comments,
// ARG defaults, stages, exec/shell forms, COPY flags).

interface Instruction {
  keyword: string;
  args: string;
  line: number;
}

interface Stage {
  index: number;
  name: string | undefined;
  /** FROM image after ARG expansion: an image reference or an earlier stage's name. */
  from: string;
  body: Instruction[];
}

interface Dockerfile {
  stages: Stage[];
  args: Map<string, string>;
}

function parseInstructions(text: string): Instruction[] {
  const out: Instruction[] = [];
  let buf = '';
  let start = 0;
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i];
    const trimmed = raw.trim();
    // Comment and blank lines are dropped, also in the middle of a continued instruction.
    if (trimmed === '' || trimmed.startsWith('#')) continue;
    if (buf === '') start = i + 1;
    if (/\\\s*$/.test(raw)) {
      buf += `${raw.replace(/\\\s*$/, '')} `;
      continue;
    }
    buf += raw;
    const m = /^\s*([A-Za-z]+)\s*([\s\S]*)$/.exec(buf);
    assert.ok(m, `Dockerfile line ${start}: cannot parse ${JSON.stringify(buf)}`);
    out.push({ keyword: m[1].toUpperCase(), args: m[2].trim(), line: start });
    buf = '';
  }
  assert.equal(buf, '', 'Dockerfile ends inside a continued instruction');
  return out;
}

function expand(s: string, vars: Map<string, string>): string {
  return s.replace(/\$\{(\w+)\}|\$(\w+)/g, (whole, a: string | undefined, b: string | undefined) => {
    const v = vars.get((a ?? b) as string);
    return v === undefined ? whole : v;
  });
}

function parseDockerfile(text: string): Dockerfile {
  const args = new Map<string, string>();
  const stages: Stage[] = [];
  for (const ins of parseInstructions(text)) {
    if (ins.keyword === 'FROM') {
      const words = ins.args.split(/\s+/).filter((w) => !w.startsWith('--'));
      const asAt = words.findIndex((w) => w.toUpperCase() === 'AS');
      stages.push({
        index: stages.length,
        name: asAt >= 0 ? words[asAt + 1] : undefined,
        from: expand(words[0], args),
        body: [],
      });
    } else if (stages.length === 0) {
      assert.equal(ins.keyword, 'ARG', `Dockerfile line ${ins.line}: only ARG may come before the first FROM`);
      const [name, value] = ins.args.split('=', 2);
      if (value !== undefined) args.set(name.trim(), value.trim());
    } else {
      stages[stages.length - 1].body.push(ins);
    }
  }
  assert.ok(stages.length > 0, 'Dockerfile has no FROM');
  return { stages, args };
}

/** Shell words, honouring double and single quotes (enough for ENV and COPY lines). */
function words(s: string): string[] {
  const out: string[] = [];
  const re = /"((?:[^"\\]|\\.)*)"|'([^']*)'|(\S+)/g;
  for (let m = re.exec(s); m; m = re.exec(s)) out.push(m[1] ?? m[2] ?? m[3]);
  return out;
}

function execForm(args: string): string[] | null {
  if (!args.startsWith('[')) return null;
  const parsed: unknown = JSON.parse(args);
  assert.ok(Array.isArray(parsed) && parsed.every((x) => typeof x === 'string'), `not a JSON string array: ${args}`);
  return parsed as string[];
}

interface Copy {
  from: string | undefined;
  sources: string[];
  dest: string;
}

function parseCopy(args: string): Copy {
  const ws = words(args);
  let from: string | undefined;
  while (ws.length > 0 && ws[0].startsWith('--')) {
    const flag = ws.shift() as string;
    if (flag.startsWith('--from=')) from = flag.slice('--from='.length);
  }
  const json = execForm(ws.join(' '));
  const parts = json ?? ws;
  assert.ok(parts.length >= 2, `COPY needs a source and a destination: ${args}`);
  return { from, sources: parts.slice(0, -1), dest: parts[parts.length - 1] };
}

function parseEnv(args: string): Map<string, string> {
  const env = new Map<string, string>();
  const ws = words(args);
  if (ws.length >= 1 && !ws[0].includes('=')) {
    env.set(ws[0], ws.slice(1).join(' ')); // legacy `ENV KEY value`
    return env;
  }
  for (const w of ws) {
    const eq = w.indexOf('=');
    assert.ok(eq > 0, `ENV: expected KEY=value, got ${w}`);
    env.set(w.slice(0, eq), w.slice(eq + 1));
  }
  return env;
}

const DOCKERFILE = parseDockerfile(read('Dockerfile'));

function stageNamed(name: string): Stage | undefined {
  return DOCKERFILE.stages.find((s) => s.name === name);
}

/** The stage and the stages it is built FROM, base first. */
function lineage(stage: Stage): Stage[] {
  const parent = stageNamed(stage.from);
  return parent && parent.index < stage.index ? [...lineage(parent), stage] : [stage];
}

/** Whether a shell line runs COMMAND (at the start or after &&, ||, ; or `then`; not inside an echo). */
function runsCommand(shell: string, command: string | RegExp): boolean {
  const body = typeof command === 'string' ? command.replace(/[.*+?^${}()|[\]\\]/g, '\\$&') : command.source;
  return new RegExp(`(?:^|&&|\\|\\||;|\\bthen\\b)\\s*(?:${body})(?![\\w-])`).test(shell);
}

function instructions(stage: Stage, keyword: string): Instruction[] {
  return stage.body.filter((i) => i.keyword === keyword);
}

/** RUN commands that made a stage's filesystem: its lineage's, in order, ARGs expanded. */
function runs(stage: Stage): string[] {
  return lineage(stage).flatMap((s) => instructions(s, 'RUN').map((i) => expand(i.args, DOCKERFILE.args)));
}

function lastOf(stage: Stage, keyword: string): Instruction | undefined {
  const all = lineage(stage).flatMap((s) => instructions(s, keyword));
  return all[all.length - 1];
}

function stageEnv(stage: Stage): Map<string, string> {
  const env = new Map<string, string>();
  for (const s of lineage(stage)) for (const i of instructions(s, 'ENV')) for (const [k, v] of parseEnv(i.args)) env.set(k, v);
  return env;
}

/** The image stages people run: the default target (last stage) and `--target cpu`. */
const FINAL = DOCKERFILE.stages[DOCKERFILE.stages.length - 1];
const CPU = stageNamed('cpu');
function runtimeStages(): Stage[] {
  assert.ok(CPU, 'Dockerfile has no `cpu` stage (docker build --target cpu)');
  assert.notEqual(CPU, FINAL, 'the default target must be the GPU image, not `cpu`');
  return [CPU, FINAL];
}

/** Where each source of a COPY lands in the image (absolute paths, in source order). */
function destinations(copy: Copy, workdir: string): string[] {
  const dest = path.posix.resolve(workdir, copy.dest);
  const intoDir = copy.sources.length > 1 || copy.dest.endsWith('/') || copy.dest === '.';
  return copy.sources.map((s) => (intoDir ? path.posix.join(dest, path.posix.basename(s)) : dest));
}

/** The COPY that puts DEST (relative to the stage's WORKDIR) into a runtime stage, and its source stage. */
function copiedFrom(stage: Stage, dest: string): { copy: Copy; from: Stage } {
  const workdir = lastOf(stage, 'WORKDIR')?.args ?? '/';
  for (const i of instructions(stage, 'COPY')) {
    const copy = parseCopy(i.args);
    if (!destinations(copy, workdir).includes(path.posix.resolve(workdir, dest))) continue;
    assert.ok(copy.from, `stage ${stage.name}: ${dest} must come from a build stage (COPY --from=...)`);
    const from = stageNamed(copy.from);
    assert.ok(from, `stage ${stage.name}: COPY --from=${copy.from} is not a stage of this Dockerfile`);
    return { copy, from };
  }
  assert.fail(`stage ${stage.name ?? stage.index} never copies ${dest} into ${workdir}`);
}

// .dockerignore: Docker's patterns (Go filepath.Match plus `**`, `!` exceptions, last match wins).
function dockerignored(rel: string): boolean {
  const patterns = read('.dockerignore')
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'));
  const parts = path.posix.normalize(rel).replace(/^\.\//, '').replace(/\/+$/, '').split('/');
  let ignored = false;
  for (const raw of patterns) {
    const negate = raw.startsWith('!');
    const pattern = path.posix.normalize((negate ? raw.slice(1) : raw).replace(/^\/+/, '')).replace(/\/+$/, '');
    const re = new RegExp(
      `^${pattern
        .split(/(\*\*|\*|\?)/)
        .map((t) => (t === '**' ? '.*' : t === '*' ? '[^/]*' : t === '?' ? '[^/]' : t.replace(/[.+^${}()|[\]\\]/g, '\\$&')))
        .join('')}$`,
    );
    // A pattern that matches a folder covers everything inside it.
    for (let n = 1; n <= parts.length; n++) {
      if (re.test(parts.slice(0, n).join('/'))) {
        ignored = !negate;
        break;
      }
    }
  }
  return ignored;
}

// ------------------------------------------------------------------------------------------------
// The image's own files, derived from the Dockerfile: what the build stage COPYs from the context
// (less .dockerignore), what its `npm ci` compiles from that (tsc -p tsconfig.json: include
// patterns, outDir, rootDir, source maps), and which of those paths the runtime stages COPY --from
// it. node_modules is left out: it is package.json's production dependencies, checked elsewhere.

/** Benchmarks, soak and eval: in the repository, compiled by `npm ci`, never in the image. */
const TOOLS_DIR = 'tools';

function contextFiles(rel: string): string[] {
  if (dockerignored(rel)) return [];
  return statSync(path.join(ROOT, rel)).isDirectory() ? filesUnder(rel).filter((f) => !dockerignored(f)) : [rel];
}

/** tsconfig `include` patterns of the forms this project uses: `dir/**\/*.ts` and plain paths. */
function includedBy(patterns: string[], rel: string): boolean {
  return patterns.some((p) => {
    const glob = /^([\w.-]+)\/\*\*\/\*(\.\w+)$/.exec(p);
    if (glob) return rel.startsWith(`${glob[1]}/`) && rel.endsWith(glob[2]) && !rel.endsWith('.d.ts');
    assert.ok(!/[*?]/.test(p), `tsconfig include pattern ${p}: the image check does not understand it`);
    return rel === p;
  });
}

/** Repository paths in the build stage's /app after `npm ci`, each with the context file it came from. */
function buildStageFiles(build: Stage): Map<string, string> {
  const tsconfig = JSON.parse(read('tsconfig.json')) as { compilerOptions: { outDir: string; rootDir?: string; sourceMap?: boolean }; include: string[] };
  const workdir = lastOf(build, 'WORKDIR')?.args ?? '/';
  const files = new Map<string, string>();
  for (const i of lineage(build).flatMap((s) => instructions(s, 'COPY'))) {
    const copy = parseCopy(i.args);
    if (copy.from !== undefined) continue;
    const at = destinations(copy, workdir);
    copy.sources.forEach((source, n) => {
      const prefix = path.posix.relative(workdir, at[n]);
      for (const f of contextFiles(source)) files.set(path.posix.join(prefix, path.posix.relative(source, f) || ''), f);
    });
  }
  const { outDir, rootDir = '.', sourceMap } = tsconfig.compilerOptions;
  for (const [rel, origin] of [...files]) {
    if (!includedBy(tsconfig.include, rel)) continue;
    const js = path.posix.join(outDir, path.posix.relative(rootDir, rel)).replace(/\.ts$/, '.js');
    files.set(js, origin);
    if (sourceMap) files.set(`${js}.map`, origin);
  }
  return files;
}

/** The app files a runtime stage holds (paths under its WORKDIR), each with its context file. */
function imageAppFiles(stage: Stage, build: Stage): Map<string, string> {
  const built = buildStageFiles(build);
  const buildDir = lastOf(build, 'WORKDIR')?.args ?? '/';
  const workdir = lastOf(stage, 'WORKDIR')?.args ?? '/';
  const out = new Map<string, string>();
  for (const i of instructions(stage, 'COPY')) {
    const copy = parseCopy(i.args);
    const from = copy.from === undefined ? undefined : stageNamed(copy.from);
    if (!from || !lineage(from).includes(build)) continue;
    const at = destinations(copy, workdir);
    copy.sources.forEach((source, n) => {
      const src = path.posix.relative(buildDir, source);
      if (src.startsWith('..') || src === 'node_modules') return;
      const dest = path.posix.relative(workdir, at[n]);
      for (const [rel, origin] of built) {
        if (rel === src || rel.startsWith(`${src}/`)) out.set(path.posix.join(dest, path.posix.relative(src, rel)), origin);
      }
    });
  }
  return out;
}

/** Relative module specifiers a TypeScript file imports (static, dynamic and `export ... from`). */
function relativeImports(rel: string): string[] {
  const text = read(rel);
  return [...text.matchAll(/(?:\bfrom\s*|\bimport\s*\(\s*|^\s*import\s+)['"](\.{1,2}\/[^'"]+)['"]/gm)].map((m) => m[1]);
}

// ------------------------------------------------------------------------------------------------
// YAML

// Parsed manifests are plain JSON-like data of many shapes; the assertions below check each field
// they use, so they are read through this loose type.
type Yaml = any;

const YAML_EXT = /\.(ya?ml)$/;

function parseYamlFile(rel: string): Yaml[] {
  const out: Yaml[] = [];
  for (const doc of parseAllDocuments(read(rel), { version: '1.1' })) {
    assert.deepEqual(doc.errors.map(String), [], `${rel}: YAML errors`);
    assert.deepEqual(doc.warnings.map(String), [], `${rel}: YAML warnings`);
    const value: Yaml = doc.toJS();
    if (value !== null && value !== undefined) out.push(value);
  }
  assert.ok(out.length > 0, `${rel}: no YAML document`);
  return out;
}

function filesUnder(rel: string): string[] {
  return readdirSync(path.join(ROOT, rel))
    .sort()
    .flatMap((name) => {
      const child = `${rel}/${name}`;
      return statSync(path.join(ROOT, child)).isDirectory() ? filesUnder(child) : [child];
    });
}

/** deploy/*.yaml: what `kubectl apply -f deploy/` reads (it does not recurse). */
function topLevelManifests(): string[] {
  return readdirSync(path.join(ROOT, 'deploy'))
    .filter((n) => /\.(ya?ml|json)$/.test(n) && statSync(path.join(ROOT, 'deploy', n)).isFile())
    .sort()
    .map((n) => `deploy/${n}`);
}

function objects(): Array<{ file: string; obj: Yaml }> {
  return filesUnder('deploy')
    .filter((f) => YAML_EXT.test(f) || path.basename(f) === 'Kustomization')
    .flatMap((file) => parseYamlFile(file).map((obj) => ({ file, obj })))
    .filter(({ obj }) => typeof obj === 'object' && typeof obj.kind === 'string');
}

function theObject(kind: string, file?: string): Yaml {
  const found = objects().filter(({ obj, file: f }) => obj.kind === kind && (file === undefined || f === file));
  assert.equal(found.length, 1, `expected exactly one ${kind}${file ? ` in ${file}` : ''}, found ${found.length}`);
  return found[0].obj;
}

function podContainers(obj: Yaml): Yaml[] {
  const containers: Yaml = obj?.spec?.template?.spec?.containers;
  assert.ok(Array.isArray(containers) && containers.length > 0, `${obj?.kind} ${obj?.metadata?.name}: no containers`);
  return containers;
}

function containerEnv(container: Yaml): Map<string, string> {
  const env = new Map<string, string>();
  for (const e of (container.env ?? []) as Yaml[]) env.set(e.name, e.value);
  return env;
}

/** A probe's or Service's port: a number, or the name of one of the container's ports. */
function resolvePort(container: Yaml, port: unknown): number {
  if (typeof port === 'number') return port;
  const named = ((container.ports ?? []) as Yaml[]).find((p) => p.name === port);
  assert.ok(named, `port ${JSON.stringify(port)} is not a named port of container ${container.name}`);
  return named.containerPort;
}

function preStopSleepMs(container: Yaml): number {
  const preStop: Yaml = container.lifecycle?.preStop;
  if (!preStop) return 0;
  if (preStop.sleep?.seconds !== undefined) return Number(preStop.sleep.seconds) * 1000;
  const cmd: unknown = preStop.exec?.command;
  if (Array.isArray(cmd) && cmd[0] === 'sleep') return Number(cmd[1]) * 1000;
  assert.fail(`unrecognised preStop hook ${JSON.stringify(preStop)}: the grace-period check cannot size it`);
}

async function queueGaugeName(): Promise<string> {
  const metric = await new ServerMetrics().queueLength.get();
  assert.equal(metric.type, 'gauge');
  return metric.name;
}

// ------------------------------------------------------------------------------------------------
// Dockerfile

test('Dockerfile: every COPY source exists in the repository and is in the build context', () => {
  let checked = 0;
  for (const stage of DOCKERFILE.stages) {
    for (const ins of [...instructions(stage, 'COPY'), ...instructions(stage, 'ADD')]) {
      const copy = parseCopy(ins.args);
      if (copy.from !== undefined) {
        // Files from another stage: that stage must be defined before this one.
        const from = stageNamed(copy.from);
        assert.ok(from && from.index < stage.index, `line ${ins.line}: COPY --from=${copy.from} names no earlier stage`);
        continue;
      }
      for (const source of copy.sources.map((s) => expand(s, DOCKERFILE.args))) {
        assert.ok(!path.isAbsolute(source) && !source.split('/').includes('..'), `line ${ins.line}: ${source} is outside the build context`);
        assert.ok(exists(source), `line ${ins.line}: COPY source ${source} does not exist in the repository`);
        assert.ok(!dockerignored(source), `line ${ins.line}: COPY source ${source} is excluded by .dockerignore`);
        checked++;
      }
    }
  }
  assert.ok(checked >= 3, 'expected the build stage to COPY the package files and the sources');
  // What the context must not carry (host builds, models, history).
  for (const p of ['node_modules', 'dist', 'models/gpt2', '.git', 'bench-results', 'scratch']) {
    assert.ok(dockerignored(p), `.dockerignore should exclude ${p}`);
  }
});

test('Dockerfile: the build runs `npm ci` (as CI does) with a pinned npm 11, and it builds the file the ENTRYPOINT runs', () => {
  const pkg = JSON.parse(read('package.json')) as { scripts: Record<string, string> };
  const tsconfig = JSON.parse(read('tsconfig.json')) as { compilerOptions: { outDir: string; rootDir?: string }; include: string[] };
  assert.match(read('.ci/run'), /\bnpm ci\b/, '.ci/run no longer installs with `npm ci`');

  const builds = DOCKERFILE.stages.filter((s) => instructions(s, 'RUN').some((i) => runsCommand(i.args, 'npm ci')));
  assert.equal(builds.length, 1, 'exactly one stage should run `npm ci`');
  const build = builds[0];
  const body = build.body;
  const ciAt = body.findIndex((i) => i.keyword === 'RUN' && runsCommand(i.args, 'npm ci'));

  // npm pinned to an exact 11.x before npm ci (node images ship another npm).
  const npmPin = body
    .slice(0, ciAt)
    .filter((i) => i.keyword === 'RUN')
    .map((i) => expand(i.args, DOCKERFILE.args))
    .filter((r) => runsCommand(r, /npm (?:install|i) (?:--global|-g) npm@\S+/))
    .map((r) => /\bnpm (?:install|i) (?:--global|-g) npm@(\S+)/.exec(r))
    .find((m) => m !== null);
  assert.ok(npmPin, 'the build stage must install a pinned npm (npm install --global npm@11.x.y) before npm ci');
  assert.match(npmPin[1], /^11\.\d+\.\d+$/, `npm must be pinned to an exact 11.x.y, got ${npmPin[1]}`);

  // npm ci compiles through `prepare` (tsc -p tsconfig.json): everything tsc reads is copied first.
  assert.ok(!runsCommand(body[ciAt].args, /npm ci\b[^&|;]*--ignore-scripts/), 'npm ci --ignore-scripts would skip `prepare` (no dist/)');
  assert.match(pkg.scripts.prepare ?? '', /\btsc\b.*tsconfig\.json/, 'package.json `prepare` no longer runs tsc -p tsconfig.json');
  const workdir = lastOf(build, 'WORKDIR')?.args ?? '/';
  // Repository paths copied to the same place under WORKDIR before npm ci.
  const copiedBeforeCi = new Set(
    body
      .slice(0, ciAt)
      .filter((i) => i.keyword === 'COPY')
      .map((i) => parseCopy(i.args))
      .filter((c) => c.from === undefined)
      .flatMap((c) => {
        const at = destinations(c, workdir);
        return c.sources.filter((s, n) => at[n] === path.posix.resolve(workdir, s));
      }),
  );
  // tools/ (benchmarks, soak, eval) is compiled by `npm ci` in a checkout but deliberately left out
  // of the image; tsc builds whatever of `include` is present.
  const sourceDirs = [...new Set(tsconfig.include.map((p) => p.split('/')[0]))].filter((d) => d !== TOOLS_DIR);
  const needed = ['package.json', 'package-lock.json', '.npmrc', 'tsconfig.json', ...sourceDirs];
  for (const f of needed) assert.ok(copiedBeforeCi.has(f), `${f} must be copied into ${workdir} before npm ci`);

  // src/main.ts -> <outDir>/<path from rootDir>.js is what the ENTRYPOINT and `npm start` run.
  assert.ok(exists('src/main.ts'), 'src/main.ts is gone');
  const rootDir = tsconfig.compilerOptions.rootDir ?? '.';
  const mainJs = path.posix.join(tsconfig.compilerOptions.outDir, path.posix.relative(rootDir, 'src/main.ts')).replace(/\.ts$/, '.js');
  assert.ok(
    body.slice(ciAt).some((i) => i.keyword === 'RUN' && runsCommand(i.args, `test -f ${mainJs}`)),
    `the build stage should fail unless npm ci produced ${mainJs}`,
  );
  for (const stage of runtimeStages()) {
    const entry = lastOf(stage, 'ENTRYPOINT');
    assert.ok(entry, `stage ${stage.name}: no ENTRYPOINT`);
    const argv = execForm(entry.args);
    assert.ok(argv, `stage ${stage.name}: ENTRYPOINT must be exec form (JSON array) so SIGTERM reaches node`);
    const cmd = /(^|\/)tini$/.test(argv[0]) ? argv.slice(argv.indexOf('--') + 1) : argv;
    assert.deepEqual(cmd, ['node', mainJs, 'serve'], `stage ${stage.name}: ENTRYPOINT`);
    // Both ask glibc for huge pages (src/util/huge-pages.ts): the image in its ENV, `npm start` unless GLIBC_TUNABLES is set.
    assert.equal(stageEnv(stage).get('GLIBC_TUNABLES'), HUGE_PAGES_TUNABLE, `stage ${stage.name}: ENV GLIBC_TUNABLES`);
    assert.equal(pkg.scripts.start, `GLIBC_TUNABLES=\${GLIBC_TUNABLES:-${HUGE_PAGES_TUNABLE}} ${cmd.join(' ')}`, 'ENTRYPOINT and `npm start` should run the same command');
    // What the entrypoint needs is in the image: dist/, node_modules/, package.json ("type": "module")
    // and the playground's static files, which the server finds beside package.json.
    for (const dest of ['dist', 'node_modules', 'package.json', 'playground']) {
      const { from } = copiedFrom(stage, dest);
      assert.ok(lineage(from).includes(build), `stage ${stage.name}: ${dest} should come from the npm ci stage (${build.name})`);
    }
  }
});

test('Dockerfile: the image carries the server and its model scripts, and no benchmark, soak or eval code', () => {
  const build = DOCKERFILE.stages.find((s) => instructions(s, 'RUN').some((i) => runsCommand(i.args, 'npm ci')));
  assert.ok(build, 'no stage runs `npm ci`');
  const tooling = /(^|\/)(bench|soak|eval|gpu-check)([-/.]|$)/;
  assert.ok(exists(TOOLS_DIR), `${TOOLS_DIR}/ is gone: the check below would pass for nothing`);
  assert.ok(dockerignored(TOOLS_DIR), `.dockerignore should exclude ${TOOLS_DIR}/`);
  const toolSources = filesUnder(TOOLS_DIR).filter((f) => f.endsWith('.ts'));
  assert.ok(toolSources.some((f) => /bench/.test(f)) && toolSources.some((f) => /soak/.test(f)) && toolSources.some((f) => /eval/.test(f)));
  // Nothing outside tools/ holds tooling code (it moved there whole).
  for (const dir of ['src', 'scripts']) {
    for (const f of filesUnder(dir)) assert.doesNotMatch(f, tooling, `${f} is tooling: it belongs in ${TOOLS_DIR}/`);
  }

  const built = buildStageFiles(build);
  // tsc in the image compiles only what was copied: no copied source may import from tools/.
  for (const [rel, origin] of built) {
    if (rel !== origin || !rel.endsWith('.ts')) continue;
    for (const spec of relativeImports(rel)) {
      const target = path.posix.normalize(path.posix.join(path.posix.dirname(rel), spec)).replace(/\.js$/, '.ts');
      assert.ok(built.has(target) || built.has(target.replace(/\.ts$/, '.js')), `${rel} imports ${spec}, which is not in the image's build context`);
    }
  }

  for (const stage of runtimeStages()) {
    const files = imageAppFiles(stage, build);
    const names = [...files.keys()];
    assert.ok(names.includes('dist/src/main.js'), `stage ${stage.name}: the derived file list lacks dist/src/main.js (${names.length} files)`);
    assert.ok(names.includes('dist/scripts/download.js'), `stage ${stage.name}: the model download script should ship (deploy/jobs)`);
    assert.ok(names.some((n) => n.startsWith('playground/')), `stage ${stage.name}: the playground should ship`);
    for (const [name, origin] of files) {
      assert.ok(!origin.startsWith(`${TOOLS_DIR}/`) && !name.startsWith(`dist/${TOOLS_DIR}/`), `stage ${stage.name}: ${name} is tooling`);
      assert.doesNotMatch(name, tooling, `stage ${stage.name}: ${name} is benchmark/soak/eval code`);
    }
  }
  // What leaving tools/ out saves: its sources, and (after a local build) its compiled output.
  const bytes = (files: string[]): number => files.reduce((sum, f) => sum + statSync(path.join(ROOT, f)).size, 0);
  const distTools = exists(`dist/${TOOLS_DIR}`) ? bytes(filesUnder(`dist/${TOOLS_DIR}`)) : 0;
  assert.ok(bytes(toolSources) > 100_000, 'tools/ should be the ~150 KB of benchmark, soak and eval sources');
  console.log(`image check: ${toolSources.length} tool sources (${bytes(toolSources)} bytes) stay out; dist/${TOOLS_DIR} here: ${distTools} bytes`);
});

test('Dockerfile: the GPU image installs the CUDA provider and fails the build without it; the CPU image has none', () => {
  // The value and the folder are onnxruntime-node's own (its install script and package layout).
  const requireHere = createRequire(import.meta.url);
  const meta = requireHere(path.join(ROOT, 'node_modules/onnxruntime-node/script/install-metadata.js')) as {
    requirements: Record<string, string[]>;
    manifests: Record<string, Record<string, unknown>>;
  };
  assert.ok(meta.requirements['linux/x64'].includes('cuda12'), 'onnxruntime-node no longer offers the cuda12 install on linux/x64');
  assert.ok('./libonnxruntime_providers_cuda.so' in meta.manifests['linux/x64:cuda12'], 'cuda12 install no longer provides libonnxruntime_providers_cuda.so');
  assert.ok(exists(`${ORT_BIN}/onnxruntime_binding.node`), `${ORT_BIN} is not where onnxruntime-node keeps its linux-x64 binaries`);

  const install = /ONNXRUNTIME_NODE_INSTALL=cuda12 node node_modules\/onnxruntime-node\/script\/install/;
  const check = new RegExp(`test -[sf] ${CUDA_PROVIDER.replace(/[.]/g, '\\.')}`);
  const gpuModules = copiedFrom(FINAL, 'node_modules').from;
  const gpuRuns = runs(gpuModules);
  const step = gpuRuns.find((r) => runsCommand(r, install));
  assert.ok(step, `the GPU image's node_modules (stage ${gpuModules.name}) must run onnxruntime-node's install with ONNXRUNTIME_NODE_INSTALL=cuda12`);
  assert.ok(runsCommand(step, check), `the install step must check that ${CUDA_PROVIDER} exists`);
  assert.match(step, /&&[\s\S]*\|\|[\s\S]*exit 1/, 'the install step must fail the build (exit 1) when the install or the check fails');
  assert.ok(gpuRuns.some((r) => runsCommand(r, 'npm prune --omit=dev')), 'the GPU image should carry production dependencies only');

  assert.ok(CPU, 'no `cpu` stage');
  const cpuModules = copiedFrom(CPU, 'node_modules').from;
  assert.ok(!runs(cpuModules).some((r) => /ONNXRUNTIME_NODE_INSTALL=cuda/.test(r)), 'the CPU image must not carry the CUDA provider');
  assert.ok(runs(cpuModules).some((r) => runsCommand(r, 'npm prune --omit=dev')), 'the CPU image should carry production dependencies only');
  // Declared before the CUDA stages, so even the legacy builder never downloads the provider for it.
  assert.ok(CPU.index < gpuModules.index, 'the cpu stage should come before the CUDA provider stage');
});

test('Dockerfile: base images are pinned: Node 20 exact, CUDA 12 + cuDNN 9 runtime exact', () => {
  const pkg = JSON.parse(read('package.json')) as { engines: { node: string } };
  const nodeMajor = Number(/(\d+)/.exec(pkg.engines.node)?.[1]);
  const cudaMajor = 12; // onnxruntime-node 1.30's linux-x64 provider is its `cuda12` build (checked above)
  for (const stage of DOCKERFILE.stages) {
    if (stageNamed(stage.from)) continue;
    assert.doesNotMatch(stage.from, /\$/, `stage ${stage.name}: FROM ${stage.from} has an unset build argument`);
    assert.match(stage.from, /:[^:/]*\d+\.\d+\.\d+/, `stage ${stage.name}: FROM ${stage.from} is not pinned to an exact version`);
  }
  const nodeImages = new Set(DOCKERFILE.stages.map((s) => s.from).filter((f) => f.startsWith('node:')));
  assert.ok(nodeImages.size === 1, `one Node image for every stage, got ${[...nodeImages].join(', ')}`);
  const nodeTag = /^node:(\d+)\.\d+\.\d+-bookworm-slim$/.exec([...nodeImages][0]);
  assert.ok(nodeTag, `Node image should be node:X.Y.Z-bookworm-slim, got ${[...nodeImages][0]}`);
  assert.equal(Number(nodeTag[1]), nodeMajor, 'Node major version of the image vs package.json engines');
  assert.ok(CPU && CPU.from === [...nodeImages][0], 'the CPU image runs on the Node image');

  const cuda = /^nvidia\/cuda:(\d+)\.\d+\.\d+-cudnn(\d*)-runtime-ubuntu\d+\.\d+$/.exec(FINAL.from);
  assert.ok(cuda, `the GPU image should be an nvidia/cuda X.Y.Z-cudnn-runtime image, got ${FINAL.from}`);
  assert.equal(Number(cuda[1]), cudaMajor, 'CUDA major version of the GPU base image');
  assert.ok(cuda[2] === '' || cuda[2] === '9', `cuDNN 9 is needed, got cudnn${cuda[2]}`);
  // The GPU image gets node from the Node image (same version everywhere).
  const nodeCopy = instructions(FINAL, 'COPY').map((i) => parseCopy(i.args)).find((c) => c.sources.includes('/usr/local/bin/node'));
  assert.ok(nodeCopy?.from, 'the GPU image should COPY --from=<node stage> /usr/local/bin/node');
  assert.equal(lineage(stageNamed(nodeCopy.from) as Stage)[0].from, [...nodeImages][0]);
});

test('Dockerfile: both images run as non-root in /app, on the default port, with /models, valid settings and a /health check', () => {
  for (const stage of runtimeStages()) {
    const where = `stage ${stage.name}`;
    const user = lastOf(stage, 'USER')?.args;
    assert.ok(user && !/^(root|0)(:|$)/.test(user), `${where}: must switch to a non-root USER, got ${user}`);
    assert.equal(lastOf(stage, 'WORKDIR')?.args, '/app', `${where}: WORKDIR`);

    const exposed = instructions(stage, 'EXPOSE').flatMap((i) => words(i.args)).map((p) => Number(p.split('/')[0]));
    assert.deepEqual(exposed, [DEFAULT_PORT], `${where}: EXPOSE should be the server's default port`);
    const volumes = instructions(stage, 'VOLUME').flatMap((i) => execForm(i.args) ?? words(i.args));
    assert.deepEqual(volumes, ['/models'], `${where}: VOLUME`);

    const env = stageEnv(stage);
    assert.equal(env.get('GPT2_MODEL'), '/models/gpt2', `${where}: GPT2_MODEL`);
    assert.equal(env.get('GPT2_HOST'), '0.0.0.0', `${where}: GPT2_HOST`);
    assert.equal(env.get('GPT2_PORT'), String(DEFAULT_PORT), `${where}: GPT2_PORT`);
    assert.ok(env.has('GPT2_EXECUTION_PROVIDER'), `${where}: GPT2_EXECUTION_PROVIDER`);
    const gpt2 = Object.fromEntries([...env].filter(([k]) => k.startsWith('GPT2_')));
    const config = loadConfig([], gpt2); // throws ConfigError on a value the server would refuse
    assert.equal(config.port, DEFAULT_PORT);
    if (stage === FINAL) assert.equal(config.executionProvider, 'auto', 'the GPU image should use CUDA when present and CPU otherwise');
    // An inference server does not phone home; ONNX Runtime's telemetry would also print plain text into the JSON log.
    assert.equal(env.get('ORT_DISABLE_TELEMETRY'), '1', `${where}: ORT_DISABLE_TELEMETRY`);

    const hc = lastOf(stage, 'HEALTHCHECK');
    assert.ok(hc, `${where}: no HEALTHCHECK`);
    const cmdAt = hc.args.search(/\bCMD\b/);
    assert.ok(cmdAt >= 0, `${where}: HEALTHCHECK without CMD`);
    const cmd = hc.args.slice(cmdAt + 3).trim();
    const argv = execForm(cmd);
    assert.ok(argv && argv[0] === 'node', `${where}: HEALTHCHECK should be an exec-form node command (no curl in slim images)`);
    const script = argv.join(' ');
    assert.match(script, /\/health\b/, `${where}: HEALTHCHECK must probe /health`);
    assert.ok(
      script.includes(`127.0.0.1:${DEFAULT_PORT}/`) || script.includes(`GPT2_PORT||${DEFAULT_PORT}`),
      `${where}: HEALTHCHECK must probe the server's port (${DEFAULT_PORT} or GPT2_PORT)`,
    );
  }
});

test('Dockerfile: the build keeps only its own platform\'s onnxruntime-node binaries, and checks that it did', () => {
  const build = DOCKERFILE.stages.find((s) => s.name === 'build')!;
  const prune = instructions(build, 'RUN').map((i) => i.args).find((a) => a.includes('npm prune --omit=dev'));
  assert.ok(prune, 'the build stage prunes to production dependencies');
  assert.match(prune, /arch="\$\(node -p process\.arch\)"/, 'the platform is the one the stage runs on');
  assert.match(prune, /! -name linux -exec rm -rf/, 'other operating systems go');
  assert.match(prune, /! -name "\$arch" -exec rm -rf/, 'other architectures go');
  assert.match(prune, /test "\$\(ls "\$ort\/linux"\)" = "\$arch"/, 'and the step fails unless exactly this platform is left');
});

// ------------------------------------------------------------------------------------------------
// Settings named anywhere in the deployment files

test('every GPT2_* variable in the Dockerfile, the manifests and docs/deploy.md is a setting of src/config.ts', () => {
  const named = new Map<string, string>();
  const note = (name: string, where: string) => named.set(name, where);
  for (const stage of DOCKERFILE.stages) {
    for (const key of stageEnv(stage).keys()) if (key.startsWith('GPT2_')) note(key, `Dockerfile ENV (stage ${stage.name})`);
    for (const r of runs(stage)) for (const m of r.matchAll(/\bGPT2_[A-Z0-9_]+/g)) note(m[0], 'Dockerfile RUN');
  }
  for (const { file, obj } of objects()) {
    if (!obj.spec?.template?.spec?.containers) continue;
    for (const c of podContainers(obj)) for (const key of containerEnv(c).keys()) if (key.startsWith('GPT2_')) note(key, file);
  }
  for (const m of read('docs/deploy.md').matchAll(/\bGPT2_[A-Z0-9_]+/g)) note(m[0], 'docs/deploy.md');
  assert.ok(named.size >= 5, 'expected the deployment files to set several GPT2_* variables');
  for (const [name, where] of named) assert.ok(SETTING_ENVS.has(name), `${where}: ${name} is not a setting in src/config.ts`);
});

// ------------------------------------------------------------------------------------------------
// Kubernetes manifests

test('deploy/: manifests parse as YAML 1.1; kubectl apply -f deploy/ and -k deploy/ apply the same objects', () => {
  const files = filesUnder('deploy');
  for (const f of files) if (YAML_EXT.test(f) || path.basename(f) === 'Kustomization') parseYamlFile(f);

  // apply -f reads every .yaml/.yml/.json file in the folder: each must be a Kubernetes object.
  const manifests = topLevelManifests();
  assert.ok(manifests.length >= 4, `expected the manifests in deploy/, got ${manifests.join(', ')}`);
  for (const f of manifests) {
    assert.ok(!/^kustomization\.ya?ml$/.test(path.basename(f)), `${f} would break kubectl apply -f deploy/ (name it Kustomization)`);
    for (const obj of parseYamlFile(f)) {
      assert.ok(typeof obj.apiVersion === 'string' && typeof obj.kind === 'string', `${f}: apiVersion and kind are required`);
      assert.ok(typeof obj.metadata?.name === 'string', `${f}: metadata.name is required`);
    }
  }
  // apply -k reads deploy/Kustomization: the same files.
  const kustomization = parseYamlFile('deploy/Kustomization')[0];
  assert.equal(kustomization.kind, 'Kustomization');
  assert.deepEqual(
    [...(kustomization.resources as string[])].map((r) => `deploy/${r}`).sort(),
    manifests,
    'deploy/Kustomization resources should be exactly the manifests kubectl apply -f deploy/ applies',
  );
  // Kubernetes' EnvVar.value is a string: an unquoted 8000 or true is refused by the API server.
  for (const { file, obj } of objects()) {
    if (!obj.spec?.template?.spec?.containers) continue;
    for (const c of podContainers(obj)) {
      for (const e of (c.env ?? []) as Yaml[]) {
        if (e.valueFrom === undefined) assert.equal(typeof e.value, 'string', `${file}: env ${e.name} must be a quoted string`);
      }
    }
  }
});

test('deploy/deployment.yaml: GPU, resources, port, /health and /ready probes, read-only model volume and a grace period longer than the drain', () => {
  const deployment = theObject('Deployment', 'deploy/deployment.yaml');
  const pod = deployment.spec.template.spec;
  const containers = podContainers(deployment);
  assert.equal(containers.length, 1, 'one container per pod');
  const c = containers[0];
  const env = containerEnv(c);
  const config = loadConfig([], Object.fromEntries(env)); // every value must be valid for the server

  // Port: the server's, named http.
  const http = ((c.ports ?? []) as Yaml[]).find((p) => p.name === 'http');
  assert.ok(http, 'container port named http');
  assert.equal(http.containerPort, DEFAULT_PORT, 'containerPort vs the server default port');
  assert.equal(config.port, DEFAULT_PORT, 'GPT2_PORT vs containerPort');

  // Probes at the server's port, with room for the model to load: readiness on /ready (which also
  // says "at capacity"), liveness and startup on /health.
  for (const kind of ['readinessProbe', 'livenessProbe', 'startupProbe']) {
    const probe = c[kind];
    if (kind === 'startupProbe' && probe === undefined) continue;
    assert.ok(probe?.httpGet, `${kind}: httpGet probe required`);
    assert.equal(probe.httpGet.path, kind === 'readinessProbe' ? '/ready' : '/health', `${kind}: path`);
    assert.equal(resolvePort(c, probe.httpGet.port), DEFAULT_PORT, `${kind}: port`);
  }
  const startupBudget = c.startupProbe ? c.startupProbe.periodSeconds * c.startupProbe.failureThreshold : 0;
  assert.ok(
    startupBudget >= 60 || (c.livenessProbe.initialDelaySeconds ?? 0) >= 60,
    'the model needs time to load: a startup probe allowing >= 60 s, or a liveness initialDelaySeconds >= 60',
  );

  // Shutdown: preStop, then SIGTERM and a drain of GPT2_DRAIN_TIMEOUT_MS, all inside the grace period.
  assert.ok(env.has('GPT2_DRAIN_TIMEOUT_MS'), 'set GPT2_DRAIN_TIMEOUT_MS explicitly so the grace period can be checked against it');
  const drainMs = config.drainTimeoutMs;
  const graceMs = Number(pod.terminationGracePeriodSeconds) * 1000;
  assert.ok(graceMs > drainMs + preStopSleepMs(c), `terminationGracePeriodSeconds (${graceMs} ms) must exceed preStop + drain (${preStopSleepMs(c)} + ${drainMs} ms)`);
  const live = c.livenessProbe;
  assert.ok(live.periodSeconds * live.failureThreshold * 1000 > drainMs, 'a draining pod answers 503: liveness must tolerate longer than the drain');

  // One GPU, CPU and memory requests and limits.
  assert.equal(Number(c.resources?.limits?.['nvidia.com/gpu']), 1, 'limits nvidia.com/gpu: 1');
  for (const side of ['requests', 'limits']) {
    for (const r of ['cpu', 'memory']) assert.ok(c.resources?.[side]?.[r] !== undefined, `resources.${side}.${r}`);
  }

  // Model volume: the PVC, read-only, where GPT2_MODEL points (the image's VOLUME).
  const mount = ((c.volumeMounts ?? []) as Yaml[]).find((m) => m.mountPath === '/models');
  assert.ok(mount, 'volumeMount at /models (the image VOLUME)');
  assert.equal(mount.readOnly, true, 'the model volume is mounted read-only');
  const volume = ((pod.volumes ?? []) as Yaml[]).find((v) => v.name === mount.name);
  assert.equal(volume?.persistentVolumeClaim?.claimName, 'gpt2-models');
  assert.equal(theObject('PersistentVolumeClaim', 'deploy/pvc.yaml').metadata.name, 'gpt2-models');
  assert.ok(config.model?.startsWith(`${mount.mountPath}/`), `GPT2_MODEL (${config.model}) should be inside ${mount.mountPath}`);

  // Scraping and security.
  const ann = deployment.spec.template.metadata.annotations ?? {};
  assert.equal(ann['prometheus.io/scrape'], 'true');
  assert.equal(ann['prometheus.io/port'], String(DEFAULT_PORT));
  assert.equal(ann['prometheus.io/path'], '/metrics');
  assert.equal(pod.securityContext?.runAsNonRoot ?? c.securityContext?.runAsNonRoot, true, 'runAsNonRoot');

  // Service: ClusterIP, 80 -> the http port, selecting these pods.
  const service = theObject('Service', 'deploy/service.yaml');
  assert.equal(service.spec.type ?? 'ClusterIP', 'ClusterIP');
  const svcPort = (service.spec.ports as Yaml[]).find((p) => p.port === 80);
  assert.ok(svcPort, 'Service port 80');
  assert.equal(resolvePort(c, svcPort.targetPort), DEFAULT_PORT, 'Service targetPort');
  const labels = deployment.spec.template.metadata.labels ?? {};
  for (const [k, v] of Object.entries(service.spec.selector as Record<string, string>)) {
    assert.equal(labels[k], v, `Service selector ${k} must match the pod labels`);
  }
  for (const [k, v] of Object.entries(deployment.spec.selector.matchLabels as Record<string, string>)) {
    assert.equal(labels[k], v, `Deployment selector ${k} must match the pod labels`);
  }
});

test('deploy/: the HPA and the Prometheus adapter rule use the server\'s queue-length gauge', async () => {
  const gauge = await queueGaugeName();
  const deployment = theObject('Deployment', 'deploy/deployment.yaml');

  const hpa = theObject('HorizontalPodAutoscaler', 'deploy/hpa.yaml');
  assert.equal(hpa.apiVersion, 'autoscaling/v2');
  assert.equal(hpa.spec.scaleTargetRef.kind, 'Deployment');
  assert.equal(hpa.spec.scaleTargetRef.name, deployment.metadata.name);
  assert.ok(hpa.spec.minReplicas >= 1 && hpa.spec.maxReplicas >= hpa.spec.minReplicas, 'min/max replicas');
  const pods = (hpa.spec.metrics as Yaml[]).filter((m) => m.type === 'Pods');
  assert.equal(pods.length, 1, 'one Pods metric');
  assert.equal(pods[0].pods.metric.name, gauge, 'the HPA metric must be the gauge src/server/metrics.ts exports');
  assert.equal(pods[0].pods.target.type, 'AverageValue');
  assert.ok(Number(pods[0].pods.target.averageValue) > 0, 'target average value');

  const values = parseYamlFile('deploy/monitoring/prometheus-adapter-rules.yaml')[0];
  const rules = (Array.isArray(values.rules) ? values.rules : values.rules?.custom) as Yaml[] | undefined;
  assert.ok(Array.isArray(rules), 'adapter rules: `rules.custom` (Helm values) or `rules` (adapter config)');
  const rule = rules.find((r) => new RegExp(`\\b${gauge}\\b`).test(String(r.seriesQuery)));
  assert.ok(rule, `no adapter rule discovers ${gauge}`);
  assert.match(rule.seriesQuery, /namespace!=""/);
  assert.match(rule.seriesQuery, /pod!=""/);
  assert.match(String(rule.resources?.overrides?.pod?.resource), /^pods?$/, 'the rule must associate the series with its pod');
  assert.match(String(rule.resources?.overrides?.namespace?.resource), /^namespaces?$/, 'the rule must associate the series with its namespace');
  assert.match(gauge, new RegExp(rule.name.matches), 'name.matches must match the gauge');
  assert.equal(rule.name.as, pods[0].pods.metric.name, 'the adapter exposes the name the HPA asks for');
  for (const t of ['<<.Series>>', '<<.LabelMatchers>>', '<<.GroupBy>>']) assert.ok(String(rule.metricsQuery).includes(t), `metricsQuery uses ${t}`);

  if (exists('deploy/monitoring/podmonitor.yaml')) {
    const pm = theObject('PodMonitor', 'deploy/monitoring/podmonitor.yaml');
    const labels = deployment.spec.template.metadata.labels;
    for (const [k, v] of Object.entries(pm.spec.selector.matchLabels as Record<string, string>)) assert.equal(labels[k], v);
    const endpoint = pm.spec.podMetricsEndpoints[0];
    assert.equal(resolvePort(podContainers(deployment)[0], endpoint.port), DEFAULT_PORT);
    assert.equal(endpoint.path, '/metrics');
  }
});

test('deploy/jobs/download-gpt2.yaml writes the model where the Deployment reads it', () => {
  const job = theObject('Job', 'deploy/jobs/download-gpt2.yaml');
  const [c] = podContainers(job);
  const mount = ((c.volumeMounts ?? []) as Yaml[]).find((m) => m.mountPath === '/models');
  assert.ok(mount && mount.readOnly !== true, 'the Job mounts the model volume writable at /models');
  const volume = ((job.spec.template.spec.volumes ?? []) as Yaml[]).find((v) => v.name === mount.name);
  assert.equal(volume?.persistentVolumeClaim?.claimName, 'gpt2-models');
  const command = [...(c.command ?? []), ...(c.args ?? [])].join(' ');
  const script = /\bnode (dist\/scripts\/[\w-]+)\.js\b/.exec(command);
  assert.ok(script, 'the Job runs a compiled script');
  assert.ok(exists(`${script[1].replace(/^dist\//, '')}.ts`), `${script[1]}.js is built from a script that does not exist`);
  const out = /--out (\S+)/.exec(command)?.[1];
  const deploymentEnv = containerEnv(podContainers(theObject('Deployment', 'deploy/deployment.yaml'))[0]);
  assert.equal(out, deploymentEnv.get('GPT2_MODEL'), 'the Job writes the folder the Deployment serves');
});

test('docs/deploy.md: its npm scripts, build targets and paths exist', () => {
  const doc = read('docs/deploy.md');
  const pkg = JSON.parse(read('package.json')) as { scripts: Record<string, string> };
  const scripts = [...doc.matchAll(/\bnpm run ([\w:-]+)/g)].map((m) => m[1]);
  assert.ok(scripts.length > 0);
  for (const s of scripts) assert.ok(s in pkg.scripts, `docs/deploy.md: npm run ${s} is not a package.json script`);
  for (const m of doc.matchAll(/--target (\w+)/g)) assert.ok(stageNamed(m[1]), `docs/deploy.md: --target ${m[1]} is not a Dockerfile stage`);
  for (const m of doc.matchAll(/\bdist\/scripts\/([\w-]+)\.js\b/g)) assert.ok(exists(`scripts/${m[1]}.ts`), `docs/deploy.md: dist/scripts/${m[1]}.js`);
  for (const m of doc.matchAll(/`(deploy\/[\w./-]+)`/g)) assert.ok(exists(m[1].replace(/\/$/, '')), `docs/deploy.md: ${m[1]} does not exist`);
  for (const m of doc.matchAll(/-p (\d+):(\d+)/g)) assert.equal(Number(m[2]), DEFAULT_PORT, 'docker run -p HOST:CONTAINER uses the server port');
  for (const stage of DOCKERFILE.stages) {
    if (!stageNamed(stage.from)) assert.ok(doc.includes(stage.from), `docs/deploy.md should name the pinned base image ${stage.from}`);
  }
});
