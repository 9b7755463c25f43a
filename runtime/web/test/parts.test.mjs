// The web runtime's parts against the Python runtime's, on cases tests/qk_runtime/test_web_runtime.py
// writes with Python (tokenizers, numpy, Pillow) into the folder named by QK_WEB_CASES:
// tokenizer ids, noise and sigma bits (the few-step schedule's too), Pillow's bilinear resize, guidance + Euler step, compositing,
// the region decoder's token choice, and which texts and boxes are refused. Run by that test:
//     QK_WEB_CASES=DIR node --test runtime/web/test/
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";

import { changeWeight, composite } from "../composite.js";
import { InputError } from "../errors.js";
import { resizeBilinear } from "../image.js";
import { checkBox, checkText, scaleBox } from "../inputs.js";
import { portableNormal } from "../noise.js";
import { FlowMatchEulerScheduler, fewStepSigmas, guidedVelocity } from "../sampler.js";
import { activeTokenIndices } from "../session.js";
import { Tokenizer } from "../tokenizer.js";

const DIR = process.env.QK_WEB_CASES;
const skip = DIR ? false : "QK_WEB_CASES is not set: tests/qk_runtime/test_web_runtime.py writes the cases and runs this file";
const cases = DIR ? JSON.parse(fs.readFileSync(path.join(DIR, "cases.json"), "utf8")) : {};

function f32(name) { // a little-endian float32 file written by numpy
  const b = fs.readFileSync(path.join(DIR, name));
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
}

function u8(name) {
  return new Uint8Array(fs.readFileSync(path.join(DIR, name)));
}

function firstDifference(a, b) {
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length), y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return i;
  return -1;
}

function assertSameBits(got, want, what) {
  assert.equal(got.length, want.length, `${what}: ${got.length} values, Python has ${want.length}`);
  const i = firstDifference(got, want);
  assert.equal(i, -1, `${what}: value ${i} is ${got[i]} here, ${want[i]} in Python`);
}

test("tokenizer ids, masks and truncation equal the tokenizers library's", { skip }, () => {
  for (const t of cases.tokenizers) {
    const tok = new Tokenizer(JSON.parse(fs.readFileSync(path.join(DIR, t.file), "utf8")), t.max_length, t.file);
    assert.equal(tok.kind, t.kind);
    t.texts.forEach((text, i) => {
      const e = tok.encode(text), want = t.expected[i];
      assert.deepEqual(e.ids, want.ids, `${t.file}: ids differ for ${JSON.stringify(text)}`);
      assert.deepEqual(e.attentionMask, want.mask, `${t.file}: attention mask differs for ${JSON.stringify(text)}`);
      assert.equal(e.truncated, want.truncated, `${t.file}: truncation flag differs for ${JSON.stringify(text)}`);
    });
  }
});

test("portable noise is bit-exact on every seed", { skip }, () => {
  const want = f32(cases.noise.file);
  let at = 0;
  for (const [seed, count] of cases.noise.draws) {
    assertSameBits(portableNormal(BigInt(seed), count), want.subarray(at, at + count), `noise seed ${seed}`);
    at += count;
  }
  assert.equal(at, want.length);
});

test("sigmas are bit-exact", { skip }, () => {
  for (const c of cases.sigmas) {
    const s = new FlowMatchEulerScheduler(1000, c.shift);
    s.setTimesteps(c.steps);
    assertSameBits(s.sigmas, f32(c.file), `sigmas steps=${c.steps} shift=${c.shift}`);
  }
});

test("few-step sigmas and step sizes are bit-exact", { skip }, () => {
  for (const c of cases.few_step) {
    const s = new FlowMatchEulerScheduler(1000, 3.0); // the shift does not touch a given schedule
    s.setSigmas(fewStepSigmas(c.steps));
    assertSameBits(s.sigmas, f32(c.file), `few-step sigmas steps=${c.steps}`);
    const sizes = new Float32Array(c.steps);
    for (let i = 0; i < c.steps; i++, s.index++) sizes[i] = s.stepSize;
    assertSameBits(sizes, f32(c.step_sizes), `few-step step sizes steps=${c.steps}`);
  }
  assert.throws(() => new FlowMatchEulerScheduler().setSigmas([1, 0.5]), /decreasing/);
  assert.throws(() => fewStepSigmas(0), RangeError);
});

test("guidance and the Euler step are bit-exact float32", { skip }, () => {
  for (const c of cases.steps) {
    const v = f32(c.v), n = v.length / c.nb;
    const s = new FlowMatchEulerScheduler(1000, 1.0);
    s.setTimesteps(c.steps);
    s.index = c.index;
    const x = f32(c.x).slice();
    s.step(guidedVelocity(v, c.nb, n, c.s_txt, c.s_img, new Float32Array(n)), x);
    assertSameBits(x, f32(c.out), `step nb=${c.nb} s_txt=${c.s_txt} s_img=${c.s_img}`);
  }
});

test("resize equals Pillow's bilinear byte for byte", { skip }, () => {
  for (const c of cases.resize) {
    const out = resizeBilinear({ width: c.src[0], height: c.src[1], rgb: u8(c.in) }, c.dst[0], c.dst[1]);
    assert.deepEqual(Buffer.from(out.rgb), Buffer.from(u8(c.out)), `resize ${c.src} -> ${c.dst}`);
  }
});

test("compositing equals composite.py bit for bit", { skip }, () => {
  for (const c of cases.composite) {
    const S = c.side;
    if (c.weight) assertSameBits(changeWeight(f32(c.decoded), f32(c.decoded_source), S, c.composite), f32(c.weight), `change weight ${JSON.stringify(c.composite)}`);
    const out = composite(f32(c.decoded).slice(), f32(c.source), f32(c.pix), S, c.composite, f32(c.decoded_source));
    assertSameBits(out, f32(c.out), `composite ${JSON.stringify(c.composite)}`);
  }
});

test("the region decoder's tokens equal active_token_indices", { skip }, () => {
  for (const c of cases.active) {
    assert.deepEqual(activeTokenIndices(c.active, c.grid, c.halo, c.buckets), c.expected, `active ${JSON.stringify(c.active)}`);
  }
});

test("texts and boxes are refused as inputs.py refuses them", { skip }, () => {
  for (const c of cases.texts) {
    let refused = false;
    try {
      checkText(c.text, "instruction");
    } catch (err) {
      assert.ok(err instanceof InputError, `${JSON.stringify(c.text)}: ${err}`);
      refused = true;
    }
    assert.equal(refused, c.refused, `${JSON.stringify(c.text)}: refused here ${refused}, in Python ${c.refused}`);
  }
  for (const c of cases.boxes) {
    let got;
    try {
      got = scaleBox(checkBox(c.box, c.width, c.height), c.width, c.height, c.side);
    } catch (err) {
      assert.ok(err instanceof InputError, `${JSON.stringify(c.box)}: ${err}`);
      got = null;
    }
    assert.deepEqual(got, c.expected, `box ${JSON.stringify(c.box)} in ${c.width}x${c.height}`);
  }
});
