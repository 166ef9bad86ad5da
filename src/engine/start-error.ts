// The engine could not start on a model folder (the runner failed to load the model, the
// tokenizer failed to load): the operator's problem, reported as one line, not as a bug.
export class EngineStartError extends Error {
  constructor(
    readonly modelDir: string,
    why: string,
  ) {
    super(`the model in ${modelDir} could not be loaded: ${why}`);
    this.name = 'EngineStartError';
  }
}
