// Edits and generations with the web runtime in Node (onnxruntime-web's WebAssembly build), for
// tests/qk_runtime/test_web_runtime.py:
//     node runtime/web/test/run_jobs.mjs BUNDLE_DIR JOBS.json OUT_DIR
// JOBS.json: [{image: {width, height, file}, instruction, box, seed, steps, textGuidance,
// imageGuidance, sparse} | {prompt, seed, steps, guidance}], `file` raw RGB bytes. Writes
// OUT_DIR/<i>.rgb and OUT_DIR/results.json (sizes, timings, active tokens); errors go to stderr.
import fs from "node:fs";
import path from "node:path";

import * as ort from "onnxruntime-web";

import { EditSession } from "../qk.js";

const [bundleDir, jobsFile, outDir] = process.argv.slice(2);
const source = {
  name: bundleDir,
  async read(rel) {
    return new Uint8Array(fs.readFileSync(path.join(bundleDir, rel)));
  },
};
const session = await EditSession.open(source, { ort, backend: "wasm" });
const results = [];
for (const [i, job] of JSON.parse(fs.readFileSync(jobsFile, "utf8")).entries()) {
  let r;
  if (job.prompt !== undefined) {
    r = await session.generate(job.prompt, { seed: job.seed, steps: job.steps, guidance: job.guidance });
  } else {
    const rgb = new Uint8Array(fs.readFileSync(job.image.file));
    r = await session.edit({ width: job.image.width, height: job.image.height, rgb }, job.instruction, job.box, {
      seed: job.seed, steps: job.steps, textGuidance: job.textGuidance, imageGuidance: job.imageGuidance, sparse: job.sparse,
    });
  }
  fs.writeFileSync(path.join(outDir, `${i}.rgb`), r.image.rgb);
  results.push({ width: r.image.width, height: r.image.height, timings: r.timings, activeTokens: r.activeTokens, warnings: r.warnings });
}
fs.writeFileSync(path.join(outDir, "results.json"), JSON.stringify({ info: session.info(), results }));
await session.close();
