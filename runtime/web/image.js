// Images in the browser, by runtime/inputs.py's rules:
// - only PNG, JPEG, WebP, BMP and GIF are opened (as qk-serve does), told apart by their first
//   bytes; the size is read from the header and anything over the pixel limit is refused before
//   decoding (a decompression bomb never gets decoded);
// - the browser decodes (createImageBitmap: EXIF orientation applied, no colour-space conversion,
//   alpha not premultiplied), then alpha is composited over white with Pillow's integer formula;
// - resizeBilinear is Pillow's two-pass convolution resampler (a triangle filter widened by the
//   scale when shrinking, 22-bit fixed-point coefficients, horizontal pass first), byte for byte as
//   runtime/cpp/src/image.cpp has it.
// An image here is {width, height, rgb: Uint8Array (height * width * 3)}.
import { InputError } from "./errors.js";

export const MAX_PIXELS = 64 * 1024 * 1024; // inputs.py MAX_PIXELS
export const FORMATS = ["PNG", "JPEG", "WebP", "BMP", "GIF"];

const ascii = (b, at, n) => String.fromCharCode(...b.subarray(at, at + n));

/** "PNG" | "JPEG" | "WebP" | "BMP" | "GIF" from the file's first bytes, or null. */
export function sniffFormat(bytes) {
  const b = bytes;
  if (b.length >= 8 && b[0] === 0x89 && ascii(b, 1, 3) === "PNG" && b[4] === 13 && b[5] === 10 && b[6] === 26 && b[7] === 10) return "PNG";
  if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return "JPEG";
  if (b.length >= 12 && ascii(b, 0, 4) === "RIFF" && ascii(b, 8, 4) === "WEBP") return "WebP";
  if (b.length >= 2 && ascii(b, 0, 2) === "BM") return "BMP";
  if (b.length >= 6 && (ascii(b, 0, 6) === "GIF87a" || ascii(b, 0, 6) === "GIF89a")) return "GIF";
  return null;
}

function truncated(what, format) {
  return new InputError(`${what} is a truncated ${format} file (its header is incomplete); send a complete image file`);
}

/** Width and height from the header of a PNG, JPEG, WebP, BMP or GIF file, without decoding. */
export function headerSize(bytes, format, what = "image") {
  const b = bytes, dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const need = (n) => {
    if (b.length < n) throw truncated(what, format);
  };
  switch (format) {
    case "PNG":
      need(24);
      if (ascii(b, 12, 4) !== "IHDR") throw new InputError(`${what} is not a valid PNG file (no IHDR chunk first); send a complete image file`);
      return { width: dv.getUint32(16), height: dv.getUint32(20) };
    case "GIF":
      need(10);
      return { width: dv.getUint16(6, true), height: dv.getUint16(8, true) };
    case "BMP": {
      need(26);
      const headerLen = dv.getUint32(14, true);
      if (headerLen === 12) return { width: dv.getUint16(18, true), height: dv.getUint16(20, true) };
      return { width: Math.abs(dv.getInt32(18, true)), height: Math.abs(dv.getInt32(22, true)) };
    }
    case "WebP": {
      need(30);
      const chunk = ascii(b, 12, 4);
      if (chunk === "VP8X") return { width: 1 + (b[24] | (b[25] << 8) | (b[26] << 16)), height: 1 + (b[27] | (b[28] << 8) | (b[29] << 16)) };
      if (chunk === "VP8L") {
        const bits = dv.getUint32(21, true);
        return { width: 1 + (bits & 0x3fff), height: 1 + ((bits >>> 14) & 0x3fff) };
      }
      if (chunk === "VP8 ") return { width: dv.getUint16(26, true) & 0x3fff, height: dv.getUint16(28, true) & 0x3fff };
      throw new InputError(`${what} is a WebP file with an unknown first chunk ${JSON.stringify(chunk)}; send a PNG or JPEG`);
    }
    case "JPEG": {
      let i = 2;
      while (i + 4 <= b.length) {
        if (b[i] !== 0xff) { i++; continue; }
        const marker = b[i + 1];
        if (marker === 0xff) { i++; continue; }
        if (marker === 0xd8 || marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) { i += 2; continue; }
        const len = dv.getUint16(i + 2);
        const sof = marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc;
        if (sof) {
          need(i + 9);
          return { width: dv.getUint16(i + 7), height: dv.getUint16(i + 5) };
        }
        if (marker === 0xd9 || marker === 0xda) break; // end of image or start of scan before a frame header
        i += 2 + len;
      }
      throw truncated(what, format);
    }
    default:
      throw new InputError(`${what}: unknown format ${format}`);
  }
}

/**
 * The first check of a file: one of the opened formats, a non-empty size within `maxPixels`.
 * -> {format, width, height}. InputError (or `tooLarge` over the limit) naming `what`.
 */
export function inspectImage(bytes, { maxPixels = MAX_PIXELS, what = "image" } = {}) {
  if (!bytes || bytes.length === 0) throw new InputError(`${what} is an empty file; choose an image file`);
  const format = sniffFormat(bytes);
  if (!format) {
    throw new InputError(`${what} is not an image in a supported format (${FORMATS.join(", ")}); convert it to PNG first`);
  }
  const { width, height } = headerSize(bytes, format, what);
  if (width < 1 || height < 1) throw new InputError(`${what} is empty (${width}x${height} pixels)`);
  if (width * height > maxPixels) {
    throw new InputError(`${what} is ${width}x${height} = ${width * height} pixels, over the limit of ${maxPixels} pixels ` +
      `(refused as a possible decompression bomb); downscale it first`);
  }
  return { format, width, height };
}

// Pillow's AlphaComposite over an opaque white background (Image.alpha_composite(white, rgba))
function overWhite(c, a) {
  if (a === 0) return 255;
  const coef1 = Math.floor((a * 255 * 255 * 128) / (255 * 255));
  const coef2 = 255 * 128 - coef1;
  const tmp = c * coef1 + 255 * coef2 + (0x80 << 7);
  return (((tmp >>> 8) + tmp) >>> 8) >>> 7;
}

/** RGBA bytes (not premultiplied) -> RGB, alpha over white as Pillow does it. */
export function rgbaToRgb(rgba, width, height) {
  const n = width * height, rgb = new Uint8Array(n * 3);
  for (let k = 0; k < n; k++) {
    const a = rgba[4 * k + 3];
    for (let c = 0; c < 3; c++) rgb[3 * k + c] = a === 255 ? rgba[4 * k + c] : overWhite(rgba[4 * k + c], a);
  }
  return rgb;
}

export function rgbToRgba(img) {
  const n = img.width * img.height, out = new Uint8ClampedArray(n * 4);
  for (let k = 0; k < n; k++) {
    out[4 * k] = img.rgb[3 * k];
    out[4 * k + 1] = img.rgb[3 * k + 1];
    out[4 * k + 2] = img.rgb[3 * k + 2];
    out[4 * k + 3] = 255;
  }
  return out;
}

/**
 * Decode an image file (bytes) in the browser: inspected first, then decoded completely once.
 * Needs createImageBitmap and OffscreenCanvas (browsers, and their workers).
 */
export async function decodeImage(bytes, { maxPixels = MAX_PIXELS, what = "image" } = {}) {
  const info = inspectImage(bytes, { maxPixels, what });
  let bitmap;
  try {
    bitmap = await createImageBitmap(new Blob([bytes]), {
      imageOrientation: "from-image", premultiplyAlpha: "none", colorSpaceConversion: "none",
    });
  } catch (err) {
    throw new InputError(`${what} is truncated or corrupt (the browser cannot decode this ${info.format} file: ${err.message}); ` +
      `send a complete image file`);
  }
  const { width, height } = bitmap;
  if (width * height > maxPixels) {
    bitmap.close();
    throw new InputError(`${what} is ${width}x${height} pixels once decoded, over the limit of ${maxPixels} pixels; downscale it first`);
  }
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  const data = ctx.getImageData(0, 0, width, height, { colorSpace: "srgb" }).data;
  return { width, height, rgb: rgbaToRgb(data, width, height), format: info.format };
}

/** Check an image handed in as pixels: {width, height, rgb} with 3 bytes per pixel. */
export function checkPixels(img, maxPixels = MAX_PIXELS) {
  if (!img || typeof img !== "object" || !Number.isInteger(img.width) || !Number.isInteger(img.height) || !(img.rgb instanceof Uint8Array)) {
    throw new InputError("image must be file bytes (ArrayBuffer, Uint8Array, Blob) or {width, height, rgb: Uint8Array}");
  }
  if (img.width < 1 || img.height < 1) throw new InputError(`image is empty (${img.width}x${img.height} pixels)`);
  if (img.width * img.height > maxPixels) {
    throw new InputError(`image is ${img.width}x${img.height} pixels, over the limit of ${maxPixels}; downscale it first`);
  }
  if (img.rgb.length !== img.width * img.height * 3) {
    throw new InputError(`image has ${img.rgb.length} bytes; a ${img.width}x${img.height} RGB image needs ${img.width * img.height * 3}`);
  }
  return img;
}

// ------------------------------------------------------------------------------ Pillow's resampler

const PRECISION_BITS = 32 - 8 - 2;
const ONE = 2 ** PRECISION_BITS;

function precompute(inSize, outSize) {
  const scale = inSize / outSize;
  const filterscale = scale < 1 ? 1 : scale;
  const support = 1.0 * filterscale; // the bilinear (triangle) filter's support is 1
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const k = new Int32Array(outSize * ksize);
  const w = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1.0 / filterscale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    let xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      let t = (x + xmin - center + 0.5) * ss;
      if (t < 0) t = -t;
      w[x] = t < 1 ? 1 - t : 0;
      ww += w[x];
    }
    for (let x = 0; x < xmax; x++) {
      const v = ww !== 0 ? w[x] / ww : w[x];
      k[xx * ksize + x] = Math.trunc(v < 0 ? -0.5 + v * ONE : 0.5 + v * ONE);
    }
    bounds[2 * xx] = xmin;
    bounds[2 * xx + 1] = xmax;
  }
  return { ksize, bounds, k };
}

const clip8 = (v) => {
  const s = Math.floor(v / ONE); // arithmetic shift
  return s < 0 ? 0 : s > 255 ? 255 : s;
};

/** Pillow's Image.resize((width, height), Image.BILINEAR) on an RGB image, byte for byte. */
export function resizeBilinear(img, width, height) {
  if (width < 1 || height < 1) throw new InputError(`cannot resize to ${width}x${height}`);
  if (img.width === width && img.height === height) return img;
  const ch = precompute(img.width, width), cv = precompute(img.height, height);
  const needH = width !== img.width, needV = height !== img.height;
  let yFirst = cv.bounds[0];
  const yLast = cv.bounds[2 * (height - 1)] + cv.bounds[2 * (height - 1) + 1];
  let src = img;
  if (needH) {
    let rows;
    if (needV) {
      for (let y = 0; y < height; y++) cv.bounds[2 * y] -= yFirst; // only the rows the vertical pass reads
      rows = yLast - yFirst;
    } else {
      yFirst = 0;
      rows = img.height;
    }
    const tmp = new Uint8Array(width * rows * 3);
    const inW = img.width;
    for (let y = 0; y < rows; y++) {
      const row = (y + yFirst) * inW * 3;
      for (let xx = 0; xx < width; xx++) {
        const xmin = ch.bounds[2 * xx], xmax = ch.bounds[2 * xx + 1], base = xx * ch.ksize;
        let s0 = ONE / 2, s1 = s0, s2 = s0;
        for (let x = 0; x < xmax; x++) {
          const p = row + (x + xmin) * 3, kv = ch.k[base + x];
          s0 += img.rgb[p] * kv;
          s1 += img.rgb[p + 1] * kv;
          s2 += img.rgb[p + 2] * kv;
        }
        const o = (y * width + xx) * 3;
        tmp[o] = clip8(s0);
        tmp[o + 1] = clip8(s1);
        tmp[o + 2] = clip8(s2);
      }
    }
    src = { width, height: rows, rgb: tmp };
    if (!needV) return src;
  }
  const out = new Uint8Array(width * height * 3);
  const W = src.width;
  for (let yy = 0; yy < height; yy++) {
    const ymin = cv.bounds[2 * yy], ymax = cv.bounds[2 * yy + 1], base = yy * cv.ksize;
    for (let xx = 0; xx < W; xx++) {
      let s0 = ONE / 2, s1 = s0, s2 = s0;
      for (let y = 0; y < ymax; y++) {
        const p = ((y + ymin) * W + xx) * 3, kv = cv.k[base + y];
        s0 += src.rgb[p] * kv;
        s1 += src.rgb[p + 1] * kv;
        s2 += src.rgb[p + 2] * kv;
      }
      const o = (yy * width + xx) * 3;
      out[o] = clip8(s0);
      out[o + 1] = clip8(s1);
      out[o + 2] = clip8(s2);
    }
  }
  return { width, height, rgb: out };
}
