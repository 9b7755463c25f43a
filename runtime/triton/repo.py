"""`qk-triton`: lay out a bundle as an NVIDIA Triton Inference Server model repository.

    qk-triton [--bundle DIR] --out REPO [--backend onnx|tensorrt] [--engines DIR] [--max-batch 0]
              [--instances 1] [--device auto|gpu|cpu] [--copy] [--force] [--python-env PATH]

The repository (every `<graph>` of the bundle: text_encoder, image_encoder, image_decoder, gateway,
cmg, decoder, decoder_region):

    REPO/<graph>/config.pbtxt         platform onnxruntime_onnx (tensorrt_plan with --backend tensorrt);
                                      inputs and outputs from the manifest, -1 for dynamic axes,
                                      max_batch_size 0 (the guidance branches are the batch axis)
    REPO/<graph>/1/model.onnx         the bundle's graph, hard-linked (--copy: copied)
    REPO/<graph>/1/model.onnx/        instead, for a graph with external data: a folder holding
                                      model.onnx and its data file (Triton's layout for those)
    REPO/<graph>/1/model.plan         --backend tensorrt: the engine qk-build made for that graph
    REPO/qk_edit/config.pbtxt         python backend (BLS): image, instruction, [box, steps, seed,
                                      text_guidance, image_guidance] -> edited, gate
    REPO/qk_edit/1/model.py           templates/model.py: runs qk_runtime.triton.bls.RepoSession
    REPO/qk_edit/1/manifest.json      the bundle's manifest, files re-pointed at ../../<graph>/1/...,
                                      plus a `triton` section (source bundle, models, backend)
    REPO/qk_edit/1/tokenizer.json
    REPO/qk_generate/...              the same for text-to-image: prompt, [steps, seed, guidance] -> image

Every file placed is checked against the sha256 the bundle's manifest records (engines: against
the engine file they were taken from). The repository is written under a hidden temporary name
beside --out and renamed into place at the end: on any error nothing is left behind. An existing
non-empty --out is refused unless --force is given and it is a repository qk-triton wrote.

The BLS models import `qk_runtime` (this package) rather than carrying copies of its modules: one
implementation of the loop, the one the tests check. Triton's python backend must therefore have
`query-kontext` installed (or an EXECUTION_ENV_PATH environment with it: --python-env).
Written against Triton's documented model-repository, model-configuration and python-backend
APIs; Triton itself was not run where this was written.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from importlib import metadata, resources
from pathlib import Path

from ..bundle import Bundle, open_bundle, sha256_file
from ..contract import MANIFEST, TOKENIZER
from ..engines import bundle_label, engines_root, read_engines_json, rebuild_command
from ..errors import InputError, QKRuntimeError
from ..files import check_output, read_json
from . import pbtxt
from .bls import MODEL_NAMES, REPO_FORMAT, REPO_FORMAT_VERSION, IOSpec, edit_io, generate_io

VERSION_DIR = "1"
PLATFORMS = {"onnx": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}
MODEL_FILES = {"onnx": "model.onnx", "tensorrt": "model.plan"}
DEVICES = {"auto": "KIND_AUTO", "gpu": "KIND_GPU", "cpu": "KIND_CPU"}
TRITON_TYPES = {
    "float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
    "int8": "TYPE_INT8", "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL",
}
MIN_BATCHED = 3  # an edit sends its three guidance branches as one batch


class RepoError(QKRuntimeError, ValueError):
    """Arguments, a bundle or an engine folder that qk-triton cannot lay out."""


def _version() -> str:
    try:
        return metadata.version("query-kontext")
    except metadata.PackageNotFoundError:
        return "unknown"


# --------------------------------------------------------------------------- config.pbtxt


def _tensor(name: str, dtype: str, shape, batched: bool) -> dict:
    triton_type = TRITON_TYPES.get(dtype)
    if triton_type is None:
        raise RepoError(f"tensor {name!r} has dtype {dtype!r}, which has no Triton type here (known: {sorted(TRITON_TYPES)})")
    dims = [-1 if isinstance(d, str) else int(d) for d in shape]
    out = {"name": name, "data_type": pbtxt.Enum(triton_type)}
    if not batched:
        return {**out, "dims": dims}
    if not dims[1:]:  # (B,): Triton wants dims [1] reshaped to a scalar per row
        return {**out, "dims": [1], "reshape": {"shape": []}}
    return {**out, "dims": dims[1:]}


def network_config(bundle: Bundle, graph: str, model: str, *, backend: str, max_batch: int, instances: int,
                   device: str) -> dict:
    """config.pbtxt of one per-network model, from the manifest's tensor specs."""
    info = bundle.graphs[graph]
    batched = max_batch > 0
    config = {
        "name": model,
        "platform": PLATFORMS[backend],
        "max_batch_size": max_batch,
        "input": [_tensor(t.name, t.dtype, t.shape, batched) for t in info.inputs],
        "output": [_tensor(t.name, t.dtype, t.shape, batched) for t in info.outputs],
        "instance_group": [{"count": instances, "kind": pbtxt.Enum(DEVICES[device])}],
    }
    if batched:
        config["dynamic_batching"] = {}
    return config


def _io(spec: IOSpec) -> dict:
    out = {"name": spec.name, "data_type": pbtxt.Enum(spec.triton_type), "dims": list(spec.dims)}
    return {**out, "optional": True} if spec.optional else out


def bls_config(model: str, mode: str, bundle: Bundle, *, instances: int, python_env: str | None) -> dict:
    """config.pbtxt of qk_edit / qk_generate (python backend)."""
    inputs, outputs = (edit_io if mode == "edit" else generate_io)(bundle.dims)
    params = {"mode": mode, "verify_sha256": "true", "written_by": f"query-kontext {_version()}"}
    if python_env:
        params["EXECUTION_ENV_PATH"] = python_env
    return {
        "name": model,
        "backend": "python",
        "max_batch_size": 0,
        "input": [_io(s) for s in inputs],
        "output": [_io(s) for s in outputs],
        "instance_group": [{"count": instances, "kind": pbtxt.Enum("KIND_CPU")}],
        "parameters": [{"key": k, "value": {"string_value": v}} for k, v in params.items()],
    }


# --------------------------------------------------------------------------- checks


def _is_qk_repo(folder: Path) -> bool:
    try:
        manifest = read_json(folder / MODEL_NAMES["edit"] / VERSION_DIR / MANIFEST, RepoError)
    except RepoError:
        return False
    return isinstance(manifest, dict) and (manifest.get("triton") or {}).get("format") == REPO_FORMAT


def _check_out(out: Path, bundle: Bundle, force: bool, engines_dir: Path | None = None) -> None:
    if out.exists() and not out.is_dir():
        raise RepoError(f"--out {out} is a file; give a folder for the model repository")
    ro = out.resolve()
    for folder in bundle.folders:  # the bundle and a sibling it shares a text encoder with
        if ro == folder or folder in ro.parents or ro in folder.parents:
            raise RepoError(f"--out {out} and the bundle folder {folder} (read by --bundle {bundle.path}) overlap; "
                            f"write the repository to a folder outside the bundle")
    try:
        check_output("--out", out, folders=[("--engines", engines_dir)] if engines_dir else [], folder_output=True)
    except InputError as exc:
        raise RepoError(str(exc)) from None
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise RepoError(f"--out {out} exists and is not empty; choose another folder, or pass --force to replace "
                            f"a repository qk-triton wrote there")
        if not _is_qk_repo(out):
            raise RepoError(f"--out {out} exists and was not written by qk-triton (no {MODEL_NAMES['edit']}/{VERSION_DIR}/"
                            f"{MANIFEST} with a 'triton' section); --force replaces only qk-triton repositories: "
                            f"choose another folder or remove this one yourself")


def _check_args(backend: str, max_batch: int, instances: int, device: str) -> None:
    if backend not in PLATFORMS:
        raise RepoError(f"--backend {backend!r}; choose one of {sorted(PLATFORMS)}")
    if device not in DEVICES:
        raise RepoError(f"--device {device!r}; choose one of {sorted(DEVICES)}")
    if isinstance(instances, bool) or not isinstance(instances, int) or instances < 1:
        raise RepoError(f"--instances {instances!r}; must be an integer >= 1 (instances of each model)")
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 0:
        raise RepoError(f"--max-batch {max_batch!r}; must be 0 (no Triton batching) or an integer >= {MIN_BATCHED}")
    if 0 < max_batch < MIN_BATCHED:
        raise RepoError(f"--max-batch {max_batch}: an edit sends its {MIN_BATCHED} guidance branches as one batch, so "
                        f"Triton batching needs max_batch_size >= {MIN_BATCHED}; use 0 (no Triton batching) or >= {MIN_BATCHED}")
    if backend == "tensorrt" and max_batch:
        raise RepoError("--max-batch must be 0 with --backend tensorrt: qk-build's engines have one profile with batch "
                        "up to 3 (2 for the image codec), too small to add Triton's batching on top; use --max-batch 0")
    if backend == "tensorrt" and device == "cpu":
        raise RepoError("--device cpu with --backend tensorrt: TensorRT engines run on the GPU; use --device gpu or auto")


def find_engines(bundle: Bundle, engines_dir: Path | None) -> tuple[Path, dict]:
    """The qk-build engine folder for this bundle: `engines_dir`, or the only one in the default
    place (engines/<bundle-label>/<gpu>-trt<version>/). Checks it was built for this bundle."""
    if engines_dir is None:
        base = engines_root(bundle.path) / bundle_label(bundle.path)
        found = sorted(p.parent for p in base.glob("*/engines.json"))
        if not found:
            raise RepoError(
                f"--backend tensorrt needs TensorRT engines for {bundle.path}, and there are none under {base}; build "
                f"them with `qk-build --bundle {bundle.path}` on a machine with your Triton container's GPU type and "
                f"TensorRT version (inside the container is simplest), or pass --engines DIR")
        if len(found) > 1:
            raise RepoError(f"several engine folders for {bundle.path}: {', '.join(str(p) for p in found)}; choose the one "
                            f"built with your Triton container's TensorRT version and GPU with --engines DIR")
        engines_dir = found[0]
    engines_dir = Path(engines_dir)
    if not (engines_dir / "engines.json").is_file():
        raise RepoError(f"--engines {engines_dir} has no engines.json; build the engines with "
                        f"{rebuild_command(bundle.path, engines_dir)}")
    data = read_engines_json(engines_dir)
    built_for = (data.get("key") or {}).get("bundle_sha")
    if built_for != bundle.sha:
        raise RepoError(f"the engines in {engines_dir} were built for another bundle (bundle sha {str(built_for)[:16]}..., "
                        f"this one is {bundle.sha[:16]}...); rebuild them with {rebuild_command(bundle.path, engines_dir)}")
    plans = data["engines"]
    missing = [g for g in bundle.graphs if not isinstance(plans.get(g), str) or not (engines_dir / plans[g]).is_file()]
    if missing:
        raise RepoError(f"the engines in {engines_dir} lack {missing}; rebuild them with "
                        f"{rebuild_command(bundle.path, engines_dir)}")
    return engines_dir, data


# --------------------------------------------------------------------------- files


def _place(src: Path, dst: Path, want_sha: str, copy: bool, what: str) -> None:
    """Hard-link (or copy) `src` to `dst`, then check the sha256 of what landed there."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    linked = False
    if not copy:
        try:
            os.link(src, dst)
            linked = True
        except OSError:  # another filesystem, or links not allowed: copy
            pass
    if not linked:
        shutil.copyfile(src, dst)
    have = sha256_file(dst)
    if have != want_sha:
        raise RepoError(f"{what}: {src} has sha256 {have[:16]}..., but {want_sha[:16]}... is recorded for it; the file "
                        f"was changed or damaged after it was written: re-export the bundle (qk-export) or rebuild the "
                        f"engines (qk-build)")


def _companions(bundle: Bundle, graph: str) -> list[str]:
    """Files that must sit beside a graph file: its ONNX external data."""
    entry = bundle.manifest["graphs"][graph]
    rel = Path(entry["file"])
    names = [str(rel.parent / entry["external_data"])] if entry.get("external_data") else []
    data = f"{entry['file']}.data"
    if data in bundle.files and data not in names:
        names.append(data)
    for name in names:
        if name not in bundle.files:
            raise RepoError(f"{bundle.path / MANIFEST}: graph {graph!r} needs {name}, which has no sha256 in 'files'; "
                            f"re-export the bundle")
    return [os.path.normpath(n) for n in names]


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _layout(bundle: Bundle, build: Path, *, backend: str, engines: tuple[Path, dict] | None, max_batch: int,
            instances: int, device: str, copy: bool, python_env: str | None, command: str) -> list[str]:
    """Write the repository into `build`; returns the model names."""
    graph_files, files = {}, {}
    for graph in bundle.graphs:
        model = graph
        vdir = build / model / VERSION_DIR
        if engines is not None:
            edir, data = engines
            src = edir / data["engines"][graph]
            sha = sha256_file(src)
            _place(src, vdir / MODEL_FILES["tensorrt"], sha, copy, f"engine of {graph}")
            rel = f"{model}/{VERSION_DIR}/{MODEL_FILES['tensorrt']}"
            files[rel] = sha
        else:
            entry = bundle.manifest["graphs"][graph]
            extra = _companions(bundle, graph)
            target = vdir / MODEL_FILES["onnx"] / MODEL_FILES["onnx"] if extra else vdir / MODEL_FILES["onnx"]
            _place(bundle.paths[entry["file"]], target, bundle.files[entry["file"]], copy, f"bundle {bundle.path}")
            rel = target.relative_to(build).as_posix()
            files[rel] = bundle.files[entry["file"]]
            for name in extra:
                dst = target.parent / Path(name).name
                _place(bundle.paths[name], dst, bundle.files[name], copy, f"bundle {bundle.path}")
                files[dst.relative_to(build).as_posix()] = bundle.files[name]
        graph_files[graph] = rel
        config = network_config(bundle, graph, model, backend=backend, max_batch=max_batch, instances=instances, device=device)
        _write_text(build / model / "config.pbtxt", pbtxt.dumps(config))

    template = resources.files("qk_runtime.triton").joinpath("templates", "model.py").read_text(encoding="utf-8")
    for mode, model in MODEL_NAMES.items():
        vdir = build / model / VERSION_DIR
        up = "../../"  # from REPO/<bls>/1/ to REPO/
        manifest = dict(bundle.manifest)
        manifest["graphs"] = {}
        for graph, entry in bundle.manifest["graphs"].items():
            new = {**entry, "file": up + graph_files[graph]}
            new.pop("external_data", None)  # it now sits beside the graph file, under its own name
            manifest["graphs"][graph] = new
        manifest["files"] = {up + rel: sha for rel, sha in files.items()}
        manifest["files"][TOKENIZER] = bundle.files[TOKENIZER]
        manifest["triton"] = {
            "format": REPO_FORMAT,
            "version": REPO_FORMAT_VERSION,
            "mode": mode,
            "models": {g: g for g in bundle.graphs},
            "backend": backend,
            "max_batch_size": max_batch,
            "source_bundle": str(bundle.path.resolve()),
            "source_bundle_sha": bundle.sha,
            "engines": None if engines is None else {"folder": str(engines[0].resolve()), "key": engines[1].get("key")},
            "written_by": f"query-kontext {_version()}",
            "command": command,
        }
        _place(bundle.paths[TOKENIZER], vdir / TOKENIZER, bundle.files[TOKENIZER], copy, f"bundle {bundle.path}")
        _write_text(vdir / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        _write_text(vdir / "model.py", template)
        config = bls_config(model, mode, bundle, instances=instances, python_env=python_env)
        _write_text(build / model / "config.pbtxt", pbtxt.dumps(config))
    return list(bundle.graphs) + list(MODEL_NAMES.values())


def write_repository(bundle_dir: str | Path, out: str | Path, *, backend: str = "onnx", engines: str | Path | None = None,
                     max_batch: int = 0, instances: int = 1, device: str = "auto", copy: bool = False,
                     force: bool = False, python_env: str | None = None, command: str | None = None,
                     log=print) -> Path:
    """Lay out `bundle_dir` as a Triton model repository at `out` (see the module doc). Returns `out`."""
    out = Path(out).resolve()
    _check_args(backend, max_batch, instances, device)
    if engines and backend != "tensorrt":
        raise RepoError("--engines is only used with --backend tensorrt")
    bundle = open_bundle(bundle_dir, verify=False)  # structure now; every file's sha256 as it is placed
    found = find_engines(bundle, Path(engines) if engines else None) if backend == "tensorrt" else None
    _check_out(out, bundle, force, found[0] if found else None)
    command = command or (f"write_repository({str(bundle_dir)!r}, {str(out)!r}, backend={backend!r}, "
                          f"max_batch={max_batch}, instances={instances}, device={device!r})")

    out.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        os.chmod(build, 0o755)  # mkdtemp makes 0700 folders; Triton may run as another user
        models = _layout(bundle, build, backend=backend, engines=found, max_batch=max_batch, instances=instances,
                         device=device, copy=copy, python_env=python_env, command=command)
        if out.exists():  # empty, or a qk-triton repository with --force
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.rename(out, old / "repo")
            try:
                os.rename(build, out)
            except OSError:
                os.rename(old / "repo", out)
                raise
            shutil.rmtree(old)
        else:
            os.rename(build, out)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    log(f"qk-triton: wrote {out}: {len(models)} models ({', '.join(models)}), {PLATFORMS[backend]}, "
        f"max_batch_size {max_batch}, {instances} instance(s) each, files {'copied' if copy else 'hard-linked where possible'} "
        f"and checked against their sha256. Serve with `tritonserver --model-repository {out}`; qk_edit and qk_generate "
        f"need `pip install query-kontext` in Triton's python environment")
    return out


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    from ..session import default_bundle_dir

    p = argparse.ArgumentParser(prog="qk-triton", description="Lay out a query-kontext bundle as an NVIDIA Triton "
                                "Inference Server model repository (one model per network plus BLS edit/generate models).")
    p.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: the shipped engines/default/int8)")
    p.add_argument("--out", type=Path, required=True, help="model repository folder to write")
    p.add_argument("--backend", choices=sorted(PLATFORMS), default="onnx",
                   help="onnx: ONNX Runtime backend on the bundle's graphs (default); tensorrt: engines from qk-build")
    p.add_argument("--engines", type=Path, default=None,
                   help="qk-build's engine folder (default with --backend tensorrt: the only one under engines/<bundle>/)")
    p.add_argument("--max-batch", type=int, default=0,
                   help="max_batch_size of the per-network models: 0 (default) sends the guidance branches as the "
                        f"explicit batch axis; >= {MIN_BATCHED} lets Triton batch requests together (onnx only)")
    p.add_argument("--instances", type=int, default=1, help="instances of each model (default 1)")
    p.add_argument("--device", choices=sorted(DEVICES), default="auto",
                   help="where the per-network models run: auto (a GPU if Triton has one, default), gpu, cpu")
    p.add_argument("--copy", action="store_true", help="copy the files instead of hard-linking them")
    p.add_argument("--force", action="store_true", help="replace --out if it is a repository qk-triton wrote")
    p.add_argument("--python-env", default=None,
                   help="EXECUTION_ENV_PATH for the python backend models (a conda-pack environment with query-kontext)")
    args = p.parse_args(argv)
    try:
        bundle = args.bundle if args.bundle is not None else default_bundle_dir()
        command = "qk-triton " + " ".join(argv if argv is not None else sys.argv[1:])
        write_repository(bundle, args.out, backend=args.backend, engines=args.engines, max_batch=args.max_batch,
                         instances=args.instances, device=args.device, copy=args.copy, force=args.force,
                         python_env=args.python_env, command=command)
    except QKRuntimeError as exc:
        print(f"qk-triton: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # name --out, not the hidden build folder the errno names
        print(f"qk-triton: error: cannot write the repository {args.out}: {exc.strerror or exc}; choose a --out where "
              f"you can write", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
