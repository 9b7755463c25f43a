// The portable initial noise of runtime/noise.py, bit for bit (its docstring is the specification):
// a SplitMix64 stream (uint64 arithmetic in BigInt, masked to 64 bits), one uniform double per draw
// u = (z >> 11) * 2^-53, Box-Muller on consecutive pairs in double precision
// (r = sqrt(-2 log1p(-u1)), z0 = r cos(2 pi u2), z1 = r sin(2 pi u2)), rounded to float32, filled
// in C order; an odd count drops the last z1.
//
// Math.log1p / cos / sin are V8's fdlibm ports, not the C library's; a last-ulp difference in the
// double would change the float32 only where it straddles a float32 rounding boundary (about one
// value in 2^29). tests/qk_runtime/test_web_runtime.py compares against numpy on many seeds.
import { InputError } from "./errors.js";

const MASK = (1n << 64n) - 1n;
const GOLDEN = 0x9e3779b97f4a7c15n;
const M1 = 0xbf58476d1ce4e5b9n;
const M2 = 0x94d049bb133111ebn;
const TWO_PI = 2 * Math.PI; // 2.0 * np.pi, in double
const SCALE = 2 ** -53;
export const MAX_SEED = MASK; // 2^64 - 1

function mix(z) {
  z = ((z ^ (z >> 30n)) * M1) & MASK;
  z = ((z ^ (z >> 27n)) * M2) & MASK;
  return z ^ (z >> 31n);
}

/** A seed as a BigInt in 0 .. 2^64 - 1: a safe non-negative integer Number, a BigInt or a decimal string. */
export function checkSeed(seed) {
  let v = null;
  if (typeof seed === "bigint") v = seed;
  else if (typeof seed === "number" && Number.isSafeInteger(seed)) v = BigInt(seed);
  else if (typeof seed === "string" && /^\s*\d+\s*$/.test(seed)) v = BigInt(seed.trim());
  if (v === null || v < 0n || v > MAX_SEED) {
    throw new InputError(`seed=${String(seed)}; must be an integer from 0 to 2**64 - 1`);
  }
  return v;
}

/** The first `count` SplitMix64 outputs for `seed`, as a BigUint64Array. */
export function splitmix64(seed, count) {
  let state = checkSeed(seed);
  const out = new BigUint64Array(count);
  for (let i = 0; i < count; i++) {
    state = (state + GOLDEN) & MASK;
    out[i] = mix(state);
  }
  return out;
}

/** Standard normal float32 noise, `count` values, a pure function of `seed` (runtime/noise.py portable_normal). */
export function portableNormal(seed, count) {
  const pairs = Math.ceil(count / 2);
  const z = splitmix64(seed, 2 * pairs);
  const out = new Float32Array(count);
  for (let k = 0; k < pairs; k++) {
    const u1 = Number(z[2 * k] >> 11n) * SCALE;
    const u2 = Number(z[2 * k + 1] >> 11n) * SCALE;
    const r = Math.sqrt(-2.0 * Math.log1p(-u1));
    const theta = TWO_PI * u2;
    out[2 * k] = r * Math.cos(theta); // Float32Array stores round to nearest, as numpy's astype
    if (2 * k + 1 < count) out[2 * k + 1] = r * Math.sin(theta);
  }
  return out;
}
