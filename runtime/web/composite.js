// Compositing an edit's decoded image with its source, as runtime/composite.py specifies it (its
// module doc has the rules), in float32 in numpy's order:
// - `gate` (bundles without the manifest entry, formats 1-3): out = pix dec(x) + (1 - pix) src;
// - `changed` (format 4): d = (|a_r - b_r| + |a_g - b_g| + |a_b - b_b|) / 6 with a = dec(x),
//   b = dec(src); w = clip((d - lo) / (hi - lo), 0, 1), `widen` 3 x 3 max filters; k = pix w;
//   out = k dec(x) + (1 - k) src.
import { BundleError } from "./errors.js";

const f32 = Math.fround;
export const KINDS = ["gate", "changed"];
export const MAX_WIDEN = 8;
export const COMPOSITE_FORMAT_VERSION = 4;
export const GATE_ONLY = Object.freeze({ kind: "gate", lo: null, hi: null, widen: 0, decodesSource: false });

/** The manifest's `composite` entry -> {kind, lo, hi, widen, decodesSource}; BundleError naming what is wrong. */
export function readComposite(manifest, where, hint) {
  if (!("composite" in manifest)) return GATE_ONLY;
  const version = manifest.format_version;
  const bad = (what) => new BundleError(`${where}: 'composite' ${what}; ${hint}`);
  if (version < COMPOSITE_FORMAT_VERSION) {
    throw new BundleError(`${where}: 'composite' needs format_version ${COMPOSITE_FORMAT_VERSION} or newer (this manifest ` +
      `has ${version}, whose runtimes ignore it); ${hint}`);
  }
  const raw = manifest.composite;
  if (!raw || typeof raw !== "object" || Array.isArray(raw) || !("kind" in raw)) {
    throw bad(`must be an object with a 'kind' (gate or changed), got ${JSON.stringify(raw)}`);
  }
  if (!KINDS.includes(raw.kind)) throw bad(`kind ${JSON.stringify(raw.kind)} is not one this runtime applies; choose one of ${KINDS}`);
  const allowed = raw.kind === "gate" ? ["kind"] : ["kind", "lo", "hi", "widen"];
  const unknown = Object.keys(raw).filter((k) => !allowed.includes(k)).sort();
  if (unknown.length) throw bad(`has unknown keys ${JSON.stringify(unknown)} for kind '${raw.kind}' (allowed: ${JSON.stringify(allowed)})`);
  if (raw.kind === "gate") return GATE_ONLY;
  const missing = ["hi", "lo", "widen"].filter((k) => !(k in raw));
  if (missing.length) throw bad(`kind 'changed' needs ${JSON.stringify(missing)}`);
  for (const name of ["lo", "hi"]) {
    if (typeof raw[name] !== "number" || !Number.isFinite(raw[name])) throw bad(`${name}=${JSON.stringify(raw[name])}; must be a finite number in [0, 1]`);
  }
  if (!(0 <= raw.lo && raw.lo < raw.hi && raw.hi <= 1)) throw bad(`lo=${raw.lo}, hi=${raw.hi}; need 0 <= lo < hi <= 1`);
  if (!Number.isInteger(raw.widen) || raw.widen < 0 || raw.widen > MAX_WIDEN) {
    throw bad(`widen=${JSON.stringify(raw.widen)}; must be an integer from 0 to ${MAX_WIDEN}`);
  }
  return Object.freeze({ kind: "changed", lo: raw.lo, hi: raw.hi, widen: raw.widen, decodesSource: true });
}

/** (3, S, S) dec(x) and dec(src) -> (S, S) float32 weight w in [0, 1] (kind `changed`). */
export function changeWeight(a, b, S, c) {
  const ss = S * S, lo = f32(c.lo), range = f32(c.hi - c.lo);
  let w = new Float32Array(ss);
  for (let k = 0; k < ss; k++) {
    let d = f32(Math.abs(f32(a[k] - b[k])) + Math.abs(f32(a[ss + k] - b[ss + k])));
    d = f32(d + Math.abs(f32(a[2 * ss + k] - b[2 * ss + k])));
    d = f32(d / 6);
    const v = f32(f32(d - lo) / range);
    w[k] = Math.min(Math.max(v, 0), 1);
  }
  const tmp = new Float32Array(ss);
  for (let pass = 0; pass < c.widen; pass++) { // rows, then columns; pixels outside the image do not count
    for (let y = 0; y < S; y++) {
      for (let x = 0; x < S; x++) {
        let m = w[y * S + x];
        if (y > 0) m = Math.max(m, w[(y - 1) * S + x]);
        if (y + 1 < S) m = Math.max(m, w[(y + 1) * S + x]);
        tmp[y * S + x] = m;
      }
    }
    const next = new Float32Array(ss);
    for (let y = 0; y < S; y++) {
      for (let x = 0; x < S; x++) {
        const k = y * S + x;
        let m = tmp[k];
        if (x > 0) m = Math.max(m, tmp[k - 1]);
        if (x + 1 < S) m = Math.max(m, tmp[k + 1]);
        next[k] = m;
      }
    }
    w = next;
  }
  return w;
}

/**
 * The edit's output (3, S, S) in [-1, 1], in place in `decoded`: from the decoded image, the source
 * image (3, S, S), the gate at pixel resolution pix (S, S) and, for kind `changed`, the decoded source.
 */
export function composite(decoded, sourcePx, pix, S, c, decodedSource = null) {
  const ss = S * S;
  let k = pix;
  if (c.kind === "changed") {
    if (!decodedSource) throw new Error("composite kind 'changed' needs the image decoder's output for the source latent");
    const w = changeWeight(decoded, decodedSource, S, c);
    k = new Float32Array(ss);
    for (let i = 0; i < ss; i++) k[i] = f32(pix[i] * w[i]);
  }
  for (let ch = 0; ch < 3; ch++) {
    for (let i = 0; i < ss; i++) {
      const kv = k[i];
      decoded[ch * ss + i] = f32(kv * decoded[ch * ss + i]) + f32(f32(1 - kv) * sourcePx[ch * ss + i]);
    }
  }
  return decoded;
}
