// The documentation's links and commands against the repository: every relative link in README.md,
// tools/README.md, models/README.md and docs/*.md names a file that exists and, with a #fragment,
// a heading of that file (GitHub's anchor rules); every `npm run X` in README.md is a package.json
// script; README.md stays a short page for users (the record lives in docs/).
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const read = (rel: string): string => readFileSync(path.join(ROOT, rel), 'utf8');

const DOCS = [
  'README.md',
  'tools/README.md',
  'models/README.md',
  ...readdirSync(path.join(ROOT, 'docs'))
    .filter((n) => n.endsWith('.md'))
    .map((n) => `docs/${n}`),
];

/** Markdown without fenced code blocks (their `#` lines are not headings, their `](x)` not links). */
function prose(markdown: string): string {
  return markdown.replace(/^(```|~~~)[^\n]*\n[\s\S]*?^\1[^\n]*$/gm, '');
}

/** GitHub's heading anchors: lower case, punctuation dropped, spaces to '-', repeats numbered. */
function anchorsOf(markdown: string): Set<string> {
  const seen = new Map<string, number>();
  const out = new Set<string>();
  for (const m of prose(markdown).matchAll(/^#{1,6}\s+(.+?)\s*#*\s*$/gm)) {
    const slug = m[1]
      .toLowerCase()
      .replace(/[^\p{L}\p{N}\s_-]/gu, '')
      .replace(/ /g, '-');
    const n = seen.get(slug) ?? 0;
    seen.set(slug, n + 1);
    out.add(n === 0 ? slug : `${slug}-${n}`);
  }
  return out;
}

test('anchorsOf follows GitHub: backticks, punctuation and dots dropped, repeats numbered', () => {
  const a = anchorsOf('# Engine figures (`npm run bench:engine`, 2026-11-29)\n## Playground: `GET /`\n## A\n## A\n```\n# not a heading\n```\n');
  assert.deepEqual([...a], ['engine-figures-npm-run-benchengine-2026-11-29', 'playground-get-', 'a', 'a-1']);
});

test('every relative link in the docs names an existing file and heading', () => {
  const problems: string[] = [];
  let checked = 0;
  for (const doc of DOCS) {
    for (const m of prose(read(doc)).matchAll(/\]\(([^)\s]+)(?:\s+"[^"]*")?\)/g)) {
      const target = m[1];
      if (/^[a-z][a-z+.-]*:/i.test(target)) continue; // https:, mailto:
      const [file, fragment] = target.split('#', 2) as [string, string | undefined];
      const rel = file === '' ? doc : path.posix.normalize(path.posix.join(path.posix.dirname(doc), decodeURI(file)));
      checked++;
      if (rel.startsWith('..') || !existsSync(path.join(ROOT, rel))) {
        problems.push(`${doc}: ${target} (no ${rel})`);
        continue;
      }
      if (fragment !== undefined && rel.endsWith('.md') && statSync(path.join(ROOT, rel)).isFile() && !anchorsOf(read(rel)).has(fragment)) {
        problems.push(`${doc}: ${target} (no heading #${fragment} in ${rel})`);
      }
    }
  }
  assert.ok(checked > 30, `expected the docs to link to each other, found ${checked} links`);
  assert.deepEqual(problems, []);
});

test('README.md: a short page whose npm commands all exist', () => {
  const readme = read('README.md');
  const lines = readme.split('\n').length;
  assert.ok(lines <= 210, `README.md is ${lines} lines: move detail to docs/ (it is for users, at most ~200)`);
  const pkg = JSON.parse(read('package.json')) as { scripts: Record<string, string> };
  const used = [...readme.matchAll(/\bnpm run ([\w:-]+)/g)].map((m) => m[1]);
  assert.ok(used.includes('bench') && used.includes('soak'));
  for (const s of used) assert.ok(s in pkg.scripts, `README.md: npm run ${s} is not a package.json script`);
  for (const s of ['start', 'test']) assert.ok(s in pkg.scripts);
  assert.match(readme, /npm ci && npm start/);
  assert.match(readme, /npm ci && npm test/);
});
