"""Error classes of the runtime. Each message names the value, what was allowed, and the fix."""
from __future__ import annotations


class QKRuntimeError(Exception):
    """Base class of every error the runtime raises on purpose."""


class InputError(QKRuntimeError, ValueError):
    """An image, box, instruction or option the runtime refuses."""


class BundleError(QKRuntimeError, ValueError):
    """A bundle folder that is missing, incomplete, corrupt or of another format."""


class BackendUnavailable(QKRuntimeError, RuntimeError):
    """A requested backend whose library, device or engines are not present here."""


class EngineMismatchError(QKRuntimeError, RuntimeError):
    """TensorRT engines built for another bundle, GPU, TensorRT version or profile set."""
