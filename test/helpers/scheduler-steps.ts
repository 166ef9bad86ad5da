// Scheduler tests without a model, as vLLM's are: a plan is committed as if the runner ran it.
import type { Scheduler, StepPlan } from '../../src/engine/scheduler.js';

/** Simulates the runner: commit, then every sampled row gets one new token. */
export function runStep(s: Scheduler): StepPlan {
  const plan = s.schedule();
  s.commit(plan);
  for (const row of plan.rows) if (row.sample) row.seq.tokens.push(1000 + row.seq.outputLength);
  return plan;
}
