"""The library allocates nothing per denoising step once warmed up.

qk_cpp_probe counts every operator-new call in the process (its replacement operator new sees
the library's and ONNX Runtime's C++ allocations alike). It times edits of 4 and 12 steps
after two warm-up edits: the difference over 8 steps is the cost of one step. It then runs the
decoder through the same backend, bound once to fixed tensors, and counts ONNX Runtime's own
allocations per Run. The library's share is the difference, which must be zero."""
from __future__ import annotations

from cpp_helpers import THREADS, probe


def test_no_per_step_allocations(cpp_build, fp32_bundle, scene_png):
    out = probe(cpp_build, "allocs", fp32_bundle, scene_png, THREADS)
    assert out["news_per_edit"][1] > out["news_per_edit"][0] > 0  # the counter sees allocations at all
    assert out["news_per_step_by_library"] == 0, out
