"""The machine's measured limit: one large matrix product per precision, through the same runtimes
the configurations use, in the same run.

Graphs (written with `onnx.helper`, opset 17):

| graph | what | runs on |
|---|---|---|
| `fp32` | `Y = A @ W`, A an input (M, K), W a float initializer (K, N) | ONNX Runtime, OpenVINO |
| `int8-qdq` | A -> QuantizeLinear -> DequantizeLinear (S8, per tensor), W as S8 per output channel behind a DequantizeLinear, then MatMul: the pattern the INT8 bundles use, which ONNX Runtime fuses into an integer GEMM and OpenVINO runs in int8 | both |
| `int8-matmulinteger` | `MatMulInteger(A u8, W s8)` -> int32: the integer GEMM itself | both (OpenVINO may refuse) |

and `torch.mm` in FP32 for the torch reference. Each is timed `repeats` times after two warm-up
calls; the peak is the best call's rate (a limit, not a typical value; the median is recorded
beside it). Shapes: `large` (1024^3, where GEMM libraries reach their best) and `decoder` (the
decoder's widest MatMul at the guidance batch: M = 3 x tokens, K = width, N = MLP width), which
shows how much of the large-GEMM rate a product of the model's own size can reach.
"""
from __future__ import annotations


import numpy as np

from .timing import summarize, time_calls


def matmul_model(kind: str, m: int, k: int, n: int, seed: int = 0):
    """An ONNX model computing one (m, k) x (k, n) product of `kind` (see the module doc)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    if kind == "fp32":
        inits.append(numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "W"))
        nodes.append(helper.make_node("MatMul", ["A", "W"], ["Y"]))
        a_type, y_type = TensorProto.FLOAT, TensorProto.FLOAT
    elif kind == "int8-qdq":
        inits += [
            numpy_helper.from_array(rng.integers(-63, 64, (k, n)).astype(np.int8), "Wq"),
            numpy_helper.from_array(np.full(n, 0.01, np.float32), "w_scale"),
            numpy_helper.from_array(np.zeros(n, np.int8), "w_zero"),
            numpy_helper.from_array(np.array(0.05, np.float32), "a_scale"),
            numpy_helper.from_array(np.array(0, np.int8), "a_zero"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["A", "a_scale", "a_zero"], ["Aq"]),
            helper.make_node("DequantizeLinear", ["Aq", "a_scale", "a_zero"], ["Adq"]),
            helper.make_node("DequantizeLinear", ["Wq", "w_scale", "w_zero"], ["Wdq"], axis=1),
            helper.make_node("MatMul", ["Adq", "Wdq"], ["Y"]),
        ]
        a_type, y_type = TensorProto.FLOAT, TensorProto.FLOAT
    elif kind == "int8-matmulinteger":
        inits += [
            numpy_helper.from_array(rng.integers(-63, 64, (k, n)).astype(np.int8), "Wq"),
            numpy_helper.from_array(np.array(128, np.uint8), "a_zero"),
            numpy_helper.from_array(np.array(0, np.int8), "w_zero"),
        ]
        nodes.append(helper.make_node("MatMulInteger", ["A", "Wq", "a_zero", "w_zero"], ["Y"]))
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
    else:
        raise ValueError(f"matmul kind {kind!r}; choose fp32, int8-qdq or int8-matmulinteger")
    graph = helper.make_graph(nodes, f"peak_{kind}", [helper.make_tensor_value_info("A", a_type, [m, k])],
                              [helper.make_tensor_value_info("Y", y_type, [m, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="qk-bench")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _input(kind: str, m: int, k: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    if kind == "int8-matmulinteger":
        return rng.integers(0, 256, (m, k)).astype(np.uint8)
    return rng.standard_normal((m, k)).astype(np.float32)


def _rate(times_ms: list[float], flops: float) -> dict:
    s = summarize(times_ms)
    return {"gflops_best": flops / s["min"] / 1e6, "gflops_median": flops / s["median"] / 1e6,
            "ms_best": s["min"], "ms_median": s["median"], "repeats": s["n"]}


def ort_runner(model_bytes: bytes, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as qk_runtime's backend
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model_bytes, sess_options=opts, providers=["CPUExecutionProvider"])
    return lambda feeds: sess.run(None, feeds)


def ov_runner(model_bytes: bytes, threads: int):
    import openvino as ov

    core = ov.Core()
    model = core.read_model(model_bytes)
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                                                 "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(threads)})
    request = compiled.create_infer_request()
    return lambda feeds: request.infer(feeds, share_inputs=True)


RUNNERS = {"ort-cpu": ort_runner, "ov-cpu": ov_runner}
PRECISION_OF = {"fp32": "fp32", "int8-qdq": "int8", "int8-matmulinteger": "int8"}


def measure(shapes: dict[str, tuple[int, int, int]], *, threads: int, repeats: int = 10, runtimes=("ort-cpu", "ov-cpu"),
            torch_fp32: bool = True) -> dict:
    """{"runs": [per runtime, kind, shape], "peak": {runtime: {precision: best GFLOP/s at the large shape}}}."""
    runs = []
    for runtime in runtimes:
        for kind in PRECISION_OF:
            for shape_name, (m, k, n) in shapes.items():
                entry = {"runtime": runtime, "kind": kind, "precision": PRECISION_OF[kind], "shape": shape_name,
                         "mkn": [m, k, n], "flops": 2 * m * k * n}
                try:
                    run = RUNNERS[runtime](matmul_model(kind, m, k, n).SerializeToString(), threads)
                    feeds = {"A": _input(kind, m, k)}
                    entry.update(_rate(time_calls(lambda: run(feeds), repeats, warmup=2), entry["flops"]))
                except Exception as exc:  # noqa: BLE001 - a runtime that cannot run a graph is a result
                    entry["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                runs.append(entry)
    if torch_fp32:
        import torch

        torch.set_num_threads(threads)
        for shape_name, (m, k, n) in shapes.items():
            a, w = torch.randn(m, k), torch.randn(k, n)
            entry = {"runtime": "torch", "kind": "fp32", "precision": "fp32", "shape": shape_name, "mkn": [m, k, n],
                     "flops": 2 * m * k * n}
            entry.update(_rate(time_calls(lambda: torch.mm(a, w), repeats, warmup=2), entry["flops"]))
            runs.append(entry)
    return {"runs": runs, "peak": peak_table(runs), "threads": threads}


def peak_table(runs: list[dict], shape: str = "large") -> dict:
    """{runtime: {precision: best GFLOP/s over the graphs of that precision}} at `shape`."""
    table: dict = {}
    for r in runs:
        if r.get("shape") != shape or "gflops_best" not in r:
            continue
        slot = table.setdefault(r["runtime"], {})
        if r["gflops_best"] > slot.get(r["precision"], 0.0):
            slot[r["precision"]] = r["gflops_best"]
    return table
