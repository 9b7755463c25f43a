// The qk-serve editor page: pick a source, drag a box, type an instruction, see the result,
// its latency per stage and the gate; "Use as source" pushes the result onto the history,
// "Undo" pops it. Plain browser APIs, no libraries. The page's state is in `body[data-state]`
// (loading | ready | busy | done | error) and the last edit's figures in `window.qkLast`.
//
// Two modes: "on the server" posts to /v1/edit and /v1/generate; "in this browser" loads the
// bundle from the server once (each file it uses checked against the manifest's sha256) into the
// JavaScript runtime (/web/, onnxruntime-web in a Web Worker), then edits and generates locally,
// with no request to the server. Its modules are imported only when that mode is chosen.
// `window.qkPage` drives the in-browser runtime from a script (benchmarks/browser_parity.py).
"use strict";

const $ = (id) => document.getElementById(id);
const VIEW = 384; // longest side of the source view, CSS pixels

const state = {
  history: [],   // applied sources, oldest first: {blob, url, width, height, label}; the last is current
  image: null,   // HTMLImageElement of the current source
  box: null,     // [x0, y0, x1, y1] in source pixels, x1 and y1 exclusive
  drag: null,    // [x, y] source pixel where the drag started
  scale: 1,      // canvas pixels per source pixel
  result: null,  // {blob, url, label} of the last edit
  limits: null,
  info: null,    // /healthz
  mode: "server",
  local: null,   // {client, info}: the bundle loaded in this browser
  sample: null,  // Promise of the sample scene {meta, blob}, fetched once
};

// ----------------------------------------------------------------------------- status

function setState(name, message, isError) {
  document.body.dataset.state = name;
  const status = $("status");
  status.textContent = message || "";
  status.className = isError ? "error" : "";
  const busy = name === "busy" || name === "loading";
  for (const id of ["edit", "generate", "sample", "undo", "apply", "clear-box", "load-bundle", "web-backend",
    "mode-server", "mode-browser"]) $(id).disabled = busy;
  $("file").disabled = busy;
  if (!busy && state.info && !state.info.web?.available) {
    $("mode-browser").disabled = true;
    $("load-bundle").disabled = true;
  }
  if (!busy) {
    $("edit").disabled = !state.image;
    $("undo").disabled = state.history.length < 2;
    $("apply").disabled = !state.result;
  }
}

async function post(path, form) {
  const response = await fetch(path, { method: "POST", body: form });
  let body = null;
  try { body = await response.json(); } catch (e) { /* not JSON: reported below */ }
  if (!response.ok) {
    const detail = body && body.detail ? body.detail : response.statusText;
    const retry = response.headers.get("Retry-After");
    throw new Error(`${response.status}: ${detail}` + (retry ? ` (retry after ${retry} s)` : ""));
  }
  return body;
}

function pngBlob(base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type: "image/png" });
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser cannot display this file as an image"));
    img.src = url;
  });
}

// ----------------------------------------------------------------------------- the source

async function showCurrent() {
  const current = state.history[state.history.length - 1];
  state.image = await loadImage(current.url);
  const w = state.image.naturalWidth, h = state.image.naturalHeight;
  const longest = Math.max(w, h);
  state.scale = longest <= VIEW ? Math.max(1, Math.floor(VIEW / longest)) : VIEW / longest;
  const canvas = $("source");
  canvas.width = Math.round(w * state.scale);
  canvas.height = Math.round(h * state.scale);
  $("result").style.width = canvas.width + "px";
  $("result").style.height = canvas.height + "px";
  $("source-size").textContent = `(${w}x${h})`;
  if (state.box && (state.box[2] > w || state.box[3] > h)) state.box = null;
  draw();
  renderHistory();
}

async function setSource(blob, label, { reset = true, box = null } = {}) {
  if (state.limits && blob.size > state.limits.max_upload_bytes) {
    throw new Error(`this file is ${blob.size} bytes; the server takes at most ${state.limits.max_upload_bytes}`);
  }
  if (state.mode === "browser") { // format and size from the header, before the browser decodes it
    const { inspectImage } = await import("/web/image.js");
    inspectImage(new Uint8Array(await blob.arrayBuffer()), { maxPixels: state.limits.max_pixels, what: label });
  }
  const entry = { blob, url: URL.createObjectURL(blob), label };
  if (reset) {
    for (const old of state.history) URL.revokeObjectURL(old.url);
    state.history = [];
    state.box = box;
  }
  state.history.push(entry);
  await showCurrent();
}

function draw() {
  const canvas = $("source"), ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!state.image) return;
  ctx.drawImage(state.image, 0, 0, canvas.width, canvas.height);
  const b = state.box;
  $("box-text").textContent = b ? b.join(",") : "none (drag on the source)";
  if (!b) return;
  const s = state.scale;
  ctx.fillStyle = "rgba(0, 0, 0, 0.35)"; // dim what lies outside the box
  ctx.beginPath();
  ctx.rect(0, 0, canvas.width, canvas.height);
  ctx.rect(b[0] * s, b[1] * s, (b[2] - b[0]) * s, (b[3] - b[1]) * s);
  ctx.fill("evenodd");
  ctx.strokeStyle = "#ffeb3b";
  ctx.lineWidth = 2;
  ctx.strokeRect(b[0] * s + 1, b[1] * s + 1, (b[2] - b[0]) * s - 2, (b[3] - b[1]) * s - 2);
}

function pixelAt(event) {
  const canvas = $("source"), rect = canvas.getBoundingClientRect();
  const w = state.image.naturalWidth, h = state.image.naturalHeight;
  const x = Math.floor(((event.clientX - rect.left) * canvas.width) / rect.width / state.scale);
  const y = Math.floor(((event.clientY - rect.top) * canvas.height) / rect.height / state.scale);
  return [Math.min(Math.max(x, 0), w - 1), Math.min(Math.max(y, 0), h - 1)];
}

function boxFrom(a, b) { // both corner pixels inside the box
  return [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]) + 1, Math.max(a[1], b[1]) + 1];
}

function onPointerDown(event) {
  if (!state.image || document.body.dataset.state === "busy") return;
  $("source").setPointerCapture(event.pointerId);
  state.drag = pixelAt(event);
  state.box = boxFrom(state.drag, state.drag);
  draw();
}

function onPointerMove(event) {
  if (!state.drag) return;
  state.box = boxFrom(state.drag, pixelAt(event));
  draw();
}

function onPointerUp(event) {
  if (!state.drag) return;
  state.box = boxFrom(state.drag, pixelAt(event));
  state.drag = null;
  draw();
}

// ----------------------------------------------------------------------------- results

const STAGES = [
  ["queue_wait", "queue wait"], ["decode", "decode upload"], ["preprocess", "preprocess"],
  ["image_encoder", "image encoder"], ["text_encoder", "text encoder"], ["gateway", "query gateway"],
  ["cmg", "cross-modal gate"], ["decoder_cond", "decoder conditioning"], ["decoder", "decoder"], ["image_decoder", "image decoder"],
  ["source_decoder", "source decoder"], ["postprocess", "postprocess"], ["total", "runtime total"],
  ["encode", "encode PNG"], ["server_total", "server total"],
];

function showTimings(t, roundTripMs) {
  const rows = [];
  for (const [key, name] of STAGES) {
    if (!(key in t)) continue;
    const label = key === "decoder" && t.decoder_steps ? `decoder (${t.decoder_steps.length} steps)` : name;
    rows.push([label, t[key], key === "total" || key === "server_total"]);
  }
  rows.push(["round trip (this page)", roundTripMs, true]);
  if ("total" in t) {
    const extra = roundTripMs - t.total;
    const what = state.mode === "browser" ? "worker + page overhead" : "HTTP + page overhead";
    rows.push([`${what} (${((100 * extra) / t.total).toFixed(1)} %)`, extra, false]);
  }
  const body = $("timings").tBodies[0];
  body.replaceChildren(...rows.map(([label, ms, sum]) => {
    const tr = document.createElement("tr");
    if (sum) tr.className = "sum";
    for (const text of [label, ms.toFixed(1)]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    }
    return tr;
  }));
}

function showGate(gate) {
  const canvas = $("gate"), ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!gate) return;
  const n = gate.length, cell = canvas.width / n;
  for (let y = 0; y < n; y++) {
    for (let x = 0; x < n; x++) {
      const v = Math.round(255 * gate[y][x]);
      ctx.fillStyle = `rgb(${v},${v},${v})`;
      ctx.fillRect(x * cell, y * cell, cell, cell);
    }
  }
}

function renderHistory() {
  const list = $("history");
  list.replaceChildren(...state.history.map((entry, i) => {
    const li = document.createElement("li");
    if (i === state.history.length - 1) li.className = "current";
    const img = document.createElement("img");
    img.src = entry.url;
    img.alt = entry.label;
    const caption = document.createElement("div");
    caption.textContent = `${i}. ${entry.label}`;
    li.append(img, caption);
    return li;
  }));
}

// ----------------------------------------------------------------------------- actions

function optionalNumber(id) {
  const value = $(id).value.trim();
  return value === "" ? null : value;
}

// the form's steps and seed for the in-browser runtime, checked as the server checks them
function localSettings() {
  const steps = optionalNumber("steps"), seed = optionalNumber("seed");
  const out = { seed: seed === null ? "0" : seed };
  if (steps !== null) {
    const n = Number(steps);
    if (!Number.isInteger(n) || n < 1 || n > state.limits.max_steps) {
      throw new Error(`steps ${steps}: must be a whole number from 1 to ${state.limits.max_steps}`);
    }
    out.steps = n;
  }
  if (!/^\d+$/.test(out.seed)) throw new Error(`seed ${out.seed}: must be a whole number from 0 to 2**64 - 1`);
  return out;
}

function localClient() {
  if (!state.local) throw new Error("the bundle is not loaded in this browser; press 'Load the bundle'");
  return state.local.client;
}

async function showResult(blob, timings, gate, roundTrip0, extra) {
  const url = URL.createObjectURL(blob);
  const img = $("result");
  img.src = url;
  await img.decode();
  const roundTripMs = performance.now() - roundTrip0;
  if (state.result) URL.revokeObjectURL(state.result.url);
  state.result = { blob, url, label: extra.instruction + (state.box ? ` [${state.box.join(",")}]` : "") };
  showTimings(timings, roundTripMs);
  showGate(gate);
  window.qkLast = { roundTripMs, timings, box: state.box, width: extra.width, height: extra.height, mode: state.mode,
    backend: extra.backend };
  return roundTripMs;
}

async function runEdit() {
  const instruction = $("instruction").value;
  if (!instruction.trim()) throw new Error("type an instruction first, e.g. 'make the red circle blue'");
  const current = state.history[state.history.length - 1];
  if (state.mode === "browser") {
    const client = localClient();
    const settings = localSettings();
    const t0 = performance.now();
    const r = await client.edit({ image: await current.blob.arrayBuffer(), instruction, box: state.box, ...settings });
    const rt = await showResult(new Blob([r.png], { type: "image/png" }), r.timings, r.gate, t0,
      { instruction, width: r.width, height: r.height, backend: r.backend });
    const warn = r.warnings.length ? ` (${r.warnings.join("; ")})` : "";
    return `edited in this browser in ${r.timings.total.toFixed(0)} ms (round trip ${rt.toFixed(0)} ms) on ${r.backend}${warn}`;
  }
  const form = new FormData();
  form.append("image", current.blob, "source.png");
  form.append("instruction", instruction);
  if (state.box) form.append("box", state.box.join(","));
  const steps = optionalNumber("steps"), seed = optionalNumber("seed");
  if (steps !== null) form.append("steps", steps);
  if (seed !== null) form.append("seed", seed);
  const t0 = performance.now();
  const answer = await post("/v1/edit?format=json", form);
  const blob = pngBlob(answer.image_png_base64);
  const url = URL.createObjectURL(blob);
  const img = $("result");
  img.src = url;
  await img.decode();
  const roundTripMs = performance.now() - t0;
  if (state.result) URL.revokeObjectURL(state.result.url);
  state.result = { blob, url, label: instruction + (state.box ? ` [${state.box.join(",")}]` : "") };
  showTimings(answer.timings_ms, roundTripMs);
  showGate(answer.gate);
  window.qkLast = { roundTripMs, timings: answer.timings_ms, box: state.box, width: answer.width, height: answer.height };
  return `edited in ${answer.timings_ms.total.toFixed(0)} ms (round trip ${roundTripMs.toFixed(0)} ms) on ${answer.backend}`;
}

async function runGenerate() {
  const prompt = $("prompt").value;
  if (!prompt.trim()) throw new Error("type a prompt first, e.g. 'a large red circle at the top left'");
  if (state.mode === "browser") {
    const r = await localClient().generate({ prompt, ...localSettings() });
    await setSource(new Blob([r.png], { type: "image/png" }), `generated: ${prompt}`);
    window.qkLast = { timings: r.timings, width: r.width, height: r.height, mode: state.mode, backend: r.backend };
    return `generated in this browser in ${r.timings.total.toFixed(0)} ms on ${r.backend}`;
  }
  const form = new FormData();
  form.append("prompt", prompt);
  const steps = optionalNumber("steps"), seed = optionalNumber("seed");
  if (steps !== null) form.append("steps", steps);
  if (seed !== null) form.append("seed", seed);
  const answer = await post("/v1/generate?format=json", form);
  await setSource(pngBlob(answer.image_png_base64), `generated: ${prompt}`);
  return `generated in ${answer.timings_ms.total.toFixed(0)} ms`;
}

function fetchSample() { // once: in-browser mode keeps working with the network gone
  if (!state.sample) {
    state.sample = Promise.all([
      fetch("/static/sample.json").then((r) => r.json()),
      fetch("/static/sample.png").then((r) => r.blob()),
    ]).catch((err) => {
      state.sample = null;
      throw err;
    });
  }
  return state.sample;
}

async function runSample() {
  const [meta, png] = await fetchSample();
  await setSource(png, "sample scene", { box: meta.box });
  $("instruction").value = meta.instruction;
  return `sample loaded with a suggested instruction and box: ${meta.instruction}, ${meta.box.join(",")}`;
}

async function runUpload() {
  const file = $("file").files[0];
  if (!file) return "";
  await setSource(file, file.name);
  $("file").value = "";
  return `loaded ${file.name}`;
}

async function runApply() {
  if (!state.result) return "";
  await setSource(state.result.blob, state.result.label, { reset: false });
  return "the result is now the source; Undo goes back";
}

async function runUndo() {
  if (state.history.length < 2) return "";
  URL.revokeObjectURL(state.history.pop().url);
  await showCurrent();
  return "undone";
}

// ----------------------------------------------------------------------------- in this browser

function describeLocal(info) {
  const o = info.openTimings, s = (ms) => (ms / 1000).toFixed(1);
  const precision = info.precision + (info.weightOnly?.includes("decoder") ? " weight-only" : ""); // qk-export --weight-only
  return `in this browser: ${info.backend} (${info.backendReason}); ${info.threadsWhy}; ${precision} bundle loaded in ` +
    `${s(o.total)} s (fetch ${s(o.fetch)} s, sha256 ${s(o.verify)} s, sessions ${s(o.sessions)} s)`;
}

async function loadBundle() {
  const web = state.info.web;
  if (!web.available) throw new Error(`the in-browser mode is off on this server: ${web.reason}`);
  if (state.local) {
    state.local.client.terminate();
    state.local = null;
  }
  $("runtime-info").textContent = "";
  $("runtime-info").className = "";
  const { RuntimeClient } = await import("/web/client.js");
  const client = new RuntimeClient(web.worker_url);
  const progress = (p) => {
    if (p.stage === "manifest") setState("loading", "fetching the bundle's manifest…");
    else if (p.stage === "file") setState("loading", `fetching and checking ${p.file} (${p.index + 1} of ${p.count})…`);
    else if (p.stage === "sessions") setState("loading", `starting onnxruntime-web (${p.backend})…`);
  };
  let info;
  try {
    const [opened] = await Promise.all([
      client.open({ bundleUrl: web.bundle_url, ortUrl: web.ort_url, backend: $("web-backend").value,
        maxPixels: state.limits.max_pixels }, progress),
      fetchSample(),
    ]);
    info = opened;
  } catch (err) {
    client.terminate();
    $("runtime-info").textContent = "in this browser: not loaded";
    $("runtime-info").className = "error";
    throw new Error(`the bundle could not be loaded in this browser: ${err.message}`);
  }
  state.local = { client, info };
  $("runtime-info").textContent = describeLocal(info);
  return `bundle loaded; edits and generations now run in this browser (${info.backend})`;
}

async function runMode() {
  const mode = $("mode-browser").checked ? "browser" : "server";
  state.mode = mode;
  if (mode === "server") return "edits and generations run on the server";
  if (state.local) return describeLocal(state.local.info);
  return loadBundle();
}

function action(fn) {
  return async () => {
    setState("busy", "working…");
    try {
      const message = await fn();
      setState(fn === runEdit ? "done" : "ready", message);
    } catch (err) {
      setState("error", err.message, true);
    }
  };
}

// for scripts (benchmarks/browser_parity.py): the mode's runtime on PNG bytes, without the form
window.qkPage = {
  async edit({ png, instruction, box = null, seed = "0", steps = null }) {
    const t0 = performance.now();
    const r = await localClient().edit({ image: png, instruction, box, seed: String(seed), ...(steps ? { steps } : {}) });
    return { ...r, png: Array.from(new Uint8Array(r.png)), roundTripMs: performance.now() - t0 };
  },
  async generate({ prompt, seed = "0", steps = null }) {
    const t0 = performance.now();
    const r = await localClient().generate({ prompt, seed: String(seed), ...(steps ? { steps } : {}) });
    return { ...r, png: Array.from(new Uint8Array(r.png)), roundTripMs: performance.now() - t0 };
  },
  info: () => state.local && state.local.info,
};

async function init() {
  const canvas = $("source");
  canvas.addEventListener("pointerdown", onPointerDown);
  canvas.addEventListener("pointermove", onPointerMove);
  canvas.addEventListener("pointerup", onPointerUp);
  $("clear-box").addEventListener("click", () => { state.box = null; draw(); });
  $("edit").addEventListener("click", action(runEdit));
  $("generate").addEventListener("click", action(runGenerate));
  $("sample").addEventListener("click", action(runSample));
  $("file").addEventListener("change", action(runUpload));
  $("apply").addEventListener("click", action(runApply));
  $("undo").addEventListener("click", action(runUndo));
  $("mode-server").checked = true; // a reload starts on the server, whatever the browser restored
  $("mode-server").addEventListener("change", action(runMode));
  $("mode-browser").addEventListener("change", action(runMode));
  $("load-bundle").addEventListener("click", action(async () => {
    $("mode-browser").checked = true;
    state.mode = "browser";
    return loadBundle();
  }));
  $("web-backend").addEventListener("change", action(async () => (state.mode === "browser" ? loadBundle() : "")));
  try {
    const info = await (await fetch("/healthz")).json();
    state.info = info;
    state.limits = info.limits;
    if (!info.web?.available) $("runtime-info").textContent = `in this browser: off (${info.web ? info.web.reason : "not offered"})`;
    $("steps").max = info.limits.max_steps;
    $("steps").placeholder = `default ${info.default_steps}`;
    $("server-info").textContent =
      `bundle ${info.bundle} (${info.precision}, ${info.image_size} px) on ${info.backend}; ` +
      `queue ${info.limits.max_queue}, uploads up to ${(info.limits.max_upload_bytes / 1048576).toFixed(1)} MiB`;
    setState("ready", "load the sample scene, upload an image or generate one");
  } catch (err) {
    setState("error", `cannot reach the server: ${err.message}`, true);
  }
}

init();
