// query-kontext in the browser: the public names of the runtime (README.md beside this file).
//
//   import { EditSession } from "/web/qk.js";
//   const s = await EditSession.open("/bundle/int8/", { ortUrl: "/web/ort/" });
//   const r = await s.edit(pngBytes, "make the red circle blue", [10, 8, 30, 28], { seed: 0 });
//   r.image  // {width, height, rgb}; r.timings: ms per stage; s.backendName, s.backendReason
export { EditSession, activeTokenIndices, bucketSize } from "./session.js";
export { openBundle, urlSource } from "./bundle.js";
export { Tokenizer } from "./tokenizer.js";
export { portableNormal, splitmix64, checkSeed } from "./noise.js";
export { FlowMatchEulerScheduler, editBranches, guidedVelocity } from "./sampler.js";
export { composite, changeWeight, readComposite } from "./composite.js";
export { checkText, checkBox, scaleBox } from "./inputs.js";
export { decodeImage, inspectImage, resizeBilinear, sniffFormat, MAX_PIXELS } from "./image.js";
export { encodePng } from "./png.js";
export { BACKENDS, chooseBackend } from "./backend.js";
export { QKError, InputError, BundleError, BackendUnavailable } from "./errors.js";
