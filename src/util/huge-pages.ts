// Whether the weights and the KV pool sit on 2 MiB pages. One decode step streams every weight
// from memory, and on 4 KiB pages every 4 KiB of it is a TLB miss that slows the stream down
// (measured in docs/benchmark.md, "Huge pages").
//
// ONNX Runtime's prepacked weights and the engine's KV pool are large malloc'd blocks. Where
// Linux gives transparent huge pages only to memory that asks for them (THP mode "madvise", the
// default of Debian and Ubuntu), glibc asks for its mmap'd blocks when its tunable
// glibc.malloc.hugetlb is 1. Tunables are read once when a process starts, so `npm start` and the
// image set GLIBC_TUNABLES; nothing can turn it on from inside a running process.
import { readFileSync } from 'node:fs';

export type ThpMode = 'always' | 'madvise' | 'never';

export interface HugePages {
  /** The kernel's transparent huge page mode; null where there is none (not Linux, no sysfs). */
  thp: ThpMode | null;
  /** glibc.malloc.hugetlb as GLIBC_TUNABLES sets it (1: madvise its blocks; 2: hugetlbfs pages; 0: off), null where unset. */
  mallocHugetlb: string | null;
  /** Anonymous memory of this process on transparent huge pages, MiB; null where unreadable. */
  anonHugeMiB: number | null;
}

export const HUGE_PAGES_TUNABLE = 'glibc.malloc.hugetlb=1';

/** The bracketed choice of /sys/kernel/mm/transparent_hugepage/enabled, e.g. "always [madvise] never". */
export function parseThpMode(text: string): ThpMode | null {
  const chosen = /\[(\w+)\]/.exec(text)?.[1];
  return chosen === 'always' || chosen === 'madvise' || chosen === 'never' ? chosen : null;
}

/** glibc.malloc.hugetlb's value in GLIBC_TUNABLES (colon-separated name=value pairs, the last of a name winning), or null. */
export function mallocHugetlbIn(tunables: string | undefined): string | null {
  let value: string | null = null;
  for (const pair of (tunables ?? '').split(':')) {
    const [name, v] = pair.split('=');
    if (name?.trim() === 'glibc.malloc.hugetlb') value = v?.trim() ?? '';
  }
  return value;
}

const asksForHugePages = (value: string | null) => value === '1' || value === '2';

/** AnonHugePages of /proc/self/smaps_rollup, in MiB. */
export function parseAnonHugeMiB(smapsRollup: string): number | null {
  const kib = /^AnonHugePages:\s+(\d+) kB/m.exec(smapsRollup)?.[1];
  return kib === undefined ? null : Math.round(Number(kib) / 1024);
}

const readOrNull = (path: string): string | null => {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return null;
  }
};

export function hugePages(env: NodeJS.ProcessEnv = process.env, read: (path: string) => string | null = readOrNull): HugePages {
  const thp = read('/sys/kernel/mm/transparent_hugepage/enabled');
  const smaps = read('/proc/self/smaps_rollup');
  return {
    thp: thp === null ? null : parseThpMode(thp),
    mallocHugetlb: mallocHugetlbIn(env.GLIBC_TUNABLES),
    anonHugeMiB: smaps === null ? null : parseAnonHugeMiB(smaps),
  };
}

/** Whether a large block this process writes lands on huge pages: always under THP "always", on request under "madvise". */
export function largeBlocksOnHugePages(state: Pick<HugePages, 'thp' | 'mallocHugetlb'>): boolean {
  return state.thp === 'always' || (state.thp === 'madvise' && asksForHugePages(state.mallocHugetlb));
}

/** What to tell the operator when the large blocks could have had huge pages and nobody decided against them. */
export function hugePagesAdvice(state: HugePages): string | null {
  // An explicit glibc.malloc.hugetlb=0 is a choice (a lazily committed KV pool), not an oversight.
  if (state.thp !== 'madvise' || state.mallocHugetlb !== null) return null;
  return `transparent huge pages are given only on request here (THP "madvise") and GLIBC_TUNABLES does not ask: add ${HUGE_PAGES_TUNABLE} to GLIBC_TUNABLES (npm start and the Docker image set it) for faster decode steps, or glibc.malloc.hugetlb=0 to keep small pages without this warning`;
}
