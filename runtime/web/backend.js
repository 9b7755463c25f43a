// onnxruntime-web as the runtime's backend: one InferenceSession per graph, made from the bundle's
// bytes already checked (external weights handed over as `externalData`), so that nothing is
// fetched after the bundle is open.
//
// Backends: `wasm` (ONNX Runtime's CPU kernels compiled to WebAssembly SIMD, with threads where
// the page is cross-origin isolated) and `webgpu`. `auto` takes WebGPU where the browser offers
// an adapter, else WebAssembly, and says why (`reason`); a backend asked for by name that cannot
// run is a BackendUnavailable naming what is missing, never a silent fallback.
//
// Session options follow runtime/backend_ort.py: all graph optimizations, sequential execution,
// idle worker threads sleep instead of spinning (a browser tab shares its CPU with everything
// else); for the weight-only INT8 graphs the manifest names (bundle.weightOnly: its
// `quantization.weight_only`, or the text encoder of bundles without it) ONNX Runtime's Q/DQ fusion
// is off (`session.disable_quant_qdq`), as the Python and C++ runtimes open them.
import { BackendUnavailable, BundleError } from "./errors.js";

export const BACKENDS = ["auto", "wasm", "webgpu"];
const ORT_MODULES = { wasm: "ort.wasm.min.mjs", webgpu: "ort.webgpu.min.mjs" };

async function webgpuAdapter() {
  const gpu = globalThis.navigator?.gpu;
  if (!gpu) return { adapter: null, why: "this browser has no WebGPU (navigator.gpu is missing)" };
  try {
    const adapter = await gpu.requestAdapter();
    if (!adapter) return { adapter: null, why: "WebGPU is present but offers no adapter (no usable GPU, or it is blocked)" };
    return { adapter, why: "" };
  } catch (err) {
    return { adapter: null, why: `WebGPU's requestAdapter failed (${err.message})` };
  }
}

/** -> {name: "wasm" | "webgpu", reason}. */
export async function chooseBackend(requested = "auto") {
  if (!BACKENDS.includes(requested)) throw new BackendUnavailable(`backend ${JSON.stringify(requested)}; choose one of ${BACKENDS.join(", ")}`);
  if (requested === "wasm") return { name: "wasm", reason: "asked for by name" };
  const { adapter, why } = await webgpuAdapter();
  if (requested === "webgpu") {
    if (!adapter) throw new BackendUnavailable(`the webgpu backend cannot run: ${why}; choose wasm`);
    return { name: "webgpu", reason: "asked for by name" };
  }
  if (adapter) return { name: "webgpu", reason: "auto: the browser offers a WebGPU adapter" };
  return { name: "wasm", reason: `auto: ${why}, so WebAssembly on the CPU` };
}

/** The thread count the wasm backend can use here and why: more than 1 needs a cross-origin isolated page. */
export function wasmThreads(requested) {
  const cores = globalThis.navigator?.hardwareConcurrency || 1;
  if (requested !== undefined && requested !== null && (!Number.isInteger(requested) || requested < 1 || requested > cores)) {
    throw new BackendUnavailable(`threads=${requested}; must be an integer from 1 to ${cores} (this machine's logical CPUs)`);
  }
  if (!globalThis.crossOriginIsolated) {
    return { threads: 1, why: "1 thread: the page is not cross-origin isolated (SharedArrayBuffer needs COOP/COEP headers)" };
  }
  if (requested) return { threads: requested, why: `${requested} thread${requested > 1 ? "s" : ""}, asked for` };
  // onnxruntime-web's own default: half the logical CPUs, at most 4 (a tab shares the CPU; on 2 busy
  // cores 1 thread gave faster edits than 2: runtime/web/README.md)
  const threads = Math.min(4, Math.ceil(cores / 2));
  return { threads, why: `${threads} thread${threads > 1 ? "s" : ""} of ${cores} logical CPUs (half, at most 4)` };
}

export class OrtWebBackend {
  /**
   * `ort`: an onnxruntime-web module already imported (node, tests), else it is imported from
   * `ortUrl` (the folder holding ort.*.min.mjs and the .wasm files).
   */
  static async create(bundle, { name, ortUrl = null, ort = null, threads = null }) {
    if (!ort) {
      if (!ortUrl) throw new BackendUnavailable("onnxruntime-web was not given: pass ortUrl (its dist folder's URL) or ort (the module)");
      const base = new URL(ortUrl, globalThis.location?.href).href.replace(/\/?$/, "/");
      try {
        ort = await import(base + ORT_MODULES[name]);
      } catch (err) {
        throw new BackendUnavailable(`cannot load onnxruntime-web from ${base} (${err.message}); on the server run ` +
          "`npm ci --prefix runtime/web` and restart qk-serve");
      }
      ort.env.wasm.wasmPaths = base;
    }
    const t = wasmThreads(threads);
    ort.env.wasm.numThreads = t.threads;
    ort.env.logLevel = "error";
    const backend = new OrtWebBackend(ort, bundle, name);
    backend.threads = t.threads;
    backend.threadsWhy = t.why;
    return backend;
  }

  constructor(ort, bundle, name) {
    this.ort = ort;
    this.bundle = bundle;
    this.name = name;
    this.sessions = new Map(); // graph -> Promise<InferenceSession>
    this.loadMs = {};
  }

  options(graph) {
    const info = this.bundle.graphs[graph];
    const opts = {
      executionProviders: [this.name], graphOptimizationLevel: "all", executionMode: "sequential", logSeverityLevel: 3,
    };
    // external weights, named as the graph names them: relative to its folder
    const dir = info.file.includes("/") ? info.file.slice(0, info.file.lastIndexOf("/") + 1) : "";
    const external = [info.externalData, `${info.file}.data`].filter((rel) => rel && rel in this.bundle.files);
    if (external.length) {
      opts.externalData = external.map((rel) => ({ path: rel.startsWith(dir) ? rel.slice(dir.length) : rel, data: this.bundle.files[rel] }));
    }
    const session = { intra_op: { allow_spinning: "0" } };
    if (this.bundle.weightOnly.includes(graph)) session.disable_quant_qdq = "1";
    opts.extra = { session };
    return opts;
  }

  /** The graph's session, made on first use from the bytes in memory. */
  session(graph) {
    let s = this.sessions.get(graph);
    if (!s) {
      const info = this.bundle.graphs[graph];
      const t0 = performance.now();
      s = this.ort.InferenceSession.create(this.bundle.files[info.file], this.options(graph)).then((sess) => {
        this.loadMs[graph] = performance.now() - t0;
        return sess;
      }, (err) => {
        this.sessions.delete(graph);
        throw new BundleError(`onnxruntime-web (${this.name}) cannot load ${info.file} of graph '${graph}' (${err.message}); ` +
          "re-export the bundle, or choose the other backend");
      });
      this.sessions.set(graph, s);
    }
    return s;
  }

  async activate(graphs) {
    for (const g of graphs) await this.session(g);
  }

  tensor(dtype, data, dims) {
    return new this.ort.Tensor(dtype, data, dims);
  }

  /** Run `graph` on {name: ort.Tensor}; -> {output name: Float32Array}. */
  async infer(graph, feeds) {
    const sess = await this.session(graph);
    let out;
    try {
      out = await sess.run(feeds);
    } catch (err) {
      throw new BundleError(`onnxruntime-web (${this.name}) failed running graph '${graph}' (${err.message})`);
    }
    const result = {};
    for (const t of this.bundle.graphs[graph].outputs) {
      const tensor = out[t.name];
      result[t.name] = tensor.location === "cpu" || tensor.location === undefined ? tensor.data : await tensor.getData(true);
    }
    return result;
  }

  async close() {
    for (const s of this.sessions.values()) {
      try {
        await (await s).release();
      } catch {
        // a session that failed to load has nothing to release
      }
    }
    this.sessions.clear();
  }
}
