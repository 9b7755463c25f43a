"""`qk-build`: TensorRT engines from a bundle's ONNX graphs, and the one-command check of them.

    qk-build [--bundle DIR] [--out engines/<bundle-name>/<gpu>-trt<version>/] [--timing-cache FILE]
    qk-build --golden BUNDLE                      # save fixed inputs and outputs of every graph (CPU)
    qk-build --check BUNDLE [--engine-dir DIR]    # run the engines on them and compare
    qk-build --check BUNDLE --provider cpu|cuda|tensorrt   # ONNX Runtime with that execution provider

Engines are assembled from Polygraphy's TensorRT loaders (`graph_loaders`): the network parsed
from the ONNX file (`NetworkFromOnnxPath`, external weights read beside it), a builder config
(`CreateConfig`) with one optimization profile per graph holding the manifest's min / opt / max
shapes, and the engine serialized (`EngineBytesFromNetwork`) and saved (`SaveBytes`). INT8
bundles hold explicit Q/DQ pairs and FP16 bundles their own float16 types: both are built as
strongly typed networks (the only INT8 path TensorRT 11 keeps). FP32 bundles are built with the
FP16 builder flag where TensorRT has it (10.x) and strongly typed in the ONNX file's FP32 where
it does not (11.x). TF32 stays on for FP32 layers where TensorRT has the flag (TensorRT's own
default; Polygraphy's is off). One timing cache is loaded before each build (a cache from
another GPU is not used) and saved after it. Engines and the cache are written to a temporary
name in the engine folder, synced and renamed. `engines.json` records the cache key the
TensorRT backend checks at load time.

Needs TensorRT, Polygraphy and an NVIDIA GPU; without them it exits 2 saying how to install.
Checked statically where it was written (no TensorRT there): the loaders are assembled and
inspected without building (tests/qk_runtime/test_build.py); the TensorRT calls follow NVIDIA's
TensorRT 10 Python API through Polygraphy 0.53.

`--golden` and `--check`: `golden.py`.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .bundle import GraphInfo, open_bundle
from .engines import TIMING_CACHE, atomic_write_with, cache_key, default_engine_dir, engine_precision, write_engines_json
from .errors import BackendUnavailable, QKRuntimeError
from .files import check_output

TRT_MISSING = (
    "TensorRT is not installed: pip install 'query-kontext[trt]' on a machine with an NVIDIA GPU "
    "(TensorRT's libraries come from NVIDIA's package index), then rerun qk-build"
)
POLYGRAPHY_MISSING = "Polygraphy is not installed: pip install 'query-kontext[trt]' (or pip install polygraphy)"


def _tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailable(TRT_MISSING) from exc
    return trt


def _polygraphy_trt():
    """Polygraphy's TensorRT loaders (importable without TensorRT: Polygraphy imports it lazily)."""
    try:
        from polygraphy.backend import trt as ptrt
    except ImportError as exc:
        raise BackendUnavailable(POLYGRAPHY_MISSING) from exc
    return ptrt


def graph_loaders(info: GraphInfo, precision: str, *, tf32: bool = True, timing_cache: Path | None = None):
    """Polygraphy's (network, config) loaders for one graph, not yet called: the ONNX file parsed
    strongly typed when `precision` says so, and a builder config with the graph's profile from
    the manifest, the FP16 flag for a weakly typed FP32 build, TF32 as asked and the timing cache
    to load (when the file exists)."""
    ptrt = _polygraphy_trt()
    strongly_typed = precision.endswith("strongly-typed")
    profile = ptrt.Profile()
    for tensor, shapes in info.profile.items():
        profile.add(tensor, min=tuple(shapes["min"]), opt=tuple(shapes["opt"]), max=tuple(shapes["max"]))
    network = ptrt.NetworkFromOnnxPath(str(info.path), strongly_typed=strongly_typed)
    cache = str(timing_cache) if timing_cache is not None and Path(timing_cache).is_file() else None
    config = ptrt.CreateConfig(tf32=tf32, fp16=not strongly_typed, profiles=[profile], load_timing_cache=cache)
    return network, config


def build_engines(bundle_dir: str | Path, out: str | Path | None = None, *, timing_cache: str | Path | None = None,
                  log=print) -> Path:
    """Build one engine per graph of the bundle; returns the engine folder."""
    trt = _tensorrt()
    ptrt = _polygraphy_trt()
    from polygraphy.backend.common import SaveBytes
    from polygraphy.exception import PolygraphyException

    from .backend_tensorrt import gpu_info

    bundle = open_bundle(bundle_dir)
    gpu, cc = gpu_info()
    out = Path(out) if out else default_engine_dir(bundle.path, gpu, trt.__version__)
    # engines written into the bundle would change the folder it is hashed by (InputError, a QKRuntimeError)
    check_output("--out", out, folders=[("the bundle", f) for f in bundle.folders], folder_output=True)
    cache_path = Path(timing_cache) if timing_cache else out / TIMING_CACHE
    precision = engine_precision(bundle.precision, hasattr(trt.BuilderFlag, "FP16"))
    tf32 = hasattr(trt.BuilderFlag, "TF32")

    engines = {}
    t_all = time.perf_counter()
    for name, info in bundle.graphs.items():
        t0 = time.perf_counter()
        network, config = graph_loaders(info, precision, tf32=tf32, timing_cache=cache_path)
        try:
            parsed = network()  # (builder, network, parser)
        except PolygraphyException as exc:
            raise QKRuntimeError(f"TensorRT could not parse {info.path}: {str(exc).strip()}") from None
        plan = f"{name}.plan"

        def save_engine(f, parsed=parsed, config=config):
            def save_cache(cache_file):
                SaveBytes(ptrt.EngineBytesFromNetwork(parsed, config=config, save_timing_cache=cache_file), f)()

            atomic_write_with(cache_path, save_cache)  # the cache this build extended, then the engine's rename

        try:
            atomic_write_with(out / plan, save_engine)
        except PolygraphyException as exc:
            raise QKRuntimeError(f"TensorRT failed to build an engine for {info.path} ({str(exc).strip()}; "
                                 f"see its log above)") from None
        engines[name] = plan
        log(f"qk-build: {name}: {out / plan} ({time.perf_counter() - t0:.1f} s)")
    key = cache_key(bundle, precision=precision, trt_version=trt.__version__, gpu_name=gpu, compute_capability=cc)
    command = f"qk-build --bundle {bundle.path} --out {out}"
    write_engines_json(out, key, engines, command)
    log(f"qk-build: {len(engines)} engines ({precision}, TensorRT {trt.__version__}, {gpu} sm{cc}) in {out}, "
        f"{time.perf_counter() - t_all:.1f} s")
    return out


def main(argv: list[str] | None = None) -> int:
    from .session import default_bundle_dir

    p = argparse.ArgumentParser(prog="qk-build", description="Build TensorRT engines from a query-kontext bundle, "
                                "save a bundle's golden outputs, or check engines (or an ONNX Runtime provider) "
                                "against them.")
    p.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: the shipped engines/default/int8)")
    p.add_argument("--out", type=Path, default=None, help="engine folder (default: engines/<bundle-name>/<gpu>-trt<version>/)")
    p.add_argument("--timing-cache", type=Path, default=None, help="timing cache file to load and save (default: <out>/timing.cache)")
    p.add_argument("--golden", type=Path, default=None, metavar="BUNDLE",
                   help="run every graph of BUNDLE on fixed inputs with ONNX Runtime's CPU provider and save inputs and "
                        "outputs in the bundle (golden.json, golden.npz, listed in its manifest with sha256)")
    p.add_argument("--check", type=Path, default=None, metavar="BUNDLE",
                   help="run BUNDLE's golden inputs through its TensorRT engines (or --provider) and compare with the "
                        "golden outputs within each graph's tolerance; exit 1 naming the graphs that differ")
    p.add_argument("--provider", choices=["cpu", "cuda", "tensorrt"], default=None,
                   help="with --check: ONNX Runtime with this execution provider instead of the engines")
    p.add_argument("--engine-dir", type=Path, default=None,
                   help="with --check: the engine folder (default: engines/<bundle-name>/<gpu>-trt<version>/)")
    args = p.parse_args(argv)
    if args.golden is not None or args.check is not None:
        return _golden_or_check(p, args)
    if args.provider is not None or args.engine_dir is not None:
        p.error("--provider and --engine-dir go with --check BUNDLE")
    try:
        _tensorrt()  # first: without TensorRT nothing else matters
        _polygraphy_trt()
        bundle = args.bundle if args.bundle is not None else default_bundle_dir()
        build_engines(bundle, args.out, timing_cache=args.timing_cache)
    except (QKRuntimeError, OSError, ValueError, RuntimeError) as exc:
        print(f"qk-build: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _golden_or_check(p: argparse.ArgumentParser, args) -> int:
    from .golden import check_golden, format_table, write_golden

    if args.golden is not None and args.check is not None:
        p.error("--golden and --check are two commands: save the golden outputs first, then check")
    if args.bundle is not None or args.out is not None or args.timing_cache is not None:
        p.error("--golden / --check take the bundle as their argument; --bundle, --out and --timing-cache are for building")
    if args.golden is not None and (args.provider is not None or args.engine_dir is not None):
        p.error("--golden runs ONNX Runtime's CPU provider; --provider and --engine-dir go with --check")
    try:
        if args.golden is not None:
            write_golden(args.golden, log=lambda msg: print(f"qk-build: {msg}"))
            return 0
        report = check_golden(args.check, provider=args.provider, engine_dir=args.engine_dir)
    except (QKRuntimeError, OSError, ValueError, RuntimeError) as exc:
        print(f"qk-build: error: {exc}", file=sys.stderr)
        return 2
    print(format_table(report))
    failed = [r.graph for r in report.rows if not r.ok]
    if failed:
        print(f"qk-build: --check {args.check}: mismatch in graph(s) {', '.join(failed)} on {report.runner}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
