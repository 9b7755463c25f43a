"""`qk-build`: TensorRT engines from a bundle's ONNX graphs.

    qk-build [--bundle DIR] [--out engines/<bundle-name>/<gpu>-trt<version>/] [--timing-cache FILE]

Each graph gets one optimization profile, the min / opt / max shapes of the bundle's manifest.
INT8 bundles hold explicit Q/DQ pairs and are built as strongly typed networks (the only INT8
path TensorRT 11 keeps); FP32 bundles are built with the FP16 builder flag where TensorRT has
it (10.x) and strongly typed in the ONNX file's FP32 where it does not (11.x). One timing cache
is loaded before and saved after the builds (valid for one GPU type and TensorRT version).
`engines.json` records the cache key the TensorRT backend checks at load time.

Needs TensorRT and an NVIDIA GPU; without them it exits 2 saying how to install. Verified
statically only where it was written (no TensorRT there): API names follow NVIDIA's TensorRT 10
Python documentation.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .bundle import open_bundle
from .engines import TIMING_CACHE, atomic_write, cache_key, default_engine_dir, engine_precision, write_engines_json
from .errors import BackendUnavailable, QKRuntimeError
from .files import check_output

TRT_MISSING = (
    "TensorRT is not installed: pip install 'query-kontext[trt]' on a machine with an NVIDIA GPU "
    "(TensorRT's libraries come from NVIDIA's package index), then rerun qk-build"
)


def _tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailable(TRT_MISSING) from exc
    return trt


def build_engines(bundle_dir: str | Path, out: str | Path | None = None, *, timing_cache: str | Path | None = None,
                  log=print) -> Path:
    """Build one engine per graph of the bundle; returns the engine folder."""
    trt = _tensorrt()
    from .backend_tensorrt import gpu_info

    bundle = open_bundle(bundle_dir)
    gpu, cc = gpu_info()
    out = Path(out) if out else default_engine_dir(bundle.path, gpu, trt.__version__)
    # engines written into the bundle would change the folder it is hashed by (InputError, a QKRuntimeError)
    check_output("--out", out, folders=[("the bundle", f) for f in bundle.folders], folder_output=True)
    cache_path = Path(timing_cache) if timing_cache else out / TIMING_CACHE
    has_fp16 = hasattr(trt.BuilderFlag, "FP16")
    precision = engine_precision(bundle.precision, has_fp16)
    strongly_typed = precision.endswith("strongly-typed")
    flags = 0
    if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
    engines = {}
    t_all = time.perf_counter()
    for name, info in bundle.graphs.items():
        t0 = time.perf_counter()
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(info.path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise QKRuntimeError(f"TensorRT could not parse {info.path}: {errors}")
        config = builder.create_builder_config()
        if not strongly_typed:
            config.set_flag(trt.BuilderFlag.FP16)
        cache = config.create_timing_cache(cache_bytes)
        config.set_timing_cache(cache, False)  # ignore_mismatch=False: a cache from another GPU is not used
        profile = builder.create_optimization_profile()
        for tensor, shapes in info.profile.items():
            profile.set_shape(tensor, tuple(shapes["min"]), tuple(shapes["opt"]), tuple(shapes["max"]))
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise QKRuntimeError(f"TensorRT failed to build an engine for {info.path} (see its log above)")
        plan = f"{name}.plan"
        atomic_write(out / plan, bytes(serialized))
        engines[name] = plan
        cache_bytes = bytes(config.get_timing_cache().serialize())
        log(f"qk-build: {name}: {out / plan} ({time.perf_counter() - t0:.1f} s)")
    atomic_write(cache_path, cache_bytes)
    key = cache_key(bundle, precision=precision, trt_version=trt.__version__, gpu_name=gpu, compute_capability=cc)
    command = f"qk-build --bundle {bundle.path} --out {out}"
    write_engines_json(out, key, engines, command)
    log(f"qk-build: {len(engines)} engines ({precision}, TensorRT {trt.__version__}, {gpu} sm{cc}) in {out}, "
        f"{time.perf_counter() - t_all:.1f} s")
    return out


def main(argv: list[str] | None = None) -> int:
    from .session import default_bundle_dir

    p = argparse.ArgumentParser(prog="qk-build", description="Build TensorRT engines from a query-kontext bundle.")
    p.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: the shipped engines/default/int8)")
    p.add_argument("--out", type=Path, default=None, help="engine folder (default: engines/<bundle-name>/<gpu>-trt<version>/)")
    p.add_argument("--timing-cache", type=Path, default=None, help="timing cache file to load and save (default: <out>/timing.cache)")
    args = p.parse_args(argv)
    try:
        _tensorrt()  # first: without TensorRT nothing else matters
        bundle = args.bundle if args.bundle is not None else default_bundle_dir()
        build_engines(bundle, args.out, timing_cache=args.timing_cache)
    except (QKRuntimeError, OSError, ValueError, RuntimeError) as exc:
        print(f"qk-build: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
