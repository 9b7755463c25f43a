"""qk_runtime.triton: serve a bundle with NVIDIA Triton Inference Server (`qk-triton`).

    qk-triton --bundle engines/default/int8 --out triton-repo     # then: tritonserver --model-repository triton-repo

Modules: `repo` (the repository writer and its command line), `bls` (what the python-backend
models run: the runtime's EditSession over an `infer(model_name, inputs)` callable, and that
callable over Triton's BLS API), `pbtxt` (config.pbtxt text). `templates/model.py` is the python
backend's file the writer copies into the BLS models. Nothing here imports Triton: `model.py`
does, inside the server.
"""
from .bls import RepoModels, RepoSession, TritonBls, open_model_dir, run_request

__all__ = ["RepoModels", "RepoSession", "TritonBls", "open_model_dir", "run_request", "RepoError", "write_repository"]


def __getattr__(name: str):
    # the writer loads on first use, so that `python -m qk_runtime.triton.repo` runs it fresh
    if name in ("RepoError", "write_repository"):
        from . import repo

        return getattr(repo, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
