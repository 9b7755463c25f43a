// A module Web Worker that holds one EditSession, so that a page never freezes while a bundle
// loads or an edit runs. Messages in: {id, op: "open" | "edit" | "generate" | "close", args};
// out: {id, progress} while opening, then {id, ok: true, result} or {id, ok: false, error: {name,
// message}}. Results carry the image as PNG bytes (png.js) and the timings, with `encode` (the PNG)
// beside the runtime's own stages. client.js is the page's side.
import { EditSession } from "./session.js";
import { encodePng } from "./png.js";

let session = null;

function gateRows(gate, grid) {
  if (!gate) return null;
  return Array.from({ length: grid }, (_, y) => Array.from(gate.subarray(y * grid, (y + 1) * grid), (v) => Math.round(v * 1e4) / 1e4));
}

async function answer(result) {
  const t0 = performance.now();
  const png = await encodePng(result.image);
  const timings = { ...result.timings, encode: performance.now() - t0 };
  return {
    png: png.buffer, width: result.image.width, height: result.image.height, timings, gate: gateRows(result.gate, result.grid),
    activeTokens: result.activeTokens, backend: result.backend, seed: result.seed, steps: result.steps, warnings: result.warnings,
  };
}

const OPS = {
  async open({ bundleUrl, ortUrl, backend, threads, maxPixels, verify }, progress) {
    if (session) await session.close();
    session = null;
    session = await EditSession.open(bundleUrl, { backend, threads, ortUrl, maxPixels, verify, onStage: progress });
    return session.info();
  },
  async edit({ image, instruction, box, steps, seed }) {
    if (!session) throw new Error("no bundle is loaded in this browser yet");
    return answer(await session.edit(image, instruction, box, { steps, seed }));
  },
  async generate({ prompt, steps, seed }) {
    if (!session) throw new Error("no bundle is loaded in this browser yet");
    return answer(await session.generate(prompt, { steps, seed }));
  },
  async close() {
    if (session) await session.close();
    session = null;
    return null;
  },
};

self.onmessage = async (event) => {
  const { id, op, args } = event.data;
  try {
    if (!(op in OPS)) throw new Error(`unknown operation ${op}`);
    const result = await OPS[op](args ?? {}, (progress) => self.postMessage({ id, progress }));
    self.postMessage({ id, ok: true, result }, result && result.png ? [result.png] : []);
  } catch (err) {
    self.postMessage({ id, ok: false, error: { name: err?.name ?? "Error", message: err?.message ?? String(err) } });
  }
};
