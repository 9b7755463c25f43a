// EditSession in the browser: runtime/session.py's EditSession.edit / generate step for step (its
// module doc has the algorithm; runtime/cpp/src/session.cpp is the other port):
// 1. the image goes to the model's side (Pillow-exact bilinear), to [-1, 1], through the image
//    encoder; the box (scaled with the image, outwards) becomes a pixel mask, max-pooled to latent
//    resolution;
// 2. the instruction and the empty string (once per session) are encoded, each at batch 1 (on the
//    text's own tokens where the bundle's text axis is dynamic, zeros for the padding); the gateway
//    makes kontext for the guidance branches text+image, image only[, neither];
// 3. the CMG runs once on the first branch; its gate thresholded is the active region m, repeated
//    over each token's patch; decoder_cond (format 3) runs once;
// 4. each step runs the decoder (the region decoder on the active tokens plus a halo with
//    sparse "region") on the branches, combines the velocities with guidance in float32 and takes
//    an Euler step; a bundle with `few_step` (format 5) feeds the decoder `step_size` too: at the
//    step counts it lists the sigmas are uniform, (n - k) / n, and step_size = sigma - sigma_next,
//    at any other count the ordinary schedule and step_size 0;
// 5. the image decoder decodes; the source's pixels are kept outside m (and, with compositing
//    `changed`, inside m where the decoded output agrees with the decoded source);
//    uint8 = round_half_even((clamp(x, -1, 1) + 1) * 127.5); resized back to the input's size.
// The initial noise is noise.js portableNormal(seed, C * h * w), the same bits as every runtime.
// Timings are milliseconds per stage under the Python runtime's names.
import { OrtWebBackend, chooseBackend } from "./backend.js";
import { openBundle } from "./bundle.js";
import { composite } from "./composite.js";
import { STEP_CONDITION } from "./contract.js";
import { InputError } from "./errors.js";
import { checkPixels, decodeImage, MAX_PIXELS, resizeBilinear } from "./image.js";
import { checkBox, checkScale, checkSteps, checkText, scaleBox } from "./inputs.js";
import { checkSeed, portableNormal } from "./noise.js";
import { FlowMatchEulerScheduler, editBranches, fewStepSigmas, guidedVelocity } from "./sampler.js";
import { Tokenizer } from "./tokenizer.js";

const f32 = Math.fround;
export const SPARSE_MODES = ["none", "region"];
const now = () => performance.now();

// ------------------------------------------------------------------------------ helpers (session.py)

/** Python's round(): half to even. */
function roundHalfEven(v) {
  const fl = Math.floor(v), d = v - fl;
  if (d > 0.5) return fl + 1;
  if (d < 0.5) return fl;
  return fl % 2 === 0 ? fl : fl + 1;
}

/** The smallest bucket (a fraction of all tokens, rounded half to even) holding `count` tokens. */
export function bucketSize(count, total, fractions) {
  for (const frac of fractions) {
    const size = roundHalfEven(total * frac);
    if (count <= size) return size;
  }
  return total;
}

/** session.py active_token_indices: active tokens, every token within `halo` (Chebyshev), then the nearest others. */
export function activeTokenIndices(active, g, halo, fractions) {
  const n = g * g, on = [];
  for (let k = 0; k < n; k++) if (active[k]) on.push(k);
  const dist = new Int32Array(n);
  let wanted = 0;
  if (on.length) {
    for (let k = 0; k < n; k++) {
      let best = 1 << 30;
      for (const a of on) best = Math.min(best, Math.max(Math.abs(Math.floor(k / g) - Math.floor(a / g)), Math.abs((k % g) - (a % g))));
      dist[k] = best;
      if (best <= halo) wanted++;
    }
  }
  const size = bucketSize(Math.max(wanted, 1), n, fractions);
  const order = Array.from({ length: n }, (_, k) => k).sort((a, b) => dist[a] - dist[b] || a - b); // stable: ties by index
  return order.slice(0, size).sort((a, b) => a - b);
}

/** (3, S, S) in [-1, 1] -> (S, S, 3) uint8. */
function toUint8(img, S) {
  const ss = S * S, out = new Uint8Array(ss * 3);
  for (let c = 0; c < 3; c++) {
    for (let k = 0; k < ss; k++) {
      const v = Math.min(Math.max(img[c * ss + k], -1), 1);
      out[k * 3 + c] = roundHalfEven(f32(f32(v + 1) * 127.5));
    }
  }
  return out;
}

function repeat(arr, times) {
  const out = new arr.constructor(arr.length * times);
  for (let i = 0; i < times; i++) out.set(arr, i * arr.length);
  return out;
}

function concat(...parts) {
  const out = new parts[0].constructor(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** A serialising lock: `edit` and `generate` run one at a time, never interleaved. */
class Lock {
  constructor() {
    this.tail = Promise.resolve();
  }

  run(fn) {
    const result = this.tail.then(fn, fn);
    this.tail = result.catch(() => {});
    return result;
  }
}

// ------------------------------------------------------------------------------ the session

export class EditSession {
  /**
   * Open a bundle (a base URL, or a {name, read} source) on onnxruntime-web.
   * options: backend ("auto" | "wasm" | "webgpu"), threads, ortUrl (onnxruntime-web's dist folder)
   * or ort (the imported module), verify (sha256 of every file used, default true), maxPixels,
   * onStage({stage, ...}) for progress.
   */
  static async open(source, { backend = "auto", threads = null, ortUrl = null, ort = null, verify = true, maxPixels = MAX_PIXELS, onStage = null } = {}) {
    const t0 = now();
    const choice = await chooseBackend(backend);
    const bundle = await openBundle(source, { verify, onStage });
    const tokenizer = new Tokenizer(bundle.tokenizerJson, bundle.dims.max_length, `${bundle.name.replace(/\/$/, "")}/tokenizer.json`);
    onStage && onStage({ stage: "sessions", backend: choice.name });
    const t1 = now();
    const be = await OrtWebBackend.create(bundle, { name: choice.name, ortUrl, ort, threads });
    // load now what an edit with the default settings runs; the other decoder loads on first use
    const skip = bundle.hasRegion ? "decoder" : "decoder_region";
    await be.activate(Object.keys(bundle.graphs).filter((g) => g !== skip));
    const s = new EditSession(bundle, tokenizer, be, choice);
    s.maxPixels = maxPixels;
    s.openTimings = { fetch: bundle.timings.fetch, verify: bundle.timings.verify, sessions: now() - t1, total: now() - t0 };
    return s;
  }

  constructor(bundle, tokenizer, backend, choice) {
    this.bundle = bundle;
    this.tokenizer = tokenizer;
    this.backend = backend;
    this.backendName = choice.name;
    this.backendReason = choice.reason;
    this.scheduler = new FlowMatchEulerScheduler(1000, bundle.sampler.shift);
    this.emptyText = null;
    const axis = bundle.graphs.text_encoder.inputs[0].shape[1];
    this.textTokensDynamic = typeof axis === "string" && (bundle.tokenizerJson.padding?.direction ?? "Right") === "Right";
    this.lock = new Lock();
    this.closed = false;
  }

  get side() {
    return this.bundle.dims.image_size;
  }

  /** What the page shows about this session. */
  info() {
    const d = this.bundle.dims;
    return {
      bundle: this.bundle.name, precision: this.bundle.precision, weightOnly: this.bundle.weightOnly, imageSize: d.image_size,
      defaultSteps: this.bundle.sampler.steps,
      backend: this.backendName, backendReason: this.backendReason, threads: this.backend.threads, threadsWhy: this.backend.threadsWhy,
      hasRegion: this.bundle.hasRegion, composite: this.bundle.composite.kind, openTimings: this.openTimings, loadMs: this.backend.loadMs,
    };
  }

  async close() {
    return this.lock.run(async () => {
      if (!this.closed) await this.backend.close();
      this.closed = true;
    });
  }

  checkOpen() {
    if (this.closed) throw new Error("this EditSession is closed; open a new one");
  }

  // -- text
  async encode(text, timings) {
    const t0 = now();
    const e = this.tokenizer.encode(text);
    const L = this.bundle.dims.max_length, Wt = this.bundle.dims.text_width;
    const n = this.textTokensDynamic ? Math.max(1, e.attentionMask.reduce((a, b) => a + b, 0)) : L;
    const ids = BigInt64Array.from(e.ids.slice(0, n), BigInt), mask = BigInt64Array.from(e.attentionMask.slice(0, n), BigInt);
    const out = await this.backend.infer("text_encoder", {
      input_ids: this.backend.tensor("int64", ids, [1, n]), attention_mask: this.backend.tensor("int64", mask, [1, n]),
    });
    const hidden = new Float32Array(L * Wt);
    hidden.set(out.hidden.subarray(0, n * Wt)); // the padding's states stay 0
    timings.text_encoder = (timings.text_encoder ?? 0) + now() - t0;
    return { hidden, mask: Float32Array.from(e.attentionMask), truncated: e.truncated };
  }

  async textBatch(text, copiesOfEmpty, timings, warnings) {
    const enc = await this.encode(text, timings);
    if (enc.truncated) {
      warnings.push(`text ${JSON.stringify(text.slice(0, 40))}... (instruction or prompt) is longer than the model's ` +
        `${this.bundle.dims.max_length} tokens; the rest is ignored`);
    }
    if (!this.emptyText) this.emptyText = await this.encode("", timings);
    const e = this.emptyText;
    return {
      text: concat(enc.hidden, ...Array(copiesOfEmpty).fill(e.hidden)),
      mask: concat(enc.mask, ...Array(copiesOfEmpty).fill(e.mask)),
    };
  }

  // -- checks
  sparseMode(sparse) {
    if (sparse === undefined || sparse === null) return this.bundle.hasRegion ? "region" : "none";
    if (!SPARSE_MODES.includes(sparse)) throw new InputError(`sparse=${JSON.stringify(sparse)}; choose one of ${SPARSE_MODES.join(", ")}`);
    if (sparse === "region" && !this.bundle.hasRegion) {
      throw new InputError(`sparse='region' needs a bundle exported with the region decoder; ${this.bundle.name} has none ` +
        "(qk-export --sparse-attn region), or use sparse='none'");
    }
    return sparse;
  }

  async loadImage(image) {
    if (image instanceof Blob) image = new Uint8Array(await image.arrayBuffer());
    if (image instanceof ArrayBuffer) image = new Uint8Array(image);
    if (image instanceof Uint8Array) return decodeImage(image, { maxPixels: this.maxPixels });
    return checkPixels(image, this.maxPixels);
  }

  /** Float32 tensor helper. */
  t(data, dims) {
    return this.backend.tensor("float32", data, dims);
  }

  /**
   * The session's scheduler set for `steps` (session.py _schedule): the uniform sigmas at a count
   * the bundle's `few_step` lists (this.fewStepRun true), else the ordinary schedule.
   */
  schedule(steps) {
    const sched = this.scheduler, fewStep = this.bundle.fewStep;
    this.fewStepRun = fewStep !== null && fewStep.steps.includes(steps);
    if (this.fewStepRun) sched.setSigmas(fewStepSigmas(steps));
    else sched.setTimesteps(steps);
    return sched;
  }

  /**
   * The step's `sigma` (nb,), and `step_size` (nb,) where the decoders take it (format 5): sigma -
   * sigma_next at a few-step count, else 0.
   */
  stepFeeds(nb) {
    const sched = this.scheduler;
    const feeds = { sigma: this.t(new Float32Array(nb).fill(sched.sigma), [nb]) };
    if (this.bundle.fewStep !== null) feeds.step_size = this.t(new Float32Array(nb).fill(this.fewStepRun ? sched.stepSize : 0), [nb]);
    return feeds;
  }

  /**
   * What every decoder step reads besides x and sigma: format 3 runs decoder_cond once here (each
   * block's cross-attention keys and values, their padding bias, the pooled-text + flags
   * embedding); older bundles' steps take the text, kontext and flags themselves.
   */
  async stepCondition(cond, flags, nb, timings) {
    const d = this.bundle.dims, L = d.max_length;
    const feeds = { text: this.t(cond.text, [nb, L, d.text_width]), text_mask: this.t(cond.mask, [nb, L]), flags: this.t(flags, [nb, 2]) };
    if (cond.kontext) feeds.kontext = this.t(cond.kontext, [nb, d.kontext_tokens, d.width]);
    if (!this.bundle.hasDecoderCond) return feeds;
    const t0 = now();
    const out = await this.backend.infer("decoder_cond", feeds);
    timings.decoder_cond = now() - t0;
    const nCond = this.bundle.hasGateway ? d.condTokens : L;
    const dims = { cond_kv: [nb, nCond, d.condWidth], cond_bias: [nb, nCond], cond_emb: [nb, d.width] };
    return Object.fromEntries(STEP_CONDITION.map((k) => [k, this.t(out[k], dims[k])]));
  }

  // -- the two entry points
  /**
   * Edit `image` (file bytes: ArrayBuffer, Uint8Array or Blob; or {width, height, rgb}) as
   * `instruction` says, inside `box` ([x0, y0, x1, y1] or "x0,y0,x1,y1" in the image's pixels) if
   * given. -> {image: {width, height, rgb}, timings, gate (Float32Array, grid x grid), grid,
   * activeTokens, backend, seed (string), steps, warnings}.
   */
  edit(image, instruction, box = null, options = {}) {
    return this.lock.run(() => {
      this.checkOpen();
      return this.runEdit(image, instruction, box, options);
    });
  }

  /** Draw a new image (the model's side x side) from `prompt`. */
  generate(prompt, options = {}) {
    return this.lock.run(() => {
      this.checkOpen();
      return this.runGenerate(prompt, options);
    });
  }

  async runEdit(image, instruction, box, { steps, textGuidance, imageGuidance, seed = 0, sparse } = {}) {
    const tTotal = now();
    const cfg = this.bundle.sampler, d = this.bundle.dims, S = d.image_size;
    instruction = checkText(instruction, "instruction");
    steps = checkSteps(steps, cfg.steps);
    const sTxt = checkScale(textGuidance, cfg.textGuidance, "text_guidance");
    const sImg = checkScale(imageGuidance, cfg.imageGuidance, "image_guidance");
    const seedValue = checkSeed(seed);
    sparse = this.sparseMode(sparse);
    const timings = { text_encoder: 0, gateway: 0, cmg: 0, image_encoder: 0 };
    const warnings = [];

    // 1. image and box
    let t0 = now();
    const rgb = await this.loadImage(image);
    const W0 = rgb.width, H0 = rgb.height;
    let sbox = null;
    if (box !== null && box !== undefined) sbox = scaleBox(checkBox(box, W0, H0), W0, H0, S);
    const resized = resizeBilinear(rgb, S, S);
    const ss = S * S, srcPx = new Float32Array(3 * ss);
    for (let c = 0; c < 3; c++) for (let k = 0; k < ss; k++) srcPx[c * ss + k] = f32(resized.rgb[k * 3 + c] / 127.5) - 1;
    timings.preprocess = now() - t0;

    const C = d.latent_channels, h = d.latentSize, p = d.patch, g = d.grid, f = d.factor, hh = h * h, lat = C * hh;
    t0 = now();
    const src = (await this.backend.infer("image_encoder", { image: this.t(srcPx, [1, 3, S, S]) })).latent; // (1, C, h, h)
    timings.image_encoder = now() - t0;
    const region = new Float32Array(hh); // the box max-pooled to latent resolution
    if (sbox) {
      for (let y = 0; y < h; y++) {
        for (let x = 0; x < h; x++) {
          region[y * h + x] = sbox[0] < (x + 1) * f && x * f < sbox[2] && sbox[1] < (y + 1) * f && y * f < sbox[3] ? 1 : 0;
        }
      }
    }
    const hasRegion = sbox ? 1 : 0;

    // 2. text and the branches
    const nb = editBranches(sImg);
    const cond = await this.textBatch(instruction, nb - 1, timings, warnings);
    const zeros = new Float32Array(lat), zerosR = new Float32Array(hh);
    const sources = concat(src, src, zeros).subarray(0, nb * lat);
    const regions = concat(region, region, zerosR).subarray(0, nb * hh);
    const flags = new Float32Array([1, hasRegion, 1, hasRegion, 0, 0].slice(0, 2 * nb));
    const L = d.max_length;
    if (this.bundle.hasGateway) {
      t0 = now();
      cond.kontext = (await this.backend.infer("gateway", {
        text: this.t(cond.text, [nb, L, d.text_width]), text_mask: this.t(cond.mask, [nb, L]), source: this.t(sources, [nb, C, h, h]),
        region: this.t(regions, [nb, 1, h, h]), flags: this.t(flags, [nb, 2]),
      })).kontext;
      timings.gateway = now() - t0;
    }

    // 3. the gate
    let gate;
    if (this.bundle.hasCmg) {
      t0 = now();
      const K = d.kontext_tokens, D = d.width;
      gate = Float32Array.from((await this.backend.infer("cmg", {
        kontext: this.t(cond.kontext.slice(0, K * D), [1, K, D]), source: this.t(src, [1, C, h, h]), region: this.t(region, [1, 1, h, h]),
      })).gate.subarray(0, g * g));
      timings.cmg = now() - t0;
    } else gate = new Float32Array(g * g).fill(1);
    const thr = cfg.gateThreshold;
    const mTok = thr !== null ? gate.map((v) => (v > f32(thr) ? 1 : 0)) : Float32Array.from(gate);
    const gateMap = new Float32Array(hh);
    for (let y = 0; y < h; y++) for (let x = 0; x < h; x++) gateMap[y * h + x] = mTok[Math.floor(y / p) * g + Math.floor(x / p)];

    const fixed = {
      ...(await this.stepCondition(cond, flags, nb, timings)),
      source: this.t(sources, [nb, C, h, h]), region: this.t(regions, [nb, 1, h, h]), gate_map: this.t(repeat(gateMap, nb), [nb, 1, h, h]),
    };
    let graph = "decoder", activeTokens = null;
    if (sparse === "region") {
      const idx = activeTokenIndices(Array.from(mTok, (v) => v > 0.5), g, cfg.halo, cfg.regionBuckets);
      graph = "decoder_region";
      activeTokens = idx.length;
      fixed.active = this.backend.tensor("int64", repeat(BigInt64Array.from(idx, BigInt), nb), [nb, idx.length]);
    }

    // 4. the denoising loop
    const x = portableNormal(seedValue, lat);
    const v1 = new Float32Array(lat);
    const sched = this.schedule(steps);
    const perStep = [];
    for (let i = 0; i < steps; i++) {
      t0 = now();
      const v = (await this.backend.infer(graph, { x: this.t(repeat(x, nb), [nb, C, h, h]), ...this.stepFeeds(nb), ...fixed })).velocity;
      guidedVelocity(v, nb, lat, sTxt, sImg, v1);
      sched.step(v1, x);
      perStep.push(now() - t0);
    }
    timings.decoder = perStep.reduce((a, b) => a + b, 0);
    timings.decoder_steps = perStep;

    // 5. decode, composite, back to uint8 and the input's size
    t0 = now();
    const out = Float32Array.from((await this.backend.infer("image_decoder", { latent: this.t(x, [1, C, h, h]) })).image);
    timings.image_decoder = now() - t0;
    const comp = this.bundle.composite;
    let srcDec = null;
    if (this.bundle.hasCmg && comp.decodesSource) {
      t0 = now();
      srcDec = (await this.backend.infer("image_decoder", { latent: this.t(src, [1, C, h, h]) })).image;
      timings.source_decoder = now() - t0;
    }
    t0 = now();
    if (this.bundle.hasCmg) {
      const pix = new Float32Array(ss);
      for (let y = 0; y < S; y++) for (let xx = 0; xx < S; xx++) pix[y * S + xx] = gateMap[Math.floor(y / f) * h + Math.floor(xx / f)];
      composite(out, srcPx, pix, S, comp, srcDec);
    }
    let result = { width: S, height: S, rgb: toUint8(out, S) };
    if (W0 !== S || H0 !== S) result = resizeBilinear(result, W0, H0);
    timings.postprocess = now() - t0;
    timings.total = now() - tTotal;
    return {
      image: result, timings, gate, grid: g, activeTokens, backend: this.backendName, seed: seedValue.toString(), steps, warnings,
    };
  }

  async runGenerate(prompt, { steps, guidance, seed = 0 } = {}) {
    const tTotal = now();
    const cfg = this.bundle.sampler, d = this.bundle.dims, S = d.image_size;
    prompt = checkText(prompt, "prompt");
    steps = checkSteps(steps, cfg.steps);
    const s = checkScale(guidance, cfg.genGuidance === null ? cfg.textGuidance : cfg.genGuidance, "guidance");
    const seedValue = checkSeed(seed);
    const timings = { text_encoder: 0, gateway: 0, cmg: 0, image_encoder: 0 };
    const warnings = [];
    const C = d.latent_channels, h = d.latentSize, hh = h * h, lat = C * hh, L = d.max_length;

    const cond = await this.textBatch(prompt, 1, timings, warnings); // branches: prompt, empty
    const zeros = new Float32Array(2 * lat), region = new Float32Array(2 * hh), flags = new Float32Array(4);
    let t0;
    if (this.bundle.hasGateway) {
      t0 = now();
      cond.kontext = (await this.backend.infer("gateway", {
        text: this.t(cond.text, [2, L, d.text_width]), text_mask: this.t(cond.mask, [2, L]), source: this.t(zeros, [2, C, h, h]),
        region: this.t(region, [2, 1, h, h]), flags: this.t(flags, [2, 2]),
      })).kontext;
      timings.gateway = now() - t0;
    }
    const fixed = {
      ...(await this.stepCondition(cond, flags, 2, timings)),
      source: this.t(zeros, [2, C, h, h]), region: this.t(region, [2, 1, h, h]), gate_map: this.t(new Float32Array(2 * hh).fill(1), [2, 1, h, h]),
    };
    const x = portableNormal(seedValue, lat);
    const v1 = new Float32Array(lat);
    const sched = this.schedule(steps);
    const perStep = [];
    for (let i = 0; i < steps; i++) {
      t0 = now();
      const v = (await this.backend.infer("decoder", { x: this.t(repeat(x, 2), [2, C, h, h]), ...this.stepFeeds(2), ...fixed })).velocity;
      guidedVelocity(v, 2, lat, s, 1, v1);
      sched.step(v1, x);
      perStep.push(now() - t0);
    }
    timings.decoder = perStep.reduce((a, b) => a + b, 0);
    timings.decoder_steps = perStep;
    t0 = now();
    const out = (await this.backend.infer("image_decoder", { latent: this.t(x, [1, C, h, h]) })).image;
    timings.image_decoder = now() - t0;
    const image = { width: S, height: S, rgb: toUint8(out, S) };
    timings.total = now() - tTotal;
    return { image, timings, gate: null, grid: d.grid, activeTokens: null, backend: this.backendName, seed: seedValue.toString(), steps, warnings };
  }
}
