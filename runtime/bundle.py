"""Open and validate a bundle: the folder `qk-export` writes and every runtime reads.

A bundle is ONNX graphs named by the export contract (`contract.py`), a `tokenizer.json`, and
a `manifest.json` holding the model's dims, the graphs' tensor specs and TensorRT profiles, the
sampler settings, the compositing (format 4's `composite`, `composite.py`; without it the gate
alone), the few-step sampling (format 5's `few_step`: the step counts whose decoders take
`step_size`), and a sha256 per file. `open_bundle` refuses anything it cannot run: another format or
version, a missing graph, a graph whose inputs differ from the contract, a `composite` entry it
does not know or in a manifest older than format 4, or a file whose bytes differ from the hash
the manifest recorded (re-export to fix). Which INT8 graphs are weight-only comes from the
manifest too (`quantization.weight_only`, see `contract.WEIGHT_ONLY_INT8_GRAPHS`); a list that
names a graph the bundle lacks or one not stored in INT8 is refused.

A bundle is a download from someone else, so its manifest is read under limits
(`files.MAX_JSON_BYTES`, `files.MAX_JSON_DEPTH`) and every file it names must resolve, after
symlinks, inside the bundle folder. One exception, the shared text encoder (`qk-export
--text-encoder-from`): the `text_encoder` graph may name `../<sibling>/<file>` when <sibling> is
a bundle beside this one (same parent folder, not a symlink) whose own manifest lists <file> as
its own text encoder's file with the same sha256; the file must resolve inside <sibling>. No
other path leaves the folder, and nothing outside is opened, not even to hash it. Numbers in the
manifest (dims, sampler settings) must be finite and within `DIM_LIMITS` / `GUIDANCE_RANGE` etc.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .composite import GATE_ONLY, Composite
from .contract import (COMPOSITE_FORMAT_VERSION, FEW_STEP_FIELDS, FEW_STEP_FORMAT_VERSION, FORMAT_VERSION, GOLDEN_FILES,
                       LEGACY_REGION_BUCKETS, MANIFEST, MIN_FORMAT_VERSION, TOKENIZER, WEIGHT_ONLY_INT8_GRAPHS, WEIGHT_ONLY_KEY,
                       Dims, graph_specs)
from .errors import BundleError
from .files import contained, path_parts, read_json

FORMAT = "qk-bundle"
NOISE = "splitmix64-boxmuller-v1"  # the generator in noise.py
SCHEDULER = "FlowMatchEulerDiscreteScheduler"
REQUIRED_GRAPHS = ("text_encoder", "image_encoder", "image_decoder", "decoder")
EXPORT_HINT = "re-export it with qk-export (for example: qk-export --model CKPT --out DIR)"
SHARED_GRAPH = "text_encoder"  # the one graph whose file may come from a sibling bundle

# What a manifest's numbers may be (the runtimes refuse anything else; C++: bundle.cpp)
MAX_STEPS = 1000
GUIDANCE_RANGE = (0.0, 100.0)  # text, image and generation guidance
SHIFT_RANGE = (0.01, 100.0)
MAX_HALO = 64
# what the graphs compute in: float32; Q/DQ INT8 (`qk-export --int8`); float16 with float32 inputs,
# outputs and sensitive nodes (`qk-export --fp16`)
PRECISIONS = ("fp32", "int8", "fp16")
DIM_LIMITS = {"image_size": 8192, "latent_channels": 1024, "factor": 64, "patch": 64, "max_length": 4096,
              "text_width": 65536, "kontext_tokens": 4096, "width": 65536, "depth": 1024}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # "float32" | "int64"
    shape: tuple  # ints, or names of dynamic axes


@dataclass(frozen=True)
class GraphInfo:
    name: str
    path: Path  # the ONNX file
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    profile: dict  # input name -> {"min": shape, "opt": shape, "max": shape}

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)


@dataclass(frozen=True)
class SamplerConfig:
    steps: int
    text_guidance: float
    image_guidance: float
    gate_threshold: float | None  # None: the soft gate is used as is
    gen_guidance: float | None = None  # generation's guidance; None (bundles before it): text_guidance
    shift: float = 1.0
    region_buckets: tuple[float, ...] = LEGACY_REGION_BUCKETS
    halo: int = 1
    codec: str | None = None


@dataclass(frozen=True)
class FewStep:
    """Format 5's `few_step` (`contract.FEW_STEP_FIELDS`): the decoders take `step_size`; at these
    step counts the sampler runs the uniform sigmas and feeds sigma - sigma_next, at any other
    count the ordinary schedule and 0."""

    steps: tuple[int, ...]


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict
    dims: Dims
    precision: str  # one of PRECISIONS
    sparse_attn: str  # "none" | "window" | "region"
    graphs: dict[str, GraphInfo]
    sampler: SamplerConfig
    tokenizer_path: Path
    files: dict[str, str]  # relative name -> sha256
    composite: Composite = GATE_ONLY  # how an edit's output meets its source (format 4's `composite`)
    few_step: FewStep | None = None  # format 5's `few_step`: the decoders take step_size (None: they do not)
    weight_only: frozenset[str] = frozenset()  # the INT8 graphs stored weight-only (`_weight_only`): Q/DQ fusion off
    paths: dict[str, Path] = field(default_factory=dict)  # relative name -> the checked, resolved file
    folders: tuple[Path, ...] = ()  # every folder this bundle reads files from (itself, a sibling's)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def has_gateway(self) -> bool:
        return "gateway" in self.graphs

    @property
    def has_cmg(self) -> bool:
        return "cmg" in self.graphs

    @property
    def has_region(self) -> bool:
        return "decoder_region" in self.graphs

    @property
    def has_decoder_cond(self) -> bool:
        """Format 3: the decoder's per-edit conditioning is computed once by `decoder_cond`."""
        return "decoder_cond" in self.graphs

    @property
    def sha(self) -> str:
        """One hash for the whole bundle: sha256 of its canonical files map, less the golden
        outputs (`contract.GOLDEN_FILES`, which change no engine)."""
        return files_digest({k: v for k, v in self.files.items() if k not in GOLDEN_FILES})


def files_digest(files: dict[str, str]) -> str:
    canon = json.dumps(dict(sorted(files.items())), separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(canon.encode()).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- reading


def _read_manifest(folder: Path) -> dict:
    if not folder.exists():
        raise BundleError(f"bundle folder {folder} does not exist; {EXPORT_HINT}")
    if not folder.is_dir():
        raise BundleError(f"bundle {folder} is not a folder; a bundle is the folder qk-export writes")
    mpath = folder / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{folder} has no {MANIFEST}, so it is not a bundle (or an unfinished one); {EXPORT_HINT}")
    if Path(os.path.realpath(mpath)).parent != Path(os.path.realpath(folder)):
        raise BundleError(f"{mpath} is a link to {os.path.realpath(mpath)}, outside the bundle; a bundle's manifest "
                          f"must be a file in its folder: {EXPORT_HINT}")
    manifest = read_json(mpath, BundleError, f"the bundle is corrupt: {EXPORT_HINT}")
    if not isinstance(manifest, dict):
        raise BundleError(f"{mpath} holds a {type(manifest).__name__}, not a JSON object; {EXPORT_HINT}")
    fmt, version = manifest.get("format"), manifest.get("format_version")
    if fmt != FORMAT:
        raise BundleError(f"{mpath} has format {fmt!r}, not {FORMAT!r}; point --bundle at a folder qk-export wrote")
    if not isinstance(version, int) or isinstance(version, bool):
        raise BundleError(f"{mpath} has format_version {version!r}; expected the integer {FORMAT_VERSION}; {EXPORT_HINT}")
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{mpath} has format_version {version}, newer than this runtime reads ({FORMAT_VERSION}); "
            f"upgrade query-kontext or export with the matching version"
        )
    if version < MIN_FORMAT_VERSION:
        raise BundleError(f"{mpath} has format_version {version}; this runtime reads {MIN_FORMAT_VERSION}.."
                          f"{FORMAT_VERSION}: {EXPORT_HINT}")
    missing = [k for k in ("dims", "graphs", "sampler", "files", "precision") if k not in manifest]
    if missing:
        raise BundleError(f"{mpath} lacks {missing}; {EXPORT_HINT}")
    return manifest


def _graph_files(entry) -> list:
    """The file names a graph entry uses: its file, its external data, a `<file>.data` beside it."""
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
        return []
    names = [entry["file"], f"{entry['file']}.data"]
    if isinstance(entry.get("external_data"), str):
        names.append(str(Path(entry["file"]).parent / entry["external_data"]) if "/" in entry["file"] else entry["external_data"])
    return names


def _sibling_file(folder: Path, rel: str, sha, where: str) -> tuple[Path, Path]:
    """The shared text encoder's `../<sibling>/<file>` -> (resolved file, sibling folder), or BundleError."""
    parts = path_parts(rel, where, BundleError, allow_up=True)
    rule = (f"only the text encoder may come from outside the bundle, as ../<sibling>/<file> of a bundle beside "
            f"this one that lists <file> as its own text encoder with the same sha256 (qk-export --text-encoder-from)")
    if len(parts) < 3 or parts[0] != ".." or parts[1] == "..":
        raise BundleError(f"{where}: {rel!r} leaves the bundle folder; {rule}")
    base = Path(os.path.realpath(folder))
    sibling = base.parent / parts[1]
    real = Path(os.path.realpath(sibling))
    if real.parent != base.parent or real == base:
        raise BundleError(f"{where}: {rel!r} names {sibling}, which resolves to {real}, not a bundle beside {base}; {rule}")
    inner = "/".join(parts[2:])
    try:
        theirs = _read_manifest(real)
    except BundleError as exc:
        raise BundleError(f"{where}: {rel!r} names the sibling bundle {real}, which cannot be read ({exc}); {rule}") from None
    own = _graph_files((theirs.get("graphs") or {}).get(SHARED_GRAPH) if isinstance(theirs.get("graphs"), dict) else None)
    their_files = theirs.get("files") if isinstance(theirs.get("files"), dict) else {}
    if inner not in own or their_files.get(inner) != sha:
        raise BundleError(f"{where}: {rel!r}: the sibling bundle {real} does not list {inner!r} as its own text "
                          f"encoder with sha256 {str(sha)[:16]}...; {rule}")
    return contained(real, inner, f"{real / MANIFEST} files", BundleError), real


def _file_paths(folder: Path, manifest: dict, where: str, root: Path | None) -> tuple[dict[str, Path], tuple[Path, ...]]:
    """Every name in 'files' -> its checked, resolved path; and the folders they lie in."""
    files = manifest["files"]
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{where}: 'files' must map file names to sha256; {EXPORT_HINT}")
    graphs = manifest["graphs"] if isinstance(manifest["graphs"], dict) else {}
    shared = set(_graph_files(graphs.get(SHARED_GRAPH))) if root is None else set()
    paths, folders = {}, [Path(os.path.realpath(root if root is not None else folder))]
    for rel, want in files.items():
        if not isinstance(want, str):
            raise BundleError(f"{where}: the sha256 of {rel!r} must be a string, got {want!r}; {EXPORT_HINT}")
        if rel in shared and isinstance(rel, str) and rel.startswith("../"):
            paths[rel], sibling = _sibling_file(folder, rel, want, f"{where} files")
            if sibling not in folders:
                folders.append(sibling)
        else:
            paths[rel] = contained(folder, rel, f"{where} files", BundleError, root=root)
    return paths, tuple(folders)


def _check_files(folder: Path, files: dict, paths: dict[str, Path], verify: bool) -> None:
    for rel, want in files.items():
        path = paths[rel]
        if not path.is_file():
            raise BundleError(f"bundle {folder} is missing {rel} (listed in {MANIFEST}); {EXPORT_HINT}")
        if not verify:
            continue
        have = sha256_file(path)
        if have != want:
            raise BundleError(
                f"bundle {folder}: {rel} has sha256 {have[:16]}..., but {MANIFEST} records {str(want)[:16]}...; "
                f"the file was changed or damaged after export: {EXPORT_HINT}"
            )


def _dims(manifest: dict, where: str) -> Dims:
    raw = manifest["dims"]
    names = set(Dims.__dataclass_fields__)
    if manifest["format_version"] < 3:  # the decoder depth entered the dims with decoder_cond
        names.discard("depth")
    if not isinstance(raw, dict) or set(raw) != names:
        have = sorted(raw) if isinstance(raw, dict) else raw
        raise BundleError(f"{where}: 'dims' must have exactly {sorted(names)}, has {have}; {EXPORT_HINT}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in raw.values()):
        raise BundleError(f"{where}: 'dims' values must be non-negative integers, got {raw}")
    over = {k: v for k, v in raw.items() if v > DIM_LIMITS[k]}
    if over:
        raise BundleError(f"{where}: dims {over} over the limits {({k: DIM_LIMITS[k] for k in over})}; {EXPORT_HINT}")
    if raw["factor"] < 1 or raw["patch"] < 1 or raw["image_size"] < 1:
        raise BundleError(f"{where}: dims image_size, factor and patch must be >= 1, got {raw}; {EXPORT_HINT}")
    d = Dims(**raw)
    if manifest["format_version"] >= 3 and d.depth < 1:
        raise BundleError(f"{where}: dims.depth must be the decoder's block count (>= 1), got {d.depth}; {EXPORT_HINT}")
    if d.image_size % d.factor or d.latent_size % d.patch or d.factor < 1 or d.patch < 1:
        raise BundleError(f"{where}: inconsistent dims {raw}: image_size / factor / patch must divide evenly")
    return d


def _tensors(raw, where: str) -> tuple[TensorInfo, ...]:
    try:
        return tuple(TensorInfo(str(t["name"]), str(t["dtype"]), tuple(t["shape"])) for t in raw)
    except (TypeError, KeyError) as exc:
        raise BundleError(f"{where}: tensors must be a list of {{name, dtype, shape}} ({exc!r}); {EXPORT_HINT}") from exc


def _graphs(manifest: dict, dims: Dims, files: dict, paths: dict[str, Path], where: str,
            few_step: FewStep | None = None) -> dict[str, GraphInfo]:
    version = manifest["format_version"]
    raw = manifest["graphs"]
    if not isinstance(raw, dict):
        raise BundleError(f"{where}: 'graphs' must be an object; {EXPORT_HINT}")
    missing = [g for g in REQUIRED_GRAPHS if g not in raw]
    if missing:
        raise BundleError(f"{where}: graphs {missing} are missing; {EXPORT_HINT}")
    expected = graph_specs(dims, gateway="gateway" in raw, gate="cmg" in raw, region="decoder_region" in raw,
                           format_version=version, step_size=few_step is not None)
    missing = [g for g in expected if g not in raw]  # decoder_cond, from format 3 on
    if missing:
        raise BundleError(f"{where}: graphs {missing} are missing (format_version {version}); {EXPORT_HINT}")
    unknown = sorted(set(raw) - set(expected))
    if unknown:
        hint = " (a CMG needs a gateway in this contract)" if "cmg" in unknown else ""
        raise BundleError(f"{where}: graphs {unknown} are not in the export contract{hint}; {EXPORT_HINT}")
    graphs = {}
    for name, spec in expected.items():
        g = raw[name]
        if not isinstance(g, dict) or "file" not in g:
            raise BundleError(f"{where}: graph {name!r} must give its 'file'; {EXPORT_HINT}")
        if not isinstance(g["file"], str) or g["file"] not in files:
            raise BundleError(f"{where}: graph {name!r} file {g['file']!r} has no sha256 in 'files'; {EXPORT_HINT}")
        if "external_data" in g and (not isinstance(g["external_data"], str) or g["external_data"] not in files):  # its weights: checked like the graph itself
            raise BundleError(f"{where}: graph {name!r} external data {g['external_data']!r} has no sha256 in 'files'; "
                              f"{EXPORT_HINT}")
        inputs = _tensors(g.get("inputs"), f"{where} graph {name!r} inputs")
        outputs = _tensors(g.get("outputs"), f"{where} graph {name!r} outputs")
        for kind, have, want in (("inputs", inputs, spec.inputs), ("outputs", outputs, spec.outputs)):
            want_t = tuple(TensorInfo(t.name, t.dtype, tuple(t.shape)) for t in want)
            if have != want_t:
                raise BundleError(
                    f"{where}: graph {name!r} {kind} {[(t.name, t.dtype, list(t.shape)) for t in have]} differ from the "
                    f"contract's {[(t.name, t.dtype, list(t.shape)) for t in want_t]}; the bundle was written by "
                    f"another version of qk-export: {EXPORT_HINT}"
                )
        profile = g.get("profile") or spec.profile()
        graphs[name] = GraphInfo(name, paths[g["file"]], inputs, outputs, profile)
    return graphs


def _number(s: dict, key: str, where: str, lo: float, hi: float, *, integer: bool = False, default=None):
    """sampler[key]: a finite number (an integer where `integer`) in [lo, hi], or BundleError."""
    if key not in s:
        if default is None:
            raise BundleError(f"{where}: sampler.{key} is missing; {EXPORT_HINT}")
        return default
    v = s[key]
    kind = "an integer" if integer else "a number"
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (integer and v != int(v)):
        raise BundleError(f"{where}: sampler.{key}={v!r}; must be {kind} from {lo:g} to {hi:g}; {EXPORT_HINT}")
    if not lo <= v <= hi:
        raise BundleError(f"{where}: sampler.{key}={v!r} is outside {lo:g}..{hi:g}; {EXPORT_HINT}")
    return int(v) if integer else float(v)


def _sampler(manifest: dict, where: str) -> SamplerConfig:
    s = manifest["sampler"]
    if not isinstance(s, dict):
        raise BundleError(f"{where}: 'sampler' must be an object; {EXPORT_HINT}")
    if s.get("scheduler", SCHEDULER) != SCHEDULER:
        raise BundleError(f"{where}: sampler.scheduler {s.get('scheduler')!r} is not supported; this runtime runs {SCHEDULER}")
    if s.get("noise", NOISE) != NOISE:
        raise BundleError(f"{where}: sampler.noise {s.get('noise')!r} is not supported; this runtime draws {NOISE!r}")
    g_lo, g_hi = GUIDANCE_RANGE
    if "gate_threshold" not in s:
        raise BundleError(f"{where}: sampler.gate_threshold is missing (null for the soft gate); {EXPORT_HINT}")
    buckets = s.get("region_buckets", list(LEGACY_REGION_BUCKETS))
    if (not isinstance(buckets, list) or not buckets or len(buckets) > 1024
            or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in buckets)
            or any(not 0 < b <= 1 for b in buckets) or any(a >= b for a, b in zip(buckets, buckets[1:]))
            or buckets[-1] != 1.0):
        raise BundleError(f"{where}: sampler.region_buckets={buckets!r}; must be increasing fractions in (0, 1] "
                          f"ending with 1.0; {EXPORT_HINT}")
    codec = s.get("codec")
    if codec is not None and not isinstance(codec, str):
        raise BundleError(f"{where}: sampler.codec={codec!r}; must be a string; {EXPORT_HINT}")
    return SamplerConfig(
        steps=_number(s, "steps", where, 1, MAX_STEPS, integer=True),
        text_guidance=_number(s, "text_guidance", where, *GUIDANCE_RANGE),
        image_guidance=_number(s, "image_guidance", where, *GUIDANCE_RANGE),
        gate_threshold=None if s["gate_threshold"] is None else _number(s, "gate_threshold", where, 0.0, 1.0),
        gen_guidance=None if s.get("gen_guidance") is None else _number(s, "gen_guidance", where, g_lo, g_hi),
        shift=_number(s, "shift", where, *SHIFT_RANGE, default=1.0),
        region_buckets=tuple(float(b) for b in buckets),
        halo=_number(s, "halo", where, 0, MAX_HALO, integer=True, default=1),
        codec=codec,
    )


def _composite(manifest: dict, where: str) -> Composite:
    """The manifest's `composite` entry (format 4 on); without one (formats 1-3), the gate alone."""
    version = manifest["format_version"]
    if "composite" not in manifest:
        return GATE_ONLY
    if version < COMPOSITE_FORMAT_VERSION:
        raise BundleError(f"{where}: 'composite' needs format_version {COMPOSITE_FORMAT_VERSION} or newer (this manifest "
                          f"has {version}, whose runtimes ignore it); {EXPORT_HINT}")
    try:
        return Composite.from_dict(manifest["composite"])
    except ValueError as exc:
        raise BundleError(f"{where}: 'composite' {exc}; {EXPORT_HINT}") from exc


def _few_step(manifest: dict, where: str) -> FewStep | None:
    """The manifest's `few_step` entry (format 5 on); None without one (the decoders take no step_size)."""
    if "few_step" not in manifest:
        return None
    version = manifest["format_version"]
    if version < FEW_STEP_FORMAT_VERSION:
        raise BundleError(f"{where}: 'few_step' needs format_version {FEW_STEP_FORMAT_VERSION} or newer (this manifest "
                          f"has {version}, whose decoders take no step_size); {EXPORT_HINT}")
    entry = manifest["few_step"]
    want = sorted(("steps", *FEW_STEP_FIELDS))
    if not isinstance(entry, dict) or sorted(entry) != want:
        have = sorted(entry) if isinstance(entry, dict) else entry
        raise BundleError(f"{where}: 'few_step' must be an object with exactly the keys {want}, has {have!r}; {EXPORT_HINT}")
    for key, value in FEW_STEP_FIELDS.items():
        kind = str if isinstance(value, str) else (int, float)
        if isinstance(entry[key], bool) or not isinstance(entry[key], kind) or entry[key] != value:
            raise BundleError(f"{where}: few_step.{key}={entry[key]!r}; this runtime runs only {value!r} (a newer "
                              f"sampler? upgrade query-kontext, or {EXPORT_HINT})")
    steps = entry["steps"]
    if (not isinstance(steps, list) or not steps or len(steps) > MAX_STEPS
            or not all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_STEPS for n in steps)
            or any(a >= b for a, b in zip(steps, steps[1:]))):
        raise BundleError(f"{where}: few_step.steps={steps!r}; must be a non-empty list of increasing integer step counts "
                          f"from 1 to {MAX_STEPS}; {EXPORT_HINT}")
    return FewStep(tuple(steps))


def graph_precision(manifest: dict, graph: str) -> str:
    """A graph's own precision (a shared text encoder's may differ from the bundle's), else the bundle's."""
    entry = manifest["graphs"].get(graph)
    return entry.get("precision", manifest["precision"]) if isinstance(entry, dict) else manifest["precision"]


def _weight_only(manifest: dict, graphs: dict[str, GraphInfo], where: str) -> frozenset[str]:
    """The INT8 graphs stored weight-only, which the runtimes open with ONNX Runtime's Q/DQ fusion
    off: the manifest's `quantization.weight_only`, or without one (bundles written before it) the
    INT8 ones among `contract.WEIGHT_ONLY_INT8_GRAPHS`."""
    record = manifest.get("quantization")
    if record is not None and not isinstance(record, dict):
        raise BundleError(f"{where}: 'quantization' must be an object (or null), got {record!r}; {EXPORT_HINT}")
    if record is None or WEIGHT_ONLY_KEY not in record:
        return frozenset(g for g in WEIGHT_ONLY_INT8_GRAPHS if g in graphs and graph_precision(manifest, g) == "int8")
    names = record[WEIGHT_ONLY_KEY]
    key = f"quantization.{WEIGHT_ONLY_KEY}"
    if (not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names)):
        raise BundleError(f"{where}: {key}={names!r}; must be a list of distinct graph names; {EXPORT_HINT}")
    for name in names:
        if name not in graphs:
            raise BundleError(f"{where}: {key} names {name!r}, which is not a graph of this bundle "
                              f"({', '.join(graphs)}); {EXPORT_HINT}")
        if graph_precision(manifest, name) != "int8":
            raise BundleError(f"{where}: {key} names {name!r}, whose precision is {graph_precision(manifest, name)!r}, "
                              f"not 'int8' (only INT8 graphs can be weight-only); {EXPORT_HINT}")
    return frozenset(names)


def open_bundle(path: str | Path, *, verify: bool = True, root: str | Path | None = None) -> Bundle:
    """Read and check a bundle folder. `verify=False` skips the sha256 of each file (not the rest).
    `root` (a qk-triton repository around a BLS model folder): the folder every named file must
    resolve inside instead of the bundle folder, '..' allowed within it."""
    folder = Path(path)
    manifest = _read_manifest(folder)
    where = str(folder / MANIFEST)
    files = manifest["files"]
    paths, folders = _file_paths(folder, manifest, where, Path(root) if root is not None else None)
    _check_files(folder, files, paths, verify)
    dims = _dims(manifest, where)
    few_step = _few_step(manifest, where)
    graphs = _graphs(manifest, dims, files, paths, where, few_step)
    if TOKENIZER not in files:
        raise BundleError(f"{where}: {TOKENIZER} is not listed in 'files'; {EXPORT_HINT}")
    precision = manifest["precision"]
    if precision not in PRECISIONS:
        raise BundleError(f"{where}: precision {precision!r} must be one of {', '.join(map(repr, PRECISIONS))}")
    sparse = manifest.get("sparse_attn", "none")
    if sparse not in ("none", "window", "region"):
        raise BundleError(f"{where}: sparse_attn {sparse!r} must be 'none', 'window' or 'region'")
    if sparse == "region" and "decoder_region" not in graphs:
        raise BundleError(f"{where}: sparse_attn is 'region' but the decoder_region graph is missing; {EXPORT_HINT}")
    return Bundle(
        path=folder,
        manifest=manifest,
        dims=dims,
        precision=precision,
        sparse_attn=sparse,
        graphs=graphs,
        sampler=_sampler(manifest, where),
        tokenizer_path=paths[TOKENIZER],
        files=dict(files),
        composite=_composite(manifest, where),
        few_step=few_step,
        weight_only=_weight_only(manifest, graphs, where),
        paths=paths,
        folders=folders,
    )

