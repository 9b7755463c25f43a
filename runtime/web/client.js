// The page's side of worker.js: `await RuntimeClient.start(workerUrl)`, then `open`, `edit`,
// `generate` return promises of the worker's results. A worker that dies (out of memory, a
// WebAssembly trap) rejects every pending call with the reason and marks the client dead, so the
// page can say so and start a new one instead of waiting forever.
export class RuntimeClient {
  constructor(workerUrl) {
    this.worker = new Worker(workerUrl, { type: "module" });
    this.pending = new Map();
    this.nextId = 1;
    this.dead = null;
    this.worker.onmessage = (event) => {
      const { id, progress, ok, result, error } = event.data;
      const call = this.pending.get(id);
      if (!call) return;
      if (progress) {
        if (call.onProgress) call.onProgress(progress);
        return;
      }
      this.pending.delete(id);
      if (ok) call.resolve(result);
      else {
        const err = new Error(error.message);
        err.name = error.name;
        call.reject(err);
      }
    };
    const fail = (why) => {
      this.dead = why;
      for (const call of this.pending.values()) call.reject(new Error(why));
      this.pending.clear();
    };
    this.worker.onerror = (event) => {
      event.preventDefault();
      fail(`the in-browser runtime stopped: ${event.message || "the worker failed to start or crashed"}; load the bundle again`);
    };
    this.worker.onmessageerror = () => fail("the in-browser runtime sent a message the page cannot read; load the bundle again");
  }

  call(op, args, onProgress = null, transfer = []) {
    if (this.dead) return Promise.reject(new Error(this.dead));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, onProgress });
      this.worker.postMessage({ id, op, args }, transfer);
    });
  }

  open(args, onProgress) {
    return this.call("open", args, onProgress);
  }

  edit(args) {
    return this.call("edit", args);
  }

  generate(args) {
    return this.call("generate", args);
  }

  terminate() {
    this.worker.terminate();
    this.dead = "the in-browser runtime was stopped";
  }
}
