// The runtime's errors, as in runtime/errors.py: bad input from the user, a bundle that cannot be
// run, and a backend that cannot start. Each message says what was wrong and how to fix it.

export class QKError extends Error {
  constructor(message) {
    super(message);
    this.name = this.constructor.name;
  }
}

export class InputError extends QKError {}
export class BundleError extends QKError {}
export class BackendUnavailable extends QKError {}
