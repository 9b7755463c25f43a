// What a user hands the runtime, checked as runtime/inputs.py and session.py check it: texts,
// boxes, steps, guidance scales. The messages are the Python runtime's.
import { InputError } from "./errors.js";

export const MAX_STEPS = 1000;
export const GUIDANCE_RANGE = [0, 100];
// inputs.py INVISIBLE_CATEGORIES: control, format (zero-width), surrogate, private use, unassigned, separators
const INVISIBLE = /^[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zs}\p{Zl}\p{Zp}]*$/u;
// Python's str.strip() whitespace: White_Space plus the information separators U+001C..U+001F
const BLANK = /^[\p{White_Space}\u001c-\u001f]*$/u;

/** An instruction or prompt with a visible character; no NUL; valid Unicode (inputs.py check_text). */
export function checkText(text, what = "instruction") {
  if (typeof text !== "string") throw new InputError(`${what} must be a string, not ${text === null ? "null" : typeof text}`);
  const hint = what === "instruction" ? "change, e.g. 'make the red circle blue'" : "draw, e.g. 'a red circle and a blue square'";
  if (text.includes("\u0000")) throw new InputError(`${what} contains a NUL character; send plain text saying what to ${hint}`);
  if (!text.isWellFormed()) throw new InputError(`${what} is not valid UTF-8 text (it holds undecodable bytes); send UTF-8 text`);
  if (BLANK.test(text)) throw new InputError(`${what} is empty; say what to ${hint}`);
  if (INVISIBLE.test(text)) {
    throw new InputError(`${what} has no visible character (only spaces, zero-width or control characters); say what to ${hint}`);
  }
  return text;
}

/** The box rule: integers with 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height (x1, y1 exclusive). */
export function checkBox(box, width, height) {
  const rule = `need integers 0 <= x0 < x1 <= ${width} and 0 <= y0 < y1 <= ${height} (x1, y1 exclusive, in the input image's pixels)`;
  const shown = typeof box === "string" ? JSON.stringify(box) : JSON.stringify(box ?? null);
  let vals = box;
  if (typeof box === "string") vals = box.split(",");
  if (!Array.isArray(vals) && !(ArrayBuffer.isView(vals))) {
    throw new InputError(`box ${shown} must be four integers x0,y0,x1,y1; ${rule}`);
  }
  vals = Array.from(vals);
  if (vals.length !== 4) throw new InputError(`box ${shown} has ${vals.length} values; it must be four integers x0,y0,x1,y1`);
  const out = vals.map((v) => {
    let n = v;
    if (typeof v === "string") {
      if (!/^\s*[-+]?\d+\s*$/.test(v)) throw new InputError(`box ${shown}: ${JSON.stringify(v)} is not an integer; ${rule}`);
      n = Number.parseInt(v, 10);
    }
    if (typeof n !== "number" || !Number.isFinite(n) || !Number.isInteger(n)) {
      throw new InputError(`box ${shown}: ${JSON.stringify(v)} is not an integer; ${rule}`);
    }
    return n;
  });
  const [x0, y0, x1, y1] = out;
  if (!(0 <= x0 && x0 < x1 && x1 <= width && 0 <= y0 && y0 < y1 && y1 <= height)) {
    const what = x1 <= x0 || y1 <= y0 ? "inverted or empty" : "outside the image";
    throw new InputError(`box (${out.join(", ")}) is ${what} for a ${width}x${height} image; ${rule}`);
  }
  return out;
}

/** A valid box in a width x height image -> the box in the side x side resized image (outwards, >= 1 px). */
export function scaleBox(box, width, height, side) {
  if (width === side && height === side) return box;
  const sx = side / width, sy = side / height;
  const x0 = Math.floor(box[0] * sx), y0 = Math.floor(box[1] * sy);
  return [x0, y0, Math.max(Math.ceil(box[2] * sx), x0 + 1), Math.max(Math.ceil(box[3] * sy), y0 + 1)];
}

export function checkSteps(steps, fallback) {
  if (steps === undefined || steps === null) return fallback;
  if (typeof steps !== "number" || !Number.isInteger(steps) || steps < 1 || steps > MAX_STEPS) {
    throw new InputError(`steps=${JSON.stringify(steps)}; must be an integer from 1 to ${MAX_STEPS}`);
  }
  return steps;
}

export function checkScale(value, fallback, what) {
  if (value === undefined || value === null) return fallback;
  const v = typeof value === "string" && value.trim() !== "" ? Number(value) : value;
  if (typeof v !== "number" || Number.isNaN(v)) throw new InputError(`${what}=${JSON.stringify(value)}; must be a number`);
  const [lo, hi] = GUIDANCE_RANGE;
  if (!Number.isFinite(v) || v < lo || v > hi) {
    throw new InputError(`${what}=${JSON.stringify(value)}; must be a finite number from ${lo} to ${hi}`);
  }
  return v;
}
