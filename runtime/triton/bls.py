"""The BLS side of a `qk-triton` repository: the runtime's own edit and generate loops, with every
network call sent to another model of the repository.

Nothing here re-implements the sampler. `RepoSession` is an `EditSession` whose backend is an
`infer(model_name, inputs) -> outputs` callable, so an edit runs exactly `EditSession._edit`
(tokenizer, encoders, gateway, CMG gate, guidance, Euler steps with the portable noise, decoding,
the source's pixels outside the gate) and a generation exactly `EditSession._generate`:

    repo = open_model_dir(Path("REPO/qk_edit/1"))           # its manifest.json and tokenizer.json
    session = RepoSession(repo, infer)                        # infer(model, {name: array}) -> {name: array}
    outputs = run_request(session, "edit", {"image": ..., "instruction": np.array([b"..."], object)})

Inside Triton `infer` is `TritonBls`, which wraps `pb_utils.InferenceRequest(...).exec()`; the
tests wrap ONNX Runtime sessions on the repository's model files instead. `model.py` (the python
backend's file, in templates/) only converts Triton tensors to numpy and back.

The request tensors (names, Triton types, dims, which are optional) are defined here once
(`edit_io`, `generate_io`); `repo.py` writes them into the BLS models' config.pbtxt.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..backend import Backend
from ..bundle import Bundle, open_bundle
from ..contract import MANIFEST, Dims
from ..errors import BundleError, InputError, QKRuntimeError
from ..session import EditSession

REPO_FORMAT = "qk-triton"
REPO_FORMAT_VERSION = 1
MODES = ("edit", "generate")
MODEL_NAMES = {"edit": "qk_edit", "generate": "qk_generate"}


class NetworkCallError(QKRuntimeError, RuntimeError):
    """A per-network model failed or answered without an output the loop needs."""


# --------------------------------------------------------------------------- the request tensors


@dataclass(frozen=True)
class IOSpec:
    name: str
    triton_type: str  # TYPE_UINT8, TYPE_STRING, ...
    dims: tuple[int, ...]  # -1: any size
    optional: bool = False
    doc: str = ""


def edit_io(dims: Dims) -> tuple[tuple[IOSpec, ...], tuple[IOSpec, ...]]:
    """(inputs, outputs) of the qk_edit model."""
    g = dims.grid
    inputs = (
        IOSpec("image", "TYPE_UINT8", (-1, -1, -1), doc="(H, W, C) uint8, C = 1, 3 or 4; any size (resized to the model's side and back)"),
        IOSpec("instruction", "TYPE_STRING", (1,), doc="UTF-8 text"),
        IOSpec("box", "TYPE_INT32", (4,), True, "x0, y0, x1, y1 in the image's pixels, x1 and y1 exclusive"),
        IOSpec("steps", "TYPE_INT32", (1,), True, "denoising steps (default: the bundle's)"),
        IOSpec("seed", "TYPE_UINT64", (1,), True, "noise seed (default 0)"),
        IOSpec("text_guidance", "TYPE_FP32", (1,), True, "default: the bundle's"),
        IOSpec("image_guidance", "TYPE_FP32", (1,), True, "default: the bundle's"),
    )
    outputs = (
        IOSpec("edited", "TYPE_UINT8", (-1, -1, 3), doc="(H, W, 3) uint8, the input's size"),
        IOSpec("gate", "TYPE_FP32", (g, g), doc="the CMG's per-token gate in [0, 1]"),
    )
    return inputs, outputs


def generate_io(dims: Dims) -> tuple[tuple[IOSpec, ...], tuple[IOSpec, ...]]:
    """(inputs, outputs) of the qk_generate model."""
    S = dims.image_size
    inputs = (
        IOSpec("prompt", "TYPE_STRING", (1,), doc="UTF-8 text"),
        IOSpec("steps", "TYPE_INT32", (1,), True, "denoising steps (default: the bundle's)"),
        IOSpec("seed", "TYPE_UINT64", (1,), True, "noise seed (default 0)"),
        IOSpec("guidance", "TYPE_FP32", (1,), True, "default: the bundle's text guidance"),
    )
    outputs = (IOSpec("image", "TYPE_UINT8", (S, S, 3), doc="(S, S, 3) uint8"),)
    return inputs, outputs


def _one(tensors: dict, name: str, required: bool = False) -> np.ndarray | None:
    value = tensors.get(name)
    if value is None:
        if required:
            raise InputError(f"input {name!r} is missing; the request must send it")
        return None
    arr = np.asarray(value)
    if arr.size != 1:
        raise InputError(f"input {name!r} must hold exactly one value (shape [1]), got shape {list(arr.shape)}")
    return arr.reshape(-1)


def _text(tensors: dict, name: str) -> str:
    raw = _one(tensors, name, required=True)[0]
    if isinstance(raw, (bytes, np.bytes_)):
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"input {name!r} is not UTF-8 text ({exc}); send UTF-8 bytes") from exc
    if isinstance(raw, str):
        return raw
    raise InputError(f"input {name!r} must be a BYTES (TYPE_STRING) tensor of UTF-8 text, got {type(raw).__name__}")


def _integer(tensors: dict, name: str) -> int | None:
    arr = _one(tensors, name)
    if arr is None:
        return None
    if arr.dtype.kind not in "iu":
        raise InputError(f"input {name!r} must be an integer tensor, got {arr.dtype}")
    return int(arr[0])


def _number(tensors: dict, name: str) -> float | None:
    arr = _one(tensors, name)
    if arr is None:
        return None
    if arr.dtype.kind not in "fiu":
        raise InputError(f"input {name!r} must be a number, got {arr.dtype}")
    return float(arr[0])


def _box(tensors: dict) -> tuple[int, int, int, int] | None:
    value = tensors.get("box")
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu" or arr.size != 4:
        raise InputError(f"input 'box' must be 4 integers x0, y0, x1, y1, got {arr.dtype} of shape {list(arr.shape)}")
    return tuple(int(v) for v in arr.reshape(-1))


def _image(tensors: dict) -> np.ndarray:
    value = tensors.get("image")
    if value is None:
        raise InputError("input 'image' is missing; send the source image as UINT8 (H, W, C)")
    arr = np.asarray(value)
    if arr.dtype != np.uint8 or arr.ndim != 3:
        raise InputError(f"input 'image' must be UINT8 of shape (H, W, C), got {arr.dtype} of shape {list(arr.shape)}")
    return arr


def run_request(session: EditSession, mode: str, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One qk_edit / qk_generate request: its input tensors by name -> its output tensors by name.
    Raises InputError (naming the tensor) for anything the runtime refuses."""
    if mode == "edit":
        r = session.edit(_image(tensors), _text(tensors, "instruction"), _box(tensors),
                         steps=_integer(tensors, "steps"), seed=_integer(tensors, "seed") or 0,
                         text_guidance=_number(tensors, "text_guidance"),
                         image_guidance=_number(tensors, "image_guidance"))
        return {"edited": r.image, "gate": r.gate}
    if mode == "generate":
        r = session.generate(_text(tensors, "prompt"), steps=_integer(tensors, "steps"),
                             seed=_integer(tensors, "seed") or 0, guidance=_number(tensors, "guidance"))
        return {"image": r.image}
    raise ValueError(f"mode {mode!r}; choose one of {MODES}")


# --------------------------------------------------------------------------- the model folder


@dataclass(frozen=True)
class RepoModels:
    """What a BLS model folder (REPO/qk_edit/1) says about the repository around it."""

    bundle: Bundle  # the derived manifest: graph files are ../../<model>/1/model.onnx (or .plan)
    models: dict[str, str]  # graph -> Triton model name
    batched: bool  # per-network models use Triton batching (max_batch_size > 0)

    @property
    def outputs(self) -> dict[str, tuple[str, ...]]:
        """Triton model name -> the output names the loop asks it for."""
        return {self.models[g]: info.output_names for g, info in self.bundle.graphs.items()}


def open_model_dir(model_dir: str | Path, *, verify: bool = True) -> RepoModels:
    """Open the manifest `qk-triton` wrote into a BLS model's version folder. `verify` checks the
    sha256 of every per-network model file it points at (and of the tokenizer). Every file it
    names must resolve inside the repository (REPO/qk_edit/1 -> REPO)."""
    model_dir = Path(model_dir)
    bundle = open_bundle(model_dir, verify=verify, root=model_dir.resolve().parent.parent)
    info = bundle.manifest.get("triton")
    if not isinstance(info, dict) or info.get("format") != REPO_FORMAT:
        raise BundleError(f"{model_dir / MANIFEST} has no 'triton' section: it is a bundle, not a model folder "
                          f"written by qk-triton; make the repository with qk-triton --bundle DIR --out REPO")
    if info.get("version") != REPO_FORMAT_VERSION:
        raise BundleError(f"{model_dir / MANIFEST}: qk-triton format version {info.get('version')!r}, this runtime "
                          f"reads {REPO_FORMAT_VERSION}; rewrite the repository with this version's qk-triton")
    models = info.get("models")
    if not isinstance(models, dict) or set(models) != set(bundle.graphs):
        raise BundleError(f"{model_dir / MANIFEST}: triton.models must name a model for each graph "
                          f"{sorted(bundle.graphs)}, has {models!r}; rewrite the repository with qk-triton")
    return RepoModels(bundle=bundle, models=dict(models), batched=int(info.get("max_batch_size", 0)) > 0)


# --------------------------------------------------------------------------- the loop over infer()


class CallableBackend(Backend):
    """A Backend whose `infer(graph, feeds)` is `infer(model_name, feeds)` on the model serving that graph."""

    name = "triton-bls"

    def __init__(self, repo: RepoModels, infer):
        super().__init__(repo.bundle)
        self.models = repo.models
        self._infer = infer

    def activate(self, graphs: list[str] | None = None) -> None:
        self.is_active = True  # the models are Triton's to load

    def infer(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        model = self.models[graph]
        out = self._infer(model, feeds)
        names = self.bundle.graphs[graph].output_names
        missing = [n for n in names if n not in out]
        if missing:
            raise NetworkCallError(f"model {model!r} answered without {missing} (it gave {sorted(out)}); "
                                   f"its config.pbtxt must list the graph's outputs: rewrite the repository with qk-triton")
        return {n: out[n] for n in names}

    def deactivate(self) -> None:
        self.is_active = False


class RepoSession(EditSession):
    """`EditSession` over the models of a Triton repository: `edit` and `generate` are the runtime's
    own, every graph runs through `infer(model_name, inputs)` (a `CallableBackend`)."""

    def __init__(self, repo: RepoModels, infer):
        super().__init__(backend=CallableBackend(repo, infer),
                         reason="every graph is a model of the Triton repository, called through infer()")


# --------------------------------------------------------------------------- infer() inside Triton


def request_shapes(inputs: dict[str, np.ndarray], batched: bool) -> dict[str, np.ndarray]:
    """With Triton batching (max_batch_size > 0) a per-row scalar input such as `sigma` (B,) is
    declared dims [1] with reshape [] and travels as (B, 1); without it, everything goes as is."""
    if not batched:
        return inputs
    return {k: (v.reshape(-1, 1) if np.ndim(v) == 1 else v) for k, v in inputs.items()}


class TritonBls:
    """`infer(model_name, inputs)` through Triton's Business Logic Scripting API:
    `pb_utils.InferenceRequest(model_name=, requested_output_names=, inputs=[pb_utils.Tensor]).exec()`,
    outputs asked for in CPU memory (`preferred_memory`, Triton 23.04+) so `as_numpy()` works."""

    def __init__(self, pb_utils, outputs: dict[str, tuple[str, ...]], batched: bool = False):
        self.pb = pb_utils
        self.outputs = outputs
        self.batched = batched
        self._memory = None
        if hasattr(pb_utils, "PreferredMemory"):
            self._memory = pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)

    def __call__(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pb = self.pb
        names = list(self.outputs[model])
        tensors = [pb.Tensor(k, np.ascontiguousarray(v)) for k, v in request_shapes(inputs, self.batched).items()]
        extra = {"preferred_memory": self._memory} if self._memory is not None else {}
        response = pb.InferenceRequest(model_name=model, requested_output_names=names, inputs=tensors, **extra).exec()
        if response.has_error():
            raise NetworkCallError(f"Triton model {model!r} failed: {response.error().message()}")
        out = {}
        for name in names:
            tensor = pb.get_output_tensor_by_name(response, name)
            if tensor is None:
                raise NetworkCallError(f"Triton model {model!r} answered without output {name!r}")
            out[name] = tensor.as_numpy()
        return out


def model_parameters(config_json: str) -> dict[str, str]:
    """The string parameters of a model config as Triton hands it to `initialize` (JSON)."""
    params = json.loads(config_json).get("parameters") or {}
    return {k: (v.get("string_value", "") if isinstance(v, dict) else str(v)) for k, v in params.items()}
