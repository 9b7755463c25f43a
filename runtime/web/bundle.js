// Open and validate a bundle in the browser, as runtime/bundle.py does on disk: the manifest's
// format and version (1-5), dims, graphs against the export contract, sampler numbers, the
// compositing entry, the few-step entry (format 5's `few_step`), the weight-only INT8 graphs
// (`quantization.weight_only`); then every file the runtime uses
// (each graph's file and external data, the tokenizer) is fetched and its sha256 (Web Crypto) compared with the manifest's before anything
// uses it. A file whose bytes differ is refused with a BundleError naming it. Files the manifest
// lists that no graph uses (golden outputs for qk-build, say) are not fetched.
//
// A bundle comes from a `source`: a base URL (string or URL; files are fetched relative to it, so
// the shared text encoder's `../<sibling>/<file>` resolves to the sibling bundle beside it, as on
// disk), or an object {name, read(rel) -> Promise<Uint8Array>} (node, tests). File names follow
// files.py's rules: relative POSIX paths without '.', empty parts or '..', except the text
// encoder's `../<sibling>/<file>`, accepted only when the sibling's own manifest lists <file> as
// its text encoder with the same sha256.
import { readComposite } from "./composite.js";
import {
  DIM_LIMITS, DIM_NAMES, FEW_STEP_FIELDS, FEW_STEP_FORMAT_VERSION, FORMAT, FORMAT_VERSION, LEGACY_REGION_BUCKETS, MANIFEST, MIN_FORMAT_VERSION, NOISE,
  REQUIRED_GRAPHS, SCHEDULER, TOKENIZER, WEIGHT_ONLY_INT8_GRAPHS, WEIGHT_ONLY_KEY, graphSpecs, withDerived,
} from "./contract.js";
import { BundleError } from "./errors.js";
import { GUIDANCE_RANGE, MAX_STEPS } from "./inputs.js";

export const EXPORT_HINT = "re-export it with qk-export (for example: qk-export --model CKPT --out DIR), or download it again";
export const MAX_JSON_BYTES = 4 * 1024 * 1024;
export const MAX_JSON_DEPTH = 64;
const SHARED_GRAPH = "text_encoder";
const SHIFT_RANGE = [0.01, 100];
const PRECISIONS = ["fp32", "int8", "fp16"]; // bundle.py PRECISIONS
const MAX_HALO = 64;

// ------------------------------------------------------------------------------ sources

/** A bundle at a base URL, read with fetch. `onProgress(rel, loaded, total)` while a file arrives. */
export function urlSource(base, { fetchFn = globalThis.fetch, onProgress = null } = {}) {
  const root = new URL(base, globalThis.location?.href);
  if (!root.pathname.endsWith("/")) root.pathname += "/";
  return {
    name: root.href,
    async read(rel) {
      const url = new URL(rel, root);
      let response;
      try {
        response = await fetchFn(url.href, { cache: "no-cache" });
      } catch (err) {
        throw new BundleError(`cannot fetch ${rel} of the bundle at ${root.href} (${err.message}); check the connection and reload`);
      }
      if (!response.ok) {
        throw new BundleError(`the bundle at ${root.href} is missing ${rel} (HTTP ${response.status}, listed in ${MANIFEST}); ${EXPORT_HINT}`);
      }
      const total = Number(response.headers.get("Content-Length")) || 0;
      if (!onProgress || !response.body) return new Uint8Array(await response.arrayBuffer());
      const reader = response.body.getReader(), chunks = [];
      let loaded = 0;
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        chunks.push(value);
        loaded += value.length;
        onProgress(rel, loaded, total);
      }
      const out = new Uint8Array(loaded);
      let at = 0;
      for (const c of chunks) {
        out.set(c, at);
        at += c.length;
      }
      return out;
    },
  };
}

// ------------------------------------------------------------------------------ checks

function jsonDepth(value) {
  let depth = 0;
  const stack = [[value, 1]];
  while (stack.length) {
    const [v, d] = stack.pop();
    if (v && typeof v === "object") {
      depth = Math.max(depth, d);
      if (d > MAX_JSON_DEPTH) return d;
      for (const child of Object.values(v)) stack.push([child, d + 1]);
    }
  }
  return depth;
}

export function parseJson(bytes, where, hint) {
  if (bytes.length > MAX_JSON_BYTES) throw new BundleError(`${where} is ${bytes.length} bytes, over the limit of ${MAX_JSON_BYTES}; ${hint}`);
  let value;
  try {
    value = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (err) {
    throw new BundleError(`${where} is not valid UTF-8 JSON (${err.message}); ${hint}`);
  }
  if (jsonDepth(value) > MAX_JSON_DEPTH) throw new BundleError(`${where} nests deeper than ${MAX_JSON_DEPTH} levels; ${hint}`);
  return value;
}

/** files.py path_parts: a manifest's file name -> its parts, or BundleError. */
export function pathParts(rel, where, allowUp = false) {
  if (typeof rel !== "string" || !rel || rel.includes("\\") || rel.includes("\u0000") || rel.startsWith("/") || /^[a-z][a-z0-9+.-]*:/i.test(rel)) {
    throw new BundleError(`${where}: file name ${JSON.stringify(rel)} must be a relative path inside the bundle folder, with '/' separators`);
  }
  const parts = rel.split("/");
  if (parts.some((p) => p === "" || p === ".")) {
    throw new BundleError(`${where}: file name ${JSON.stringify(rel)} has an empty or '.' part; write it as a plain relative path`);
  }
  let ups = 0;
  while (ups < parts.length && parts[ups] === "..") ups++;
  if (parts.slice(ups).includes("..") || (ups && !allowUp) || ups === parts.length) {
    throw new BundleError(`${where}: file name ${JSON.stringify(rel)} leaves the bundle folder ('..'); every file a manifest ` +
      `names must lie inside the bundle`);
  }
  return parts;
}

function graphFiles(entry) {
  if (!entry || typeof entry !== "object" || typeof entry.file !== "string") return [];
  const names = [entry.file, `${entry.file}.data`];
  if (typeof entry.external_data === "string") {
    const dir = entry.file.includes("/") ? entry.file.slice(0, entry.file.lastIndexOf("/") + 1) : "";
    names.push(dir + entry.external_data);
  }
  return names;
}

function checkManifest(manifest, where) {
  if (!manifest || typeof manifest !== "object" || Array.isArray(manifest)) {
    throw new BundleError(`${where} holds ${Array.isArray(manifest) ? "a list" : typeof manifest}, not a JSON object; ${EXPORT_HINT}`);
  }
  const fmt = manifest.format, version = manifest.format_version;
  if (fmt !== FORMAT) throw new BundleError(`${where} has format ${JSON.stringify(fmt)}, not '${FORMAT}'; point the page at a folder qk-export wrote`);
  if (!Number.isInteger(version)) {
    throw new BundleError(`${where} has format_version ${JSON.stringify(version)}; expected the integer ${FORMAT_VERSION}; ${EXPORT_HINT}`);
  }
  if (version > FORMAT_VERSION) {
    throw new BundleError(`${where} has format_version ${version}, newer than this runtime reads (${FORMAT_VERSION}); ` +
      `upgrade query-kontext or export with the matching version`);
  }
  if (version < MIN_FORMAT_VERSION) {
    throw new BundleError(`${where} has format_version ${version}; this runtime reads ${MIN_FORMAT_VERSION}..${FORMAT_VERSION}: ${EXPORT_HINT}`);
  }
  const missing = ["dims", "graphs", "sampler", "files", "precision"].filter((k) => !(k in manifest));
  if (missing.length) throw new BundleError(`${where} lacks ${JSON.stringify(missing)}; ${EXPORT_HINT}`);
  return manifest;
}

function readDims(manifest, where) {
  const raw = manifest.dims;
  const names = DIM_NAMES.filter((n) => n !== "depth" || manifest.format_version >= 3);
  const have = raw && typeof raw === "object" ? Object.keys(raw).sort() : raw;
  if (!raw || typeof raw !== "object" || JSON.stringify(have) !== JSON.stringify([...names].sort())) {
    throw new BundleError(`${where}: 'dims' must have exactly ${JSON.stringify([...names].sort())}, has ${JSON.stringify(have)}; ${EXPORT_HINT}`);
  }
  for (const [k, v] of Object.entries(raw)) {
    if (!Number.isInteger(v) || v < 0) throw new BundleError(`${where}: 'dims' values must be non-negative integers, got ${JSON.stringify(raw)}`);
    if (v > DIM_LIMITS[k]) throw new BundleError(`${where}: dims ${k}=${v} over the limit ${DIM_LIMITS[k]}; ${EXPORT_HINT}`);
  }
  const d = { depth: 0, ...raw };
  if (d.factor < 1 || d.patch < 1 || d.image_size < 1) {
    throw new BundleError(`${where}: dims image_size, factor and patch must be >= 1, got ${JSON.stringify(raw)}; ${EXPORT_HINT}`);
  }
  if (manifest.format_version >= 3 && d.depth < 1) {
    throw new BundleError(`${where}: dims.depth must be the decoder's block count (>= 1), got ${d.depth}; ${EXPORT_HINT}`);
  }
  if (d.image_size % d.factor || (d.image_size / d.factor) % d.patch) {
    throw new BundleError(`${where}: inconsistent dims ${JSON.stringify(raw)}: image_size / factor / patch must divide evenly`);
  }
  return withDerived(d);
}

const sameTensors = (a, b) => JSON.stringify(a.map((t) => [t.name, t.dtype, t.shape])) === JSON.stringify(b.map((t) => [t.name, t.dtype, t.shape]));

/**
 * bundle.py _few_step: format 5's `few_step` -> {steps} (the step counts that run the few-step
 * sampler), or null without one (the decoders take no step_size).
 */
function readFewStep(manifest, where) {
  if (!("few_step" in manifest)) return null;
  const version = manifest.format_version;
  if (version < FEW_STEP_FORMAT_VERSION) {
    throw new BundleError(`${where}: 'few_step' needs format_version ${FEW_STEP_FORMAT_VERSION} or newer (this manifest has ` +
      `${version}, whose decoders take no step_size); ${EXPORT_HINT}`);
  }
  const entry = manifest.few_step;
  const want = ["steps", ...Object.keys(FEW_STEP_FIELDS)].sort();
  const isObject = entry && typeof entry === "object" && !Array.isArray(entry);
  const have = isObject ? Object.keys(entry).sort() : entry;
  if (!isObject || JSON.stringify(have) !== JSON.stringify(want)) {
    throw new BundleError(`${where}: 'few_step' must be an object with exactly the keys ${JSON.stringify(want)}, has ${JSON.stringify(have)}; ${EXPORT_HINT}`);
  }
  for (const [key, value] of Object.entries(FEW_STEP_FIELDS)) {
    if (entry[key] !== value) {
      throw new BundleError(`${where}: few_step.${key}=${JSON.stringify(entry[key])}; this runtime runs only ${JSON.stringify(value)} ` +
        `(a newer sampler? upgrade query-kontext, or ${EXPORT_HINT})`);
    }
  }
  const steps = entry.steps;
  if (!Array.isArray(steps) || !steps.length || steps.length > MAX_STEPS ||
      !steps.every((n) => Number.isInteger(n) && n >= 1 && n <= MAX_STEPS) || steps.some((n, i) => i > 0 && steps[i - 1] >= n)) {
    throw new BundleError(`${where}: few_step.steps=${JSON.stringify(steps)}; must be a non-empty list of increasing integer step ` +
      `counts from 1 to ${MAX_STEPS}; ${EXPORT_HINT}`);
  }
  return { steps: [...steps] };
}

function readGraphs(manifest, dims, where, fewStep = null) {
  const raw = manifest.graphs, files = manifest.files, version = manifest.format_version;
  if (!raw || typeof raw !== "object" || Array.isArray(raw)) throw new BundleError(`${where}: 'graphs' must be an object; ${EXPORT_HINT}`);
  let missing = REQUIRED_GRAPHS.filter((g) => !(g in raw));
  if (missing.length) throw new BundleError(`${where}: graphs ${JSON.stringify(missing)} are missing; ${EXPORT_HINT}`);
  const expected = graphSpecs(dims, { gateway: "gateway" in raw, gate: "cmg" in raw, region: "decoder_region" in raw, formatVersion: version,
    stepSize: fewStep !== null });
  missing = Object.keys(expected).filter((g) => !(g in raw));
  if (missing.length) throw new BundleError(`${where}: graphs ${JSON.stringify(missing)} are missing (format_version ${version}); ${EXPORT_HINT}`);
  const unknown = Object.keys(raw).filter((g) => !(g in expected)).sort();
  if (unknown.length) {
    const hint = unknown.includes("cmg") ? " (a CMG needs a gateway in this contract)" : "";
    throw new BundleError(`${where}: graphs ${JSON.stringify(unknown)} are not in the export contract${hint}; ${EXPORT_HINT}`);
  }
  const graphs = {};
  for (const [name, spec] of Object.entries(expected)) {
    const g = raw[name];
    if (!g || typeof g !== "object" || !("file" in g)) throw new BundleError(`${where}: graph '${name}' must give its 'file'; ${EXPORT_HINT}`);
    if (typeof g.file !== "string" || !(g.file in files)) {
      throw new BundleError(`${where}: graph '${name}' file ${JSON.stringify(g.file)} has no sha256 in 'files'; ${EXPORT_HINT}`);
    }
    if ("external_data" in g && (typeof g.external_data !== "string" || !(g.external_data in files))) {
      throw new BundleError(`${where}: graph '${name}' external data ${JSON.stringify(g.external_data)} has no sha256 in 'files'; ${EXPORT_HINT}`);
    }
    for (const kind of ["inputs", "outputs"]) {
      const have = g[kind];
      if (!Array.isArray(have) || !have.every((t) => t && typeof t.name === "string" && typeof t.dtype === "string" && Array.isArray(t.shape))) {
        throw new BundleError(`${where}: graph '${name}' ${kind} must be a list of {name, dtype, shape}; ${EXPORT_HINT}`);
      }
      if (!sameTensors(have, spec[kind])) {
        throw new BundleError(`${where}: graph '${name}' ${kind} ${JSON.stringify(have.map((t) => [t.name, t.dtype, t.shape]))} differ from ` +
          `the contract's ${JSON.stringify(spec[kind].map((t) => [t.name, t.dtype, t.shape]))}; the bundle was written by another ` +
          `version of qk-export: ${EXPORT_HINT}`);
      }
    }
    graphs[name] = {
      name, file: g.file, externalData: typeof g.external_data === "string" ? g.external_data : null,
      precision: g.precision ?? manifest.precision, inputs: g.inputs, outputs: g.outputs,
    };
  }
  return graphs;
}

/**
 * bundle.py _weight_only: the INT8 graphs stored weight-only (Q/DQ fusion off), from the manifest's
 * `quantization.weight_only`, or without one those of WEIGHT_ONLY_INT8_GRAPHS in INT8. -> [names].
 */
function readWeightOnly(manifest, graphs, where) {
  const record = manifest.quantization;
  if (record !== undefined && record !== null && (typeof record !== "object" || Array.isArray(record))) {
    throw new BundleError(`${where}: 'quantization' must be an object (or null), got ${JSON.stringify(record)}; ${EXPORT_HINT}`);
  }
  if (record === undefined || record === null || !(WEIGHT_ONLY_KEY in record)) {
    return WEIGHT_ONLY_INT8_GRAPHS.filter((g) => g in graphs && graphs[g].precision === "int8");
  }
  const names = record[WEIGHT_ONLY_KEY];
  const key = `quantization.${WEIGHT_ONLY_KEY}`;
  if (!Array.isArray(names) || !names.every((n) => typeof n === "string") || new Set(names).size !== names.length) {
    throw new BundleError(`${where}: ${key}=${JSON.stringify(names)}; must be a list of distinct graph names; ${EXPORT_HINT}`);
  }
  for (const name of names) {
    if (!Object.hasOwn(graphs, name)) {
      throw new BundleError(`${where}: ${key} names '${name}', which is not a graph of this bundle (${Object.keys(graphs).join(", ")}); ${EXPORT_HINT}`);
    }
    if (graphs[name].precision !== "int8") {
      throw new BundleError(`${where}: ${key} names '${name}', whose precision is '${graphs[name].precision}', not 'int8' ` +
        `(only INT8 graphs can be weight-only); ${EXPORT_HINT}`);
    }
  }
  return [...names];
}

function number(s, key, where, lo, hi, { integer = false, fallback } = {}) {
  if (!(key in s)) {
    if (fallback === undefined) throw new BundleError(`${where}: sampler.${key} is missing; ${EXPORT_HINT}`);
    return fallback;
  }
  const v = s[key];
  if (typeof v !== "number" || !Number.isFinite(v) || (integer && !Number.isInteger(v))) {
    throw new BundleError(`${where}: sampler.${key}=${JSON.stringify(v)}; must be ${integer ? "an integer" : "a number"} from ${lo} to ${hi}; ${EXPORT_HINT}`);
  }
  if (v < lo || v > hi) throw new BundleError(`${where}: sampler.${key}=${v} is outside ${lo}..${hi}; ${EXPORT_HINT}`);
  return v;
}

function readSampler(manifest, where) {
  const s = manifest.sampler;
  if (!s || typeof s !== "object" || Array.isArray(s)) throw new BundleError(`${where}: 'sampler' must be an object; ${EXPORT_HINT}`);
  if ((s.scheduler ?? SCHEDULER) !== SCHEDULER) {
    throw new BundleError(`${where}: sampler.scheduler ${JSON.stringify(s.scheduler)} is not supported; this runtime runs ${SCHEDULER}`);
  }
  if ((s.noise ?? NOISE) !== NOISE) throw new BundleError(`${where}: sampler.noise ${JSON.stringify(s.noise)} is not supported; this runtime draws '${NOISE}'`);
  if (!("gate_threshold" in s)) throw new BundleError(`${where}: sampler.gate_threshold is missing (null for the soft gate); ${EXPORT_HINT}`);
  const buckets = s.region_buckets ?? LEGACY_REGION_BUCKETS;
  if (!Array.isArray(buckets) || !buckets.length || buckets.length > 1024 || !buckets.every((b) => typeof b === "number" && Number.isFinite(b) && b > 0 && b <= 1) ||
      buckets.some((b, i) => i > 0 && buckets[i - 1] >= b) || buckets[buckets.length - 1] !== 1) {
    throw new BundleError(`${where}: sampler.region_buckets=${JSON.stringify(buckets)}; must be increasing fractions in (0, 1] ending with 1.0; ${EXPORT_HINT}`);
  }
  if (s.codec !== undefined && s.codec !== null && typeof s.codec !== "string") {
    throw new BundleError(`${where}: sampler.codec=${JSON.stringify(s.codec)}; must be a string; ${EXPORT_HINT}`);
  }
  const [gLo, gHi] = GUIDANCE_RANGE;
  return {
    steps: number(s, "steps", where, 1, MAX_STEPS, { integer: true }),
    textGuidance: number(s, "text_guidance", where, gLo, gHi),
    imageGuidance: number(s, "image_guidance", where, gLo, gHi),
    gateThreshold: s.gate_threshold === null ? null : number(s, "gate_threshold", where, 0, 1),
    genGuidance: s.gen_guidance === undefined || s.gen_guidance === null ? null : number(s, "gen_guidance", where, gLo, gHi),
    shift: number(s, "shift", where, ...SHIFT_RANGE, { fallback: 1.0 }),
    regionBuckets: buckets,
    halo: number(s, "halo", where, 0, MAX_HALO, { integer: true, fallback: 1 }),
  };
}

async function sha256Hex(bytes) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

// ------------------------------------------------------------------------------ opening

/**
 * Read, check and fetch a bundle. -> {name, manifest, dims, precision, sparseAttn, graphs, sampler,
 * composite, fewStep ({steps} or null), weightOnly (the weight-only INT8 graphs' names), files (rel -> Uint8Array, each
 * used file, checked against its sha256), tokenizerJson,
 * timings: {fetch, verify}}. `verify: false` skips the sha256 (not the rest).
 */
export async function openBundle(source, { verify = true, onStage = null } = {}) {
  const src = typeof source === "string" || source instanceof URL ? urlSource(source) : source;
  const where = `${src.name.replace(/\/$/, "")}/${MANIFEST}`;
  const stage = (what, extra = {}) => onStage && onStage({ stage: what, ...extra });
  stage("manifest");
  const manifest = checkManifest(parseJson(await src.read(MANIFEST), where, `the bundle is corrupt: ${EXPORT_HINT}`), where);
  const files = manifest.files;
  if (!files || typeof files !== "object" || Array.isArray(files) || !Object.keys(files).length) {
    throw new BundleError(`${where}: 'files' must map file names to sha256; ${EXPORT_HINT}`);
  }
  const shared = new Set(graphFiles(manifest.graphs?.[SHARED_GRAPH]));
  for (const [rel, want] of Object.entries(files)) {
    if (typeof want !== "string") throw new BundleError(`${where}: the sha256 of ${JSON.stringify(rel)} must be a string, got ${JSON.stringify(want)}; ${EXPORT_HINT}`);
    const parts = pathParts(rel, `${where} files`, shared.has(rel));
    if (parts[0] === "..") await checkSibling(src, rel, parts, want, where);
  }
  const dims = readDims(manifest, where);
  const fewStep = readFewStep(manifest, where);
  const graphs = readGraphs(manifest, dims, where, fewStep);
  if (!(TOKENIZER in files)) throw new BundleError(`${where}: ${TOKENIZER} is not listed in 'files'; ${EXPORT_HINT}`);
  const precision = manifest.precision;
  if (!PRECISIONS.includes(precision)) {
    throw new BundleError(`${where}: precision ${JSON.stringify(precision)} must be one of ${PRECISIONS.map((x) => `'${x}'`).join(", ")}`);
  }
  const sparseAttn = manifest.sparse_attn ?? "none";
  if (!["none", "window", "region"].includes(sparseAttn)) {
    throw new BundleError(`${where}: sparse_attn ${JSON.stringify(sparseAttn)} must be 'none', 'window' or 'region'`);
  }
  if (sparseAttn === "region" && !graphs.decoder_region) {
    throw new BundleError(`${where}: sparse_attn is 'region' but the decoder_region graph is missing; ${EXPORT_HINT}`);
  }
  const sampler = readSampler(manifest, where);
  const composite = readComposite(manifest, where, EXPORT_HINT);
  const weightOnly = readWeightOnly(manifest, graphs, where);

  // every file the runtime uses, checked before use
  const bytes = {};
  const timings = { fetch: 0, verify: 0 };
  const used = new Set([TOKENIZER]);
  for (const g of Object.values(graphs)) {
    used.add(g.file);
    if (g.externalData) used.add(g.externalData);
    if (`${g.file}.data` in files) used.add(`${g.file}.data`);
  }
  const names = Object.keys(files).filter((rel) => used.has(rel));
  for (const [i, rel] of names.entries()) {
    stage("file", { file: rel, index: i, count: names.length });
    let t0 = performance.now();
    const data = await src.read(rel);
    timings.fetch += performance.now() - t0;
    if (verify) {
      t0 = performance.now();
      const have = await sha256Hex(data);
      timings.verify += performance.now() - t0;
      if (have !== files[rel]) {
        throw new BundleError(`bundle ${src.name}: ${rel} has sha256 ${have.slice(0, 16)}..., but ${MANIFEST} records ` +
          `${String(files[rel]).slice(0, 16)}...; the file was changed or damaged after export or on its way here: ${EXPORT_HINT}`);
      }
    }
    bytes[rel] = data;
  }
  let tokenizerJson;
  try {
    tokenizerJson = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes[TOKENIZER]));
  } catch (err) {
    throw new BundleError(`${TOKENIZER} of ${src.name} is not a tokenizers file (${err.message}); re-export the bundle`);
  }
  return {
    name: src.name, manifest, dims, precision, sparseAttn, graphs, sampler, composite, fewStep, weightOnly, files: bytes, tokenizerJson,
    timings,
    hasGateway: "gateway" in graphs, hasCmg: "cmg" in graphs, hasRegion: "decoder_region" in graphs,
    hasDecoderCond: "decoder_cond" in graphs,
  };
}

/** The shared text encoder `../<sibling>/<file>`: the sibling's manifest must list it as its own, same sha256. */
async function checkSibling(src, rel, parts, sha, where) {
  const rule = "only the text encoder may come from outside the bundle, as ../<sibling>/<file> of a bundle beside this one " +
    "that lists <file> as its own text encoder with the same sha256 (qk-export --text-encoder-from)";
  if (parts.length < 3 || parts[1] === "..") throw new BundleError(`${where} files: ${JSON.stringify(rel)} leaves the bundle folder; ${rule}`);
  const inner = parts.slice(2).join("/");
  const siblingManifest = `../${parts[1]}/${MANIFEST}`;
  let theirs;
  try {
    theirs = checkManifest(parseJson(await src.read(siblingManifest), siblingManifest, EXPORT_HINT), siblingManifest);
  } catch (err) {
    throw new BundleError(`${where} files: ${JSON.stringify(rel)} names the sibling bundle ${parts[1]}, which cannot be read (${err.message}); ${rule}`);
  }
  const own = graphFiles(theirs.graphs && typeof theirs.graphs === "object" ? theirs.graphs[SHARED_GRAPH] : null);
  const theirFiles = theirs.files && typeof theirs.files === "object" ? theirs.files : {};
  if (!own.includes(inner) || theirFiles[inner] !== sha) {
    throw new BundleError(`${where} files: ${JSON.stringify(rel)}: the sibling bundle ${parts[1]} does not list ${JSON.stringify(inner)} ` +
      `as its own text encoder with sha256 ${String(sha).slice(0, 16)}...; ${rule}`);
  }
}
