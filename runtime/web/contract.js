// The export contract (runtime/contract.py): each graph's input and output names, dtypes and
// shapes, by bundle format version, so that a manifest is checked against what this runtime binds.
export const FORMAT = "qk-bundle";
export const FORMAT_VERSION = 5;
export const MIN_FORMAT_VERSION = 1;
// the first format whose decoders may take `step_size` (with the manifest's `few_step`)
export const FEW_STEP_FORMAT_VERSION = 5;
// the manifest's `few_step`: `steps` (increasing step counts) and these fixed values (contract.py
// FEW_STEP_FIELDS): uniform sigmas (n - k) / n at the listed counts feeding step_size = sigma -
// sigma_next; at every other count the ordinary schedule and step_size 0
export const FEW_STEP_FIELDS = { sigmas: "uniform", step_size: "sigma - sigma_next", other_step_size: 0.0 };
export const MANIFEST = "manifest.json";
export const TOKENIZER = "tokenizer.json";
export const NOISE = "splitmix64-boxmuller-v1";
export const SCHEDULER = "FlowMatchEulerDiscreteScheduler";
export const STEP_CONDITION = ["cond_kv", "cond_bias", "cond_emb"];
// the INT8 graphs stored weight-only where the manifest has no `quantization.weight_only` list
// (contract.py WEIGHT_ONLY_INT8_GRAPHS: bundles written before it, FP32 bundles sharing an INT8 text encoder)
export const WEIGHT_ONLY_INT8_GRAPHS = ["text_encoder"];
export const WEIGHT_ONLY_KEY = "weight_only";
export const LEGACY_REGION_BUCKETS = [0.25, 0.5, 0.75, 1.0];
export const REQUIRED_GRAPHS = ["text_encoder", "image_encoder", "image_decoder", "decoder"];
export const DIM_NAMES = ["image_size", "latent_channels", "factor", "patch", "max_length", "text_width", "kontext_tokens", "width", "depth"];
export const DIM_LIMITS = {
  image_size: 8192, latent_channels: 1024, factor: 64, patch: 64, max_length: 4096, text_width: 65536,
  kontext_tokens: 4096, width: 65536, depth: 1024,
};

const f = (name, ...shape) => ({ name, dtype: "float32", shape });

/** Dims with the derived sizes of contract.py's Dims. */
export function withDerived(d) {
  const latentSize = d.image_size / d.factor;
  const grid = latentSize / d.patch;
  return { ...d, latentSize, grid, tokens: grid * grid, condTokens: d.max_length + d.kontext_tokens, condWidth: 2 * d.width * d.depth };
}

/**
 * contract.py graph_specs: graph name -> {inputs, outputs} ({name, dtype, shape} each). `stepSize`
 * (format 5): the decoder steps take the sampler's step size after sigma.
 */
export function graphSpecs(dims, { gateway = true, gate = true, region = false, formatVersion = FORMAT_VERSION, stepSize = false } = {}) {
  if (stepSize && formatVersion < FEW_STEP_FORMAT_VERSION) {
    throw new RangeError(`a step_size input needs format ${FEW_STEP_FORMAT_VERSION} or newer, got ${formatVersion}`);
  }
  const d = withDerived(dims);
  const B = "batch", S = d.image_size, C = d.latent_channels, h = d.latentSize;
  const cond = [f("text", B, d.max_length, d.text_width), f("text_mask", B, d.max_length)];
  const imageInputs = [f("source", B, C, h, h), f("region", B, 1, h, h)];
  const T = formatVersion >= 2 ? "text_tokens" : d.max_length;
  const specs = {
    text_encoder: {
      inputs: [{ name: "input_ids", dtype: "int64", shape: [B, T] }, { name: "attention_mask", dtype: "int64", shape: [B, T] }],
      outputs: [f("hidden", B, T, d.text_width)],
    },
    image_encoder: { inputs: [f("image", B, 3, S, S)], outputs: [f("latent", B, C, h, h)] },
    image_decoder: { inputs: [f("latent", B, C, h, h)], outputs: [f("image", B, 3, S, S)] },
  };
  if (gateway) {
    specs.gateway = { inputs: [...cond, ...imageInputs, f("flags", B, 2)], outputs: [f("kontext", B, d.kontext_tokens, d.width)] };
  }
  if (gate && gateway) {
    specs.cmg = { inputs: [f("kontext", B, d.kontext_tokens, d.width), ...imageInputs], outputs: [f("gate", B, d.tokens)] };
  }
  const kontext = gateway ? [f("kontext", B, d.kontext_tokens, d.width)] : [];
  let stepInputs;
  if (formatVersion >= 3) {
    const nCond = gateway ? d.condTokens : d.max_length;
    const stepCondition = [f("cond_kv", B, nCond, d.condWidth), f("cond_bias", B, nCond), f("cond_emb", B, d.width)];
    specs.decoder_cond = { inputs: [...cond, ...kontext, f("flags", B, 2)], outputs: stepCondition };
    stepInputs = [f("x", B, C, h, h), f("sigma", B), ...(stepSize ? [f("step_size", B)] : []), ...stepCondition, ...imageInputs,
      f("gate_map", B, 1, h, h)];
  } else {
    stepInputs = [f("x", B, C, h, h), f("sigma", B), ...cond, ...kontext, ...imageInputs, f("gate_map", B, 1, h, h), f("flags", B, 2)];
  }
  specs.decoder = { inputs: stepInputs, outputs: [f("velocity", B, C, h, h)] };
  if (region) {
    specs.decoder_region = {
      inputs: [...stepInputs, { name: "active", dtype: "int64", shape: [B, "active"] }], outputs: [f("velocity", B, C, h, h)],
    };
  }
  return specs;
}
