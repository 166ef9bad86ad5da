// Which waiting sequence the scheduler admits next when several tenants (API keys) share the
// batch. Strict arrival order lets one tenant with many requests make everyone else wait behind
// its queue; instead the next free slot goes to the tenant holding the fewest running sequences
// (ties: the tenant whose candidate is earlier in the queue), and within a tenant to its oldest
// sequence, or under the `priority` policy to its lowest `priority` value first (vLLM's
// convention), then the oldest. Queue position stands for arrival: the queue is in arrival order,
// except that preempted sequences go back to its front, which is where they belong.
//
// Priority orders a tenant's own requests only: it never lets one tenant pass another, so a tenant
// cannot buy a larger share by marking everything urgent.
import type { Sequence } from './scheduler.js';

export type SchedulingPolicy = 'fcfs' | 'priority';

/** The tenant of requests that carried no API key (a server without keys has only this one). */
export const DEFAULT_TENANT = 'default';

/** Batch slots each tenant's running sequences hold (a request's choices still to fork included). */
export function slotsByTenant(running: readonly Sequence[]): Map<string, number> {
  const held = new Map<string, number>();
  for (const s of running) held.set(s.tenant, (held.get(s.tenant) ?? 0) + 1 + s.unforked);
  return held;
}

/**
 * The sequence admission should try next, or undefined when nothing unpaused waits. Sequences
 * that are not `eligible` (their LoRA adapter has no room in the batch) are passed over.
 */
export function nextToAdmit(waiting: readonly Sequence[], running: readonly Sequence[], policy: SchedulingPolicy, eligible: (s: Sequence) => boolean = () => true): Sequence | undefined {
  // Each tenant's candidate, in queue order: its first unpaused sequence, or its most urgent one.
  const candidates = new Map<string, Sequence>();
  for (const s of waiting) {
    if (s.paused || !eligible(s)) continue;
    const best = candidates.get(s.tenant);
    if (best === undefined || (policy === 'priority' && s.priority < best.priority)) candidates.set(s.tenant, s);
  }
  if (candidates.size <= 1) return candidates.values().next().value;
  const held = slotsByTenant(running);
  let chosen: Sequence | undefined;
  let chosenHeld = Infinity;
  // Map iteration follows insertion, which is queue order of each tenant's first waiting sequence;
  // ties on slots held go to the tenant whose candidate is earlier in the queue.
  const order = [...candidates.values()].sort((a, b) => waiting.indexOf(a) - waiting.indexOf(b));
  for (const s of order) {
    const h = held.get(s.tenant) ?? 0;
    if (h < chosenHeld) {
      chosen = s;
      chosenHeld = h;
    }
  }
  return chosen;
}

/** Under the priority policy: which running sequence goes first, by vLLM's rule (largest priority value, then newest). */
export function lessUrgent(a: Sequence, b: Sequence): boolean {
  return a.priority > b.priority || (a.priority === b.priority && (a.arrival > b.arrival || (a.arrival === b.arrival && a.choice > b.choice)));
}
