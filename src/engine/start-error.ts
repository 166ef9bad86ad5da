// The engine could not start on a model folder (the runner failed to load the model, the
// tokenizer failed to load, or the draft model named by --draft-model did): the operator's
// problem, reported as one line, not as a bug.
export class EngineStartError extends Error {
  constructor(
    readonly modelDir: string,
    why: string,
  ) {
    super(`the engine could not start on the model in ${modelDir}: ${why}`);
    this.name = 'EngineStartError';
  }
}
