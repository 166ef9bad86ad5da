// Real English for the grounded workload: the prose paragraphs of the repository's own docs
// (README.md and docs/*.md, which the docs-links test already reads), with Markdown markup
// stripped so that the GPT-2 tokenizer sees natural text. Tables, code, headings and lists are
// left out: their repeated cells and symbols are not what an input-grounded request quotes.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

/** The prose paragraphs of one Markdown text, markup removed, each on one line. */
export function prosePassages(markdown: string): string[] {
  const out: string[] = [];
  let inFence = false;
  let paragraph: string[] = [];
  const flush = () => {
    const text = paragraph.join(' ').trim();
    paragraph = [];
    // Short lines are captions and labels, not passages; <|endoftext|> would be encoded as the
    // special token, ending the text in the middle of a prompt.
    if (text.split(/\s+/).length >= 20 && !text.includes('<|')) out.push(stripMarkup(text));
  };
  for (const line of markdown.split(/\r?\n/)) {
    if (/^\s*(```|~~~)/.test(line)) {
      flush();
      inFence = !inFence;
      continue;
    }
    if (inFence) continue;
    if (line.trim() === '' || /^\s*([#|>]|[-*+] |\d+\. |<)/.test(line) || /^ {4}/.test(line)) {
      flush();
      continue;
    }
    paragraph.push(line.trim());
  }
  flush();
  return out;
}

function stripMarkup(text: string): string {
  return text
    .replace(/!?\[([^\]]*)\]\([^)]*\)/g, '$1') // [text](url) -> text
    .replace(/`/g, '')
    .replace(/(\*\*|__)(.*?)\1/g, '$2')
    .replace(/\s+/g, ' ')
    .trim();
}

/** The prose of README.md and docs/*.md under `root`, in a fixed order. */
export function docsProse(root: string): string[] {
  const docs = readdirSync(join(root, 'docs'))
    .filter((f) => f.endsWith('.md'))
    .sort()
    .map((f) => join(root, 'docs', f));
  return [join(root, 'README.md'), ...docs].flatMap((file) => prosePassages(readFileSync(file, 'utf8')));
}
