/** A constraint the server cannot enforce (bad regex, unsupported schema keyword): the client's error. */
export class ConstraintError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConstraintError';
  }
}
