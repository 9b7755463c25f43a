"""qk_runtime: run a query-kontext bundle with ONNX Runtime, OpenVINO or TensorRT, without torch.

    from qk_runtime import EditSession
    with EditSession("engines/default/int8") as s:
        result = s.edit("in.png", "make the red circle blue", box=(8, 8, 24, 24))

Imports numpy, pillow and tokenizers; onnxruntime, openvino, tensorrt and cuda-python are
imported only when a backend that needs them starts.
"""
from .bundle import Bundle, open_bundle
from .errors import BackendUnavailable, BundleError, EngineMismatchError, InputError, QKRuntimeError
from .session import EditResult, EditSession, default_bundle_dir

__all__ = [
    "Bundle", "open_bundle", "EditSession", "EditResult", "default_bundle_dir",
    "QKRuntimeError", "InputError", "BundleError", "BackendUnavailable", "EngineMismatchError",
]
