"""qk-bench: latency per stage and quality per precision of the unified model, against the torch
reference, with the machine's measured limit beside them.

Modules (each importable without torch, so the GPU script and the runtime-side workers stay light):

| module | what |
|---|---|
| `cli.py` | `qk-bench`: arguments, then `suite.run` |
| `suite.py` | one run: machine, bundles, import time, peak, every configuration in its own process, scaling, report |
| `configs.py` | the configurations (engine, backend, precision, sparsity) and why some are skipped here |
| `bundles.py` | the bundles a run needs, exported once into a cache keyed by checkpoint and export code |
| `worker.py` | `python -m qk_bench.worker SPEC OUT`: one configuration, one process (its own peak RSS) |
| `engines.py` | the timed editors: torch reference (eager / compiled), `qk_runtime` sessions, the plain OpenVINO peer |
| `workload.py` | the edit scenes (region about 5 / 25 / 100 % of the image), graph feeds, PSNR |
| `timing.py` | clocks (monotonic on CPUs, CUDA events on GPUs) and median / p90 / p99 summaries |
| `flops.py` | FLOPs of one decoder step from the config, split by what INT8 bundles quantize |
| `peak.py` | the machine's limit: a large MatMul in FP32 and INT8 through ONNX Runtime, OpenVINO and torch |
| `scaling.py` | decoder-step latency and memory against image side and preset (random weights) |
| `quality.py` | `qk-eval` edit success and drift of a configuration |
| `machine.py` | CPU model and flags, GPU, library versions |
| `report.py` | targets, the markdown tables, the PNG charts |
"""
