// Flow-matching Euler sampling as runtime/sampler.py does it, dtype for dtype: the training sigmas
// in float32, the inference schedule in float64 (numpy.linspace: i * step + start, the endpoint
// exact), rounded to float32 with a final 0; a step is x + (sigma_next - sigma) * v in float32.
// Math.fround after every operation gives numpy's float32 arithmetic (a float32 +, -, * or /
// computed in double and rounded once is the correctly rounded float32 result).
const f32 = Math.fround;

export class FlowMatchEulerScheduler {
  constructor(numTrainTimesteps = 1000, shift = 1.0) {
    if (!(numTrainTimesteps >= 1)) throw new RangeError(`numTrainTimesteps must be >= 1, got ${numTrainTimesteps}`);
    if (!(shift > 0)) throw new RangeError(`shift must be > 0, got ${shift}`);
    this.T = numTrainTimesteps;
    this.shift = shift;
    // numpy casts the Python float shift (and shift - 1) to float32 in these float32 operations
    const sh = f32(shift), sh1 = f32(shift - 1), T = f32(numTrainTimesteps);
    const shifted = (s) => f32(f32(sh * s) / f32(1 + f32(sh1 * s)));
    this.sigmaMax = shifted(f32(T / T));
    this.sigmaMin = shifted(f32(1 / T));
    this.sigmas = new Float32Array(0);
    this.steps = 0;
    this.index = 0;
  }

  setTimesteps(steps) {
    if (!Number.isInteger(steps) || steps < 1) throw new RangeError(`steps must be an integer >= 1, got ${steps}`);
    const T = this.T, start = this.sigmaMax * T, stop = this.sigmaMin * T, div = steps - 1;
    const step = div > 0 ? (stop - start) / div : 0;
    const sigmas = new Float32Array(steps + 1); // the last stays 0
    for (let i = 0; i < steps; i++) {
      const t = div > 0 ? (i === div ? stop : i * step + start) : start;
      let s = t / T;
      s = (this.shift * s) / (1 + (this.shift - 1) * s);
      sigmas[i] = s;
    }
    this.sigmas = sigmas;
    this.steps = steps;
    this.index = 0;
  }

  /**
   * Run the given schedule as is (no shift; sampler.py set_sigmas): steps + 1 values, decreasing,
   * ending with 0; e.g. fewStepSigmas(n).
   */
  setSigmas(sigmas) {
    const s = Float32Array.from(sigmas);
    if (s.length < 2 || s[s.length - 1] !== 0 || s.some((v, i) => i > 0 && !(v < s[i - 1]))) {
      throw new RangeError(`sigmas must be a decreasing schedule of at least 2 values ending with 0, got ${Array.from(sigmas)}`);
    }
    this.sigmas = s;
    this.steps = s.length - 1;
    this.index = 0;
  }

  /** sigma - sigma_next of the step about to be taken, in float32: a few-step decoder's `step_size`. */
  get stepSize() {
    return f32(this.sigmas[this.index] - this.sigmas[this.index + 1]);
  }

  /** The noise level of the step about to be taken (a float32 value). */
  get sigma() {
    return this.sigmas[this.index];
  }

  /** One Euler step in place: x += (sigma_next - sigma) * v, in float32. */
  step(v, x) {
    if (this.index >= this.steps) {
      throw new Error(`step() called ${this.index + 1} times after setTimesteps(${this.steps}); call setTimesteps again`);
    }
    const dt = f32(this.sigmas[this.index + 1] - this.sigmas[this.index]);
    for (let k = 0; k < x.length; k++) x[k] = x[k] + f32(dt * v[k]); // the store rounds the sum
    this.index += 1;
    return x;
  }
}

/**
 * The uniform schedule of an n-step few-step sampler (bundle format 5; sampler.py few_step_sigmas):
 * (n - k) / n for k = 0..n, computed in double and rounded to float32.
 */
export function fewStepSigmas(steps) {
  if (!Number.isInteger(steps) || steps < 1) throw new RangeError(`steps must be an integer >= 1, got ${steps}`);
  const s = new Float32Array(steps + 1);
  for (let k = 0; k <= steps; k++) s[k] = (steps - k) / steps;
  return s;
}

/** Guidance branches an edit runs: 3 (text+image, image only, neither), or 2 where image guidance is exactly 1. */
export function editBranches(imageGuidance) {
  return imageGuidance === 1.0 ? 2 : 3;
}

/**
 * Per-branch velocities (nb * n values: branch 0, 1[, 2]) -> one (n) in float32, as session.py's
 * guided_velocity: v_ui + s_txt (v_ti - v_ui), or v_uu + s_img (v_ui - v_uu) + s_txt (v_ti - v_ui).
 */
export function guidedVelocity(v, nb, n, sTxt, sImg, out) {
  const st = f32(sTxt), si = f32(sImg);
  if (nb === 2) {
    for (let k = 0; k < n; k++) {
      const ti = v[k], ui = v[n + k];
      out[k] = ui + f32(st * f32(ti - ui));
    }
    return out;
  }
  for (let k = 0; k < n; k++) {
    const ti = v[k], ui = v[n + k], uu = v[2 * n + k];
    const a = f32(uu + f32(si * f32(ui - uu)));
    out[k] = a + f32(st * f32(ti - ui));
  }
  return out;
}
