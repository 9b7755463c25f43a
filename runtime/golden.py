"""Golden outputs of a bundle and the one-command check against them (`qk-build --golden / --check`).

`write_golden(bundle)` (CPU, no GPU needed) runs one small edit through the Python runtime on
ONNX Runtime's CPU provider, keeps the first call of every graph (the decoders: the middle
denoising step; batch row 0, the text-and-image branch), and runs each graph once more on those
inputs through Polygraphy's `OnnxrtRunner` over the runtime's own ONNX Runtime session (the
runtime's session options: Polygraphy's `SessionFromOnnx` cannot turn off Q/DQ fusion for the
weight-only INT8 text encoder). Inputs that another graph makes (`kontext`, the decoder's
`cond_*`) are that graph's golden output, so each array is stored once. It writes

- `golden.npz`: the arrays, deduplicated by content; float arrays in float16: inputs are rounded to
  float16 before the run (the stored value is exactly what was fed), outputs are rounded when
  stored (within 2^-11 of the computed value, far inside every tolerance); arrays that do not fit
  float16 stay float32;
- `golden.json`: per graph its precision and which array each input and output is, how the inputs
  were made, and the ONNX Runtime and Polygraphy versions;

and lists both in the manifest (`files` with sha256, `golden`), each file written to a temporary
name, synced and renamed, the manifest last. They are left out of the hash that keys TensorRT
engines (`Bundle.sha`), so saving them keeps built engines valid. An interrupted write is mended
by running it again (it checks every other file of the bundle against its sha256 first).

`check_golden(bundle, provider=None)` runs the golden inputs through the bundle's TensorRT
engines (the `tensorrt` backend, which checks the engines' cache key first), or with `provider`
through ONNX Runtime with that execution provider, and compares each graph's outputs with the
golden ones: `max_rel` = max |out - golden| / max |golden|, `mean_rel` = mean |out - golden| /
mean |golden| (the worst output of the graph), within the tolerance of the graph's precision
(`TOLERANCES`; FP32 graphs that the runner computes in FP16, a TensorRT 10 FP16 build of an FP32
bundle or ONNX Runtime's TensorRT provider with FP16 on, get the FP16 one). The tolerances are
set from float16 rounding, TF32 GEMMs and one-step Q/DQ rounding differences; they were not
measured on TensorRT (not installed where this was written).
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backend import Backend, make_backend
from .bundle import EXPORT_HINT, Bundle, open_bundle, sha256_file
from .contract import GOLDEN, GOLDEN_DATA, GOLDEN_FILES, MANIFEST
from .engines import atomic_write, read_engines_json
from .errors import BackendUnavailable, BundleError, QKRuntimeError
from .files import read_json

GOLDEN_FORMAT = "qk-golden"
GOLDEN_VERSION = 1
GOLDEN_HINT = "make them with: qk-build --golden BUNDLE"
POLYGRAPHY_MISSING = ("qk-build --golden / --check run ONNX Runtime through Polygraphy's runner, which is not "
                      "installed: pip install polygraphy (it comes with query-kontext's gpu, trt and export extras)")
# the edit whose graph calls are kept: small, on a scene any ShapeWorld model knows
INSTRUCTION = "make the red square blue"
SEED = 0
STEPS = 4
# inputs another graph of the bundle makes: input name -> (graph, output)
CHAINED = {"kontext": ("gateway", "kontext"), "cond_kv": ("decoder_cond", "cond_kv"),
           "cond_bias": ("decoder_cond", "cond_bias"), "cond_emb": ("decoder_cond", "cond_emb")}
DENOISING = ("decoder", "decoder_region")
PROVIDERS = {"cpu": "ort-cpu", "cuda": "ort-cuda", "tensorrt": "ort-trt"}
_EP = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


@dataclass(frozen=True)
class Tolerance:
    max_rel: float  # max |out - golden| / max |golden|
    mean_rel: float  # mean |out - golden| / mean |golden|


# per precision of the computation: FP32 (TF32 GEMMs on GPUs: ~1e-3), FP16 (2^-11 per rounding,
# accumulated over a few dozen layers), Q/DQ INT8 (an activation one quantization step off where
# the float part before its quantizer differs in the last bits)
TOLERANCES = {"fp32": Tolerance(1e-2, 2e-3), "fp16": Tolerance(5e-2, 1e-2), "int8": Tolerance(1e-1, 2e-2)}


# --------------------------------------------------------------------------- runners


def _onnxrt_runner():
    try:
        from polygraphy.backend.onnxrt import OnnxrtRunner
    except ImportError as exc:
        raise BackendUnavailable(POLYGRAPHY_MISSING) from exc
    return OnnxrtRunner


class _PolygraphyOrt:
    """Polygraphy's OnnxrtRunner, one per graph, over the sessions an ONNX Runtime backend of this
    runtime opened (its providers and session options)."""

    def __init__(self, backend):
        self.OnnxrtRunner = _onnxrt_runner()
        self.backend = backend
        self.name = f"ONNX Runtime {backend.name} ({', '.join(_session_providers(backend))})"
        self.fp16_fp32 = backend.provider == "trt" and backend.fp16  # FP32 graphs run in FP16 on the TensorRT EP

    def infer(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        runner = self.OnnxrtRunner(self.backend.sessions[graph], name=graph)
        with runner:
            return {k: np.asarray(v) for k, v in runner.infer(feeds).items()}

    def close(self) -> None:
        self.backend.deactivate()


def _session_providers(backend) -> list[str]:
    sess = next(iter(backend.sessions.values()), None)
    return list(sess.get_providers()) if sess is not None else []


class _Engines:
    """The bundle's TensorRT engines through the runtime's TensorRT backend (cache key checked)."""

    def __init__(self, bundle: Bundle, engine_dir):
        from .backend_tensorrt import TensorRTBackend

        self.backend = TensorRTBackend(bundle, engine_dir=engine_dir, cuda_graphs=False)
        self.backend.activate()
        precision = read_engines_json(Path(self.backend.engine_dir))["key"].get("precision", "")
        self.name = f"TensorRT engines in {self.backend.engine_dir} ({precision})"
        self.fp16_fp32 = precision == "fp16"  # an FP32 bundle built with TensorRT 10's FP16 flag

    def infer(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.backend.infer(graph, feeds)

    def close(self) -> None:
        self.backend.deactivate()


def _ort_runner(bundle: Bundle, provider: str = "cpu") -> _PolygraphyOrt:
    backend = make_backend(PROVIDERS[provider], bundle)  # BackendUnavailable names what is missing
    backend.activate()
    return _PolygraphyOrt(backend)


# --------------------------------------------------------------------------- inputs


class _Recorder(Backend):
    """Runs another backend and keeps a copy of every graph call's feeds."""

    def __init__(self, inner: Backend):
        super().__init__(inner.bundle)
        self.inner, self.name, self.calls = inner, inner.name, {}

    def activate(self, graphs=None) -> None:
        self.inner.activate(graphs)
        self.is_active = True

    def infer(self, graph, feeds):
        self.calls.setdefault(graph, []).append({k: np.array(v, copy=True) for k, v in feeds.items()})
        return self.inner.infer(graph, feeds)

    def deactivate(self) -> None:
        self.inner.deactivate()
        self.is_active = False


def scene(side: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A ShapeWorld-like picture (slate background, a red square, a blue circle) and a box around the square."""
    img = np.empty((side, side, 3), np.uint8)
    img[:] = (112, 112, 120)
    a, b = side // 8, side * 7 // 16
    img[a:b, a:b] = (220, 40, 40)
    yy, xx = np.mgrid[:side, :side]
    c, r = side * 11 // 16, max(1, side // 8)
    img[(yy - c) ** 2 + (xx - c) ** 2 <= r * r] = (40, 60, 220)
    m = max(1, side // 16)
    return img, (max(0, a - m), max(0, a - m), min(side, b + m), min(side, b + m))


def recorded_feeds(bundle: Bundle) -> dict[str, dict[str, np.ndarray]]:
    """Each graph's feeds from one edit (dense, and region where the bundle has the region
    decoder) on the CPU provider: the first call, the middle step for the decoders; batch row 0."""
    from .session import EditSession

    image, box = scene(bundle.dims.image_size)
    recorder = _Recorder(make_backend("ort-cpu", bundle))
    with EditSession(backend=recorder, reason="qk-build --golden") as s:
        s.edit(image, INSTRUCTION, box, steps=STEPS, seed=SEED, sparse="none")
        if bundle.has_region:
            s.edit(image, INSTRUCTION, box, steps=STEPS, seed=SEED, sparse="region")
    feeds = {}
    for graph in bundle.graphs:
        calls = recorder.calls.get(graph)
        if not calls:
            raise QKRuntimeError(f"the golden edit did not run graph {graph!r} of {bundle.path}; the bundle's graphs "
                                 f"do not match what this runtime runs: {EXPORT_HINT}")
        call = calls[len(calls) // 2] if graph in DENOISING else calls[0]
        feeds[graph] = {k: v[:1] for k, v in call.items()}  # axis 0 is the batch of every graph
    return feeds


# --------------------------------------------------------------------------- storage


def _fits_half(a: np.ndarray) -> bool:
    return bool(np.isfinite(a).all()) and (a.size == 0 or float(np.abs(a).max()) <= float(np.finfo(np.float16).max))


def exact_input(a: np.ndarray) -> np.ndarray:
    """A float input rounded to float16 values (stored exactly), others as they are."""
    if a.dtype == np.float32 and _fits_half(a):
        return a.astype(np.float16).astype(np.float32)
    return a


class _Arrays:
    """Arrays to store, deduplicated by content; float32 kept as float16 where it fits."""

    def __init__(self):
        self.data: dict[str, np.ndarray] = {}
        self._by_hash: dict[str, str] = {}

    def add(self, a: np.ndarray) -> str:
        stored = a.astype(np.float16) if a.dtype == np.float32 and _fits_half(a) else np.ascontiguousarray(a)
        digest = hashlib.sha256(f"{stored.dtype}{stored.shape}".encode() + stored.tobytes()).hexdigest()
        if digest not in self._by_hash:
            self._by_hash[digest] = f"a{len(self.data)}"
            self.data[self._by_hash[digest]] = stored
        return self._by_hash[digest]

    def get(self, key: str) -> np.ndarray:
        a = self.data[key]
        return a.astype(np.float32) if a.dtype == np.float16 else a

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez_compressed(buf, **self.data)
        return buf.getvalue()


def graph_precision(bundle: Bundle, graph: str) -> str:
    return bundle.manifest.get("graphs", {}).get(graph, {}).get("precision", bundle.precision)


def _verify_all_but_golden(bundle: Bundle) -> None:
    for rel, want in bundle.files.items():
        if rel in GOLDEN_FILES:
            continue
        have = sha256_file(bundle.paths[rel])
        if have != want:
            raise BundleError(f"bundle {bundle.path}: {rel} has sha256 {have[:16]}..., but {MANIFEST} records "
                              f"{want[:16]}...; the file was changed or damaged after export: {EXPORT_HINT}")


def write_golden(bundle_dir: str | Path, log=lambda msg: None) -> Path:
    """Save the golden inputs and outputs of every graph of the bundle (module doc); returns golden.json's path."""
    import onnxruntime
    import polygraphy

    folder = Path(bundle_dir)
    bundle = open_bundle(folder, verify=False)
    _verify_all_but_golden(bundle)
    inputs = recorded_feeds(bundle)
    arrays, graphs, computed = _Arrays(), {}, {}
    runner = _ort_runner(bundle, "cpu")
    try:
        for graph, info in bundle.graphs.items():
            feeds = {}
            for t in info.inputs:
                source = CHAINED.get(t.name)
                if source is not None and source[0] in computed:
                    feeds[t.name] = arrays.get(computed[source[0]][source[1]])
                else:
                    feeds[t.name] = exact_input(inputs[graph][t.name])
            outs = runner.infer(graph, feeds)
            graphs[graph] = {"precision": graph_precision(bundle, graph),
                             "inputs": {k: arrays.add(v) for k, v in feeds.items()},
                             "outputs": {k: arrays.add(outs[k]) for k in info.output_names}}
            computed[graph] = graphs[graph]["outputs"]
    finally:
        runner.close()
    data = arrays.to_bytes()
    doc = {
        "format": GOLDEN_FORMAT, "version": GOLDEN_VERSION, "data": GOLDEN_DATA,
        "made_with": {"onnxruntime": onnxruntime.__version__, "provider": "CPUExecutionProvider",
                      "runner": f"polygraphy {polygraphy.__version__} OnnxrtRunner"},
        "inputs_from": {"edit": {"instruction": INSTRUCTION, "image": "golden.scene(image_size): a red square and a "
                                 "blue circle on slate", "box": list(scene(bundle.dims.image_size)[1]), "seed": SEED,
                                 "steps": STEPS, "sparse": ["none", "region"] if bundle.has_region else ["none"]},
                        "calls": "each graph's first call, the decoders' middle step; batch row 0; kontext and cond_* "
                                 "are the golden outputs of gateway and decoder_cond"},
        "storage": "float arrays as float16: inputs rounded to float16 before the run, outputs rounded when stored",
        "graphs": graphs,
    }
    text = (json.dumps(doc, indent=2) + "\n").encode()
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"][GOLDEN_DATA] = hashlib.sha256(data).hexdigest()
    manifest["files"][GOLDEN] = hashlib.sha256(text).hexdigest()
    manifest["golden"] = {"file": GOLDEN, "data": GOLDEN_DATA}
    atomic_write(folder / GOLDEN_DATA, data)
    atomic_write(folder / GOLDEN, text)
    atomic_write(folder / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    load_golden(open_bundle(folder))  # every hash, and the files read back
    log(f"golden outputs of {len(graphs)} graphs: {folder / GOLDEN} + {GOLDEN_DATA} ({len(data) / 1e3:.0f} kB, "
        f"{len(arrays.data)} arrays), listed in {folder / MANIFEST}")
    return folder / GOLDEN


def load_golden(bundle: Bundle) -> tuple[dict, dict[str, np.ndarray]]:
    """(golden.json, its arrays as float32 / int64) of an opened (hash-checked) bundle."""
    if GOLDEN not in bundle.files or GOLDEN_DATA not in bundle.files:
        raise BundleError(f"bundle {bundle.path} has no golden outputs ({GOLDEN}, {GOLDEN_DATA} in its manifest's "
                          f"files); {GOLDEN_HINT}")
    doc = read_json(bundle.paths[GOLDEN], BundleError, GOLDEN_HINT)
    if not isinstance(doc, dict) or doc.get("format") != GOLDEN_FORMAT or doc.get("version") != GOLDEN_VERSION \
            or doc.get("data") != GOLDEN_DATA or not isinstance(doc.get("graphs"), dict):
        raise BundleError(f"{bundle.paths[GOLDEN]} is not a {GOLDEN_FORMAT} file version {GOLDEN_VERSION}; {GOLDEN_HINT}")
    try:
        with np.load(bundle.paths[GOLDEN_DATA], allow_pickle=False) as z:
            arrays = {k: (z[k].astype(np.float32) if z[k].dtype == np.float16 else z[k]) for k in z.files}
    except (OSError, ValueError) as exc:
        raise BundleError(f"{bundle.paths[GOLDEN_DATA]} cannot be read ({exc}); {GOLDEN_HINT}") from None
    if sorted(doc["graphs"]) != sorted(bundle.graphs):
        raise BundleError(f"{bundle.paths[GOLDEN]} holds graphs {sorted(doc['graphs'])}, the bundle "
                          f"{sorted(bundle.graphs)}; {GOLDEN_HINT}")
    for graph, entry in doc["graphs"].items():
        info = bundle.graphs[graph]
        names = (sorted(entry.get("inputs", {})), sorted(entry.get("outputs", {})))
        if names != (sorted(info.input_names), sorted(info.output_names)) or \
                any(k not in arrays for k in list(entry["inputs"].values()) + list(entry["outputs"].values())):
            raise BundleError(f"{bundle.paths[GOLDEN]}: graph {graph!r} does not match the bundle's inputs and "
                              f"outputs or names arrays {GOLDEN_DATA} lacks; {GOLDEN_HINT}")
    return doc, arrays


# --------------------------------------------------------------------------- the check


@dataclass(frozen=True)
class Row:
    graph: str
    precision: str  # the graph's, in the manifest
    compared_as: str  # the tolerance used
    max_rel: float
    mean_rel: float
    tolerance: Tolerance
    worst_output: str

    @property
    def ok(self) -> bool:
        return self.max_rel <= self.tolerance.max_rel and self.mean_rel <= self.tolerance.mean_rel


@dataclass(frozen=True)
class Report:
    bundle: Path
    runner: str
    stand_in: str  # "" when the engines ran, else what stood in for them
    rows: tuple[Row, ...]


def compare(out: np.ndarray, golden: np.ndarray) -> tuple[float, float]:
    """(max |out - golden| / max |golden|, mean |out - golden| / mean |golden|)."""
    if out.shape != golden.shape:
        return float("inf"), float("inf")
    err = np.abs(out.astype(np.float64) - golden)
    ref = np.abs(golden.astype(np.float64))
    return float(err.max() / max(ref.max(), 1e-12)), float(err.mean() / max(ref.mean(), 1e-12))


def check_golden(bundle_dir: str | Path, *, provider: str | None = None, engine_dir=None) -> Report:
    """Run the golden inputs through the engines (or ONNX Runtime with `provider`) and compare."""
    if provider is not None and provider not in PROVIDERS:
        raise ValueError(f"provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
    bundle = open_bundle(bundle_dir)
    doc, arrays = load_golden(bundle)
    runner = _ort_runner(bundle, provider) if provider is not None else _Engines(bundle, engine_dir)
    stand_in = "" if provider is None else (f"ONNX Runtime's {_EP[provider]} stands in for the TensorRT engines "
                                            f"(no engine was run)")
    rows = []
    try:
        for graph, entry in doc["graphs"].items():
            feeds = {k: arrays[v] for k, v in entry["inputs"].items()}
            outs = runner.infer(graph, feeds)
            precision = graph_precision(bundle, graph)
            compared_as = "fp16" if precision == "fp32" and runner.fp16_fp32 else precision
            worst = max(((name, *compare(np.asarray(outs[name]), arrays[key])) for name, key in entry["outputs"].items()),
                        key=lambda r: (r[1] / TOLERANCES[compared_as].max_rel, r[2] / TOLERANCES[compared_as].mean_rel))
            rows.append(Row(graph, precision, compared_as, worst[1], worst[2], TOLERANCES[compared_as], worst[0]))
    finally:
        runner.close()
    return Report(Path(bundle_dir), runner.name, stand_in, tuple(rows))


def format_table(report: Report) -> str:
    lines = [f"qk-build --check {report.bundle}: {report.runner}"]
    if report.stand_in:
        lines.append(f"note: {report.stand_in}")
    lines.append(f"{'graph':15s} {'precision':9s} {'max_rel':>9s} {'<=':>8s} {'mean_rel':>9s} {'<=':>8s}  result")
    for r in report.rows:
        as_ = r.precision if r.compared_as == r.precision else f"{r.precision}>{r.compared_as}"
        lines.append(f"{r.graph:15s} {as_:9s} {r.max_rel:9.2e} {r.tolerance.max_rel:8.0e} {r.mean_rel:9.2e} "
                     f"{r.tolerance.mean_rel:8.0e}  {'ok' if r.ok else 'MISMATCH (' + r.worst_output + ')'}")
    bad = [r.graph for r in report.rows if not r.ok]
    lines.append(f"{len(report.rows)} graphs: {len(report.rows) - len(bad)} ok"
                 + (f", {len(bad)} mismatch: {', '.join(bad)}" if bad else ""))
    return "\n".join(lines)
