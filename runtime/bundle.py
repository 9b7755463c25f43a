"""Open and validate a bundle: the folder `qk-export` writes and every runtime reads.

A bundle is ONNX graphs named by the export contract (`contract.py`), a `tokenizer.json`, and
a `manifest.json` holding the model's dims, the graphs' tensor specs and TensorRT profiles, the
sampler settings, the compositing (format 4's `composite`, `composite.py`; without it the gate
alone), and a sha256 per file. `open_bundle` refuses anything it cannot run: another format or
version, a missing graph, a graph whose inputs differ from the contract, a `composite` entry it
does not know or in a manifest older than format 4, or a file whose bytes differ from the hash
the manifest recorded (re-export to fix).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .composite import GATE_ONLY, Composite
from .contract import (COMPOSITE_FORMAT_VERSION, FORMAT_VERSION, LEGACY_REGION_BUCKETS, MANIFEST, MIN_FORMAT_VERSION,
                       TOKENIZER, Dims, graph_specs)
from .errors import BundleError

FORMAT = "qk-bundle"
NOISE = "splitmix64-boxmuller-v1"  # the generator in noise.py
SCHEDULER = "FlowMatchEulerDiscreteScheduler"
REQUIRED_GRAPHS = ("text_encoder", "image_encoder", "image_decoder", "decoder")
EXPORT_HINT = "re-export it with qk-export (for example: qk-export --model CKPT --out DIR)"


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
class Bundle:
    path: Path
    manifest: dict
    dims: Dims
    precision: str  # "fp32" | "int8"
    sparse_attn: str  # "none" | "window" | "region"
    graphs: dict[str, GraphInfo]
    sampler: SamplerConfig
    tokenizer_path: Path
    files: dict[str, str]  # relative name -> sha256
    composite: Composite = GATE_ONLY  # how an edit's output meets its source (format 4's `composite`)

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
        """One hash for the whole bundle: sha256 of its canonical files map."""
        return files_digest(self.files)


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
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{mpath} is not valid JSON ({exc}); the bundle is corrupt: {EXPORT_HINT}") from exc
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


def _resolve(folder: Path, rel: str, where: str) -> Path:
    if not isinstance(rel, str) or not rel or Path(rel).is_absolute():
        raise BundleError(f"{where}: file name {rel!r} must be a path relative to the bundle folder")
    return folder / rel


def _check_files(folder: Path, files: dict, verify: bool) -> None:
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{folder / MANIFEST}: 'files' must map file names to sha256; {EXPORT_HINT}")
    for rel, want in files.items():
        path = _resolve(folder, rel, f"{folder / MANIFEST} files")
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


def _graphs(folder: Path, manifest: dict, dims: Dims, files: dict, where: str) -> dict[str, GraphInfo]:
    version = manifest["format_version"]
    raw = manifest["graphs"]
    if not isinstance(raw, dict):
        raise BundleError(f"{where}: 'graphs' must be an object; {EXPORT_HINT}")
    missing = [g for g in REQUIRED_GRAPHS if g not in raw]
    if missing:
        raise BundleError(f"{where}: graphs {missing} are missing; {EXPORT_HINT}")
    expected = graph_specs(dims, gateway="gateway" in raw, gate="cmg" in raw, region="decoder_region" in raw,
                           format_version=version)
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
        if g["file"] not in files:
            raise BundleError(f"{where}: graph {name!r} file {g['file']!r} has no sha256 in 'files'; {EXPORT_HINT}")
        if "external_data" in g and g["external_data"] not in files:  # its weights: checked like the graph itself
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
        graphs[name] = GraphInfo(name, _resolve(folder, g["file"], where), inputs, outputs, profile)
    return graphs


def _sampler(manifest: dict, where: str) -> SamplerConfig:
    s = manifest["sampler"]
    if not isinstance(s, dict):
        raise BundleError(f"{where}: 'sampler' must be an object; {EXPORT_HINT}")
    if s.get("scheduler", SCHEDULER) != SCHEDULER:
        raise BundleError(f"{where}: sampler.scheduler {s.get('scheduler')!r} is not supported; this runtime runs {SCHEDULER}")
    if s.get("noise", NOISE) != NOISE:
        raise BundleError(f"{where}: sampler.noise {s.get('noise')!r} is not supported; this runtime draws {NOISE!r}")
    try:
        thr = s["gate_threshold"]
        cfg = SamplerConfig(
            steps=int(s["steps"]),
            text_guidance=float(s["text_guidance"]),
            image_guidance=float(s["image_guidance"]),
            gate_threshold=None if thr is None else float(thr),
            gen_guidance=float(s["gen_guidance"]) if s.get("gen_guidance") is not None else None,
            shift=float(s.get("shift", 1.0)),
            region_buckets=tuple(float(b) for b in s.get("region_buckets", LEGACY_REGION_BUCKETS)),
            halo=int(s.get("halo", 1)),
            codec=s.get("codec"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{where}: sampler settings are incomplete or invalid ({exc!r}); {EXPORT_HINT}") from exc
    if cfg.steps < 1 or not cfg.region_buckets or cfg.region_buckets[-1] != 1.0 or cfg.halo < 0:
        raise BundleError(f"{where}: sampler settings out of range: {s}")
    return cfg


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


def open_bundle(path: str | Path, *, verify: bool = True) -> Bundle:
    """Read and check a bundle folder. `verify=False` skips the sha256 of each file (not the rest)."""
    folder = Path(path)
    manifest = _read_manifest(folder)
    where = str(folder / MANIFEST)
    files = manifest["files"]
    _check_files(folder, files, verify)
    dims = _dims(manifest, where)
    graphs = _graphs(folder, manifest, dims, files, where)
    if TOKENIZER not in files:
        raise BundleError(f"{where}: {TOKENIZER} is not listed in 'files'; {EXPORT_HINT}")
    precision = manifest["precision"]
    if precision not in ("fp32", "int8"):
        raise BundleError(f"{where}: precision {precision!r} must be 'fp32' or 'int8'")
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
        tokenizer_path=folder / TOKENIZER,
        files=dict(files),
        composite=_composite(manifest, where),
    )
