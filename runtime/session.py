"""`EditSession`: edit and generate images from a bundle, in numpy, on any backend.

    from qk_runtime import EditSession
    with EditSession("engines/default/int8") as s:
        r = s.edit("photo.png", "make the red circle blue", box=(10, 8, 30, 28))
        r.image       # (H, W, 3) uint8, the input's size
        r.timings     # milliseconds per stage
        s.backend_name, s.backend_reason

The sampler reproduces `qk_train.pipeline.Pipeline` step for step (see its module doc):
1. the image goes to the model's side (bilinear), to [-1, 1], through the image encoder; the box
   becomes a pixel mask, max-pooled to latent resolution;
2. the instruction and the empty string are encoded (the empty string once per session); the
   gateway makes kontext tokens for three guidance branches: text+image, image only (empty
   text), neither (empty text, zero source and region, flags 0); with image guidance 1 the
   last branch has weight 0 and is not run (two branches: a third less decoder work);
3. the CMG runs once on the first branch; its gate thresholded at `gate_threshold` is the
   active region m, repeated over each token's patch; `decoder_cond` (bundle format 3) turns the
   branches' text, kontext and flags into what every step reads (cross-attention keys and values);
4. each step runs the decoder (its velocity already gated with m) on the branches, combines
   v = v_uu + s_img (v_ui - v_uu) + s_txt (v_ti - v_ui) (v = v_ui + s_txt (v_ti - v_ui) with
   two branches) and takes an Euler step; a bundle with `few_step` (format 5) feeds the decoder
   `step_size` too: at the step counts it lists the sigmas are uniform, (n - k) / n, and
   step_size = sigma - sigma_next, at any other count the ordinary schedule and step_size 0;
   `sparse="region"` runs the region decoder on the active tokens plus a halo only;
5. the image decoder decodes; outside m (nearest-upsampled to pixels) the source's own pixels
   are kept, and with the bundle's compositing `changed` (format 4's manifest entry `composite`)
   the image decoder also decodes the source latent, and inside m too the source's own pixels
   are kept where the two decodings agree (`composite.py`); uint8 = round((clamp(x, -1, 1) + 1)
   * 127.5); resized back to the input's size.
The initial noise is `noise.portable_normal(seed, (1, C, h, w))`, the same in every runtime.

Threads: a session may be shared between threads. `edit` and `generate` hold the session's lock
for their whole run, so concurrent calls are serialised, never interleaved (backends keep
per-graph state). For parallel edits open one session per thread.
"""
from __future__ import annotations

import logging
import math
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from .backend import REGISTRY, Backend, choose, make_backend
from .bundle import GUIDANCE_RANGE, MAX_STEPS, Bundle, open_bundle
from .composite import composite
from .contract import REGION_BUCKETS, STEP_CONDITION
from .errors import BundleError, InputError
from .inputs import check_box, check_text, check_threads, load_image, resize_rgb, scale_box
from .noise import portable_normal
from .sampler import FlowMatchEulerScheduler, edit_branches, few_step_sigmas

log = logging.getLogger("qk_runtime")

SPARSE_MODES = ("none", "region")


def default_bundle_dir() -> Path:
    """The shipped default bundle, engines/default/int8 at the repository root."""
    import qk_runtime

    path = Path(qk_runtime.__file__).resolve().parents[1] / "engines" / "default" / "int8"
    if not (path / "manifest.json").is_file():
        raise BundleError(
            f"the default bundle {path} is missing; make it with `qk-export --int8 --out engines/default/int8` "
            f"(from the repository root, after training), or pass --bundle DIR"
        )
    return path


def guided_velocity(v: np.ndarray, s_txt: float, s_img: float) -> np.ndarray:
    """Combine per-branch velocities (nb, C, h, w) of an edit into one (1, C, h, w)."""
    if v.shape[0] == 2:
        return v[1:2] + s_txt * (v[0:1] - v[1:2])
    return v[2:3] + s_img * (v[1:2] - v[2:3]) + s_txt * (v[0:1] - v[1:2])


@dataclass
class EditResult:
    image: np.ndarray  # (H, W, 3) uint8
    timings: dict = field(default_factory=dict)  # milliseconds per stage
    gate: np.ndarray | None = None  # (grid, grid) the CMG's per-token gate in [0, 1] (edits)
    active_tokens: int | None = None  # tokens the region decoder ran on (sparse="region")
    backend: str = ""
    seed: int = 0
    steps: int = 0


# --------------------------------------------------------------------------- numpy helpers


def tokens_to_map(values: np.ndarray, grid_h: int, grid_w: int, p: int) -> np.ndarray:
    """(B, N) per-token values -> (B, 1, grid_h*p, grid_w*p), each value over its token's patch."""
    B = values.shape[0]
    m = np.broadcast_to(values.reshape(B, 1, grid_h, 1, grid_w, 1), (B, 1, grid_h, p, grid_w, p))
    return np.ascontiguousarray(m.reshape(B, 1, grid_h * p, grid_w * p), dtype=np.float32)


def box_mask(box: tuple[int, int, int, int] | None, side: int) -> np.ndarray:
    """A box rasterised at pixel resolution (x0, y0 inclusive; x1, y1 exclusive), (side, side)."""
    mask = np.zeros((side, side), np.float32)
    if box is not None:
        x0, y0, x1, y1 = box
        mask[y0:y1, x0:x1] = 1.0
    return mask


def max_pool(mask: np.ndarray, f: int) -> np.ndarray:
    """(S, S) -> (S/f, S/f): a latent pixel is in the region if any of its pixels is."""
    if f == 1:
        return mask
    s = mask.shape[0] // f
    return mask[: s * f, : s * f].reshape(s, f, s, f).max(axis=(1, 3))


def bucket_size(count: int, total: int, fractions) -> int:
    """The smallest bucket (a fraction of all tokens, rounded half to even) holding `count` tokens."""
    for frac in fractions:
        size = int(round(total * frac))
        if count <= size:
            return size
    return total


def active_token_indices(active: np.ndarray, grid_h: int, grid_w: int, halo: int = 1,
                         fractions=REGION_BUCKETS) -> np.ndarray:
    """Token indices the region decoder runs on: the active tokens, every token within `halo`
    (Chebyshev distance on the token grid), then the nearest others (ties by index) until the
    count reaches a bucket size. Sorted int64. With no active token, the first bucket's tokens."""
    n = grid_h * grid_w
    on = np.flatnonzero(active.reshape(-1))
    if on.size:
        row, col = np.arange(n) // grid_w, np.arange(n) % grid_w
        dist = np.maximum(np.abs(row[:, None] - row[on][None, :]), np.abs(col[:, None] - col[on][None, :])).min(axis=1)
        wanted = int(np.count_nonzero(dist <= halo))
    else:
        dist = np.zeros(n, np.int64)
        wanted = 0
    size = bucket_size(max(wanted, 1), n, fractions)
    nearest_first = np.argsort(dist, kind="stable")  # by distance, ties by index
    return np.sort(nearest_first[:size]).astype(np.int64)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    arr = np.round((np.clip(img, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    return np.ascontiguousarray(arr.transpose(1, 2, 0))


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


# --------------------------------------------------------------------------- session


def text_tokens_dynamic(bundle: Bundle, tokenizer: Tokenizer) -> bool:
    """Whether the text encoder may run on fewer than `max_length` tokens: its token axis is
    dynamic (bundle format 2) and the tokenizer pads on the right."""
    axis = bundle.graphs["text_encoder"].inputs[0].shape[1]
    return isinstance(axis, str) and (tokenizer.padding or {}).get("direction", "right").lower() == "right"


class EditSession:
    """A bundle opened on one backend. See the module doc for the algorithm and thread safety."""

    def __init__(self, bundle_dir: str | Path | None = None, backend: str | Backend = "auto", threads: int | None = None,
                 *, verify: bool = True, reason: str | None = None, **backend_options):
        """Open `bundle_dir` (default: the shipped bundle) on `backend`: a name (`auto` picks one and
        says why) or a ready `Backend` instance, whose own bundle is then the session's and which
        the session activates if it is not active yet (`bundle_dir`, `threads` and options unused)."""
        t0 = time.perf_counter()
        if isinstance(backend, Backend):
            if bundle_dir is not None or backend_options:
                raise TypeError("EditSession(backend=<a Backend>) takes the bundle and options of that backend: "
                                "pass neither bundle_dir nor backend options")
            self.bundle: Bundle = backend.bundle
            self.tokenizer = self._load_tokenizer()
            self.backend_name = backend.name
            self.backend_reason = reason or f"the {backend.name} backend given to the session"
            self.backend: Backend = backend
        else:
            threads = check_threads(threads)
            self.bundle = open_bundle(bundle_dir if bundle_dir is not None else default_bundle_dir(), verify=verify)
            self.tokenizer = self._load_tokenizer()
            choice = choose(backend, self.bundle)
            self.backend_name = choice.name
            self.backend_reason = reason or choice.reason
            log.info("qk_runtime: backend %s (%s)", choice.name, choice.reason)
            if backend_options.get("spinning") and not REGISTRY[choice.name].spins:
                warnings.warn(f"spinning applies to ONNX Runtime backends (ort-*); {choice.name} keeps its own thread policy "
                              f"(ask for --backend ort-cpu to spin)", stacklevel=2)
                backend_options = {k: v for k, v in backend_options.items() if k != "spinning"}
            t0 = time.perf_counter()
            self.backend = make_backend(choice.name, self.bundle, threads=threads, **backend_options)
        if not self.backend.is_active:
            # load now what an edit with the default settings runs; the other decoder loads on first use
            skip = "decoder" if self.bundle.has_region else "decoder_region"
            self.backend.activate([g for g in self.bundle.graphs if g != skip])
        self.open_ms = _ms(t0)  # backend start and graph loading
        self._lock = threading.Lock()
        self._empty_text: tuple[np.ndarray, np.ndarray] | None = None
        self._text_tokens_dynamic = text_tokens_dynamic(self.bundle, self.tokenizer)
        self._scheduler = FlowMatchEulerScheduler(shift=self.bundle.sampler.shift)

    # -- lifecycle
    def close(self) -> None:
        with self._lock:
            if self.backend.is_active:
                self.backend.deactivate()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _load_tokenizer(self) -> Tokenizer:
        try:
            tok = Tokenizer.from_file(str(self.bundle.tokenizer_path))
        except Exception as exc:  # tokenizers raises its own exception type
            raise BundleError(f"{self.bundle.tokenizer_path} is not a tokenizers file ({exc}); re-export the bundle") from exc
        L = self.bundle.dims.max_length
        pad, trunc = tok.padding, tok.truncation
        if not pad or pad.get("length") != L or not trunc or trunc.get("max_length") != L:
            raise BundleError(
                f"{self.bundle.tokenizer_path} must pad and truncate to max_length {L} (has padding {pad}, "
                f"truncation {trunc}); re-export the bundle"
            )
        return tok

    # -- properties
    @property
    def side(self) -> int:
        return self.bundle.dims.image_size

    def _shapes(self):
        d = self.bundle.dims
        return d.latent_channels, d.latent_size, d.patch, d.grid

    # -- text
    def _encode(self, texts: list[str], timings: dict) -> tuple[np.ndarray, np.ndarray]:
        """-> hidden (B, L, W) float32, mask (B, L) float32; warns when a text is truncated."""
        t0 = time.perf_counter()
        encs = self.tokenizer.encode_batch(list(texts))
        for text, enc in zip(texts, encs):
            if enc.overflowing:
                warnings.warn(
                    f"text {text[:40]!r}... (instruction or prompt) is longer than the model's {self.bundle.dims.max_length} tokens; "
                    f"the rest is ignored",
                    UserWarning,
                    stacklevel=5,  # the caller of edit() / generate()
                )
        ids = np.array([e.ids for e in encs], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
        L = ids.shape[1]
        # Bundles of format 2 take any token count: run the encoder on the longest text of the batch
        # only (padding is on the right and masked in every consumer), then pad its states with zeros.
        n = max(1, int(mask.sum(1).max())) if self._text_tokens_dynamic else L
        hidden = self.backend.infer("text_encoder", {"input_ids": ids[:, :n], "attention_mask": mask[:, :n]})["hidden"]
        if n < L:
            hidden = np.concatenate([hidden, np.zeros((hidden.shape[0], L - n, hidden.shape[2]), hidden.dtype)], 1)
        timings["text_encoder"] = timings.get("text_encoder", 0.0) + _ms(t0)
        return hidden.astype(np.float32, copy=False), mask.astype(np.float32)

    def _empty(self, timings: dict) -> tuple[np.ndarray, np.ndarray]:
        if self._empty_text is None:
            self._empty_text = self._encode([""], timings)
        return self._empty_text

    def _text_batch(self, text: str, copies_of_empty: int, timings: dict):
        hidden, mask = self._encode([text], timings)
        e_hidden, e_mask = self._empty(timings)
        return (np.concatenate([hidden] + [e_hidden] * copies_of_empty),
                np.concatenate([mask] + [e_mask] * copies_of_empty))

    # -- validation
    def _steps(self, steps) -> int:
        if steps is None:
            return self.bundle.sampler.steps
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= MAX_STEPS:
            raise InputError(f"steps={steps!r}; must be an integer from 1 to {MAX_STEPS}")
        return int(steps)

    @staticmethod
    def _scale(value, default: float, what: str) -> float:
        if value is None:
            return float(default)
        try:
            v = float(value)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{what}={value!r}; must be a number") from exc
        lo, hi = GUIDANCE_RANGE
        if not math.isfinite(v) or not lo <= v <= hi:
            raise InputError(f"{what}={value!r}; must be a finite number from {lo:g} to {hi:g}")
        return v

    @staticmethod
    def _seed(seed) -> int:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
            raise InputError(f"seed={seed!r}; must be an integer from 0 to 2**64 - 1")
        return int(seed)

    def _sparse(self, sparse) -> str:
        if sparse is None:
            return "region" if self.bundle.has_region else "none"
        if sparse not in SPARSE_MODES:
            extra = " ('window' attention is chosen at export, not here)" if sparse == "window" else ""
            raise InputError(f"sparse={sparse!r}; choose one of {SPARSE_MODES}{extra}")
        if sparse == "region" and not self.bundle.has_region:
            raise InputError(
                f"sparse='region' needs a bundle exported with the region decoder; {self.bundle.path} has none "
                f"(qk-export --sparse-attn region), or use sparse='none'"
            )
        return sparse

    # -- the two entry points
    def edit(self, image, instruction: str, box=None, *, steps: int | None = None, text_guidance: float | None = None,
             image_guidance: float | None = None, seed: int = 0, sparse: str | None = None) -> EditResult:
        """Edit `image` (path, PIL image or array) as `instruction` says, inside `box` if given."""
        with self._lock:
            self._check_open()
            return self._edit(image, instruction, box, steps, text_guidance, image_guidance, seed, sparse)

    def generate(self, prompt: str, *, steps: int | None = None, guidance: float | None = None, seed: int = 0) -> EditResult:
        """Draw a new image (the model's side x side) from `prompt`."""
        with self._lock:
            self._check_open()
            return self._generate(prompt, steps, guidance, seed)

    def _check_open(self) -> None:
        if not self.backend.is_active:
            raise RuntimeError("this EditSession is closed; open a new one")

    # -- implementation
    def _step_condition(self, cond: dict, flags: np.ndarray, timings: dict) -> dict:
        """What every decoder step of this edit reads besides x and sigma. Format 3 bundles run
        `decoder_cond` once here (each block's cross-attention keys and values of the text and
        kontext, their padding bias, the pooled-text + flags embedding); older bundles' steps take
        the text, kontext and flags themselves and recompute that at every step."""
        if not self.bundle.has_decoder_cond:
            return {**cond, "flags": flags}
        t0 = time.perf_counter()
        out = self.backend.infer("decoder_cond", {**cond, "flags": flags})
        timings["decoder_cond"] = _ms(t0)
        return {k: out[k] for k in STEP_CONDITION}

    def _schedule(self, steps: int) -> tuple[FlowMatchEulerScheduler, bool]:
        """The session's scheduler set for `steps`, and whether this is a few-step run: the uniform
        sigmas at a count the bundle's `few_step` lists, else the ordinary schedule."""
        sched = self._scheduler
        few = self.bundle.few_step is not None and steps in self.bundle.few_step.steps
        if few:
            sched.set_sigmas(few_step_sigmas(steps))
        else:
            sched.set_timesteps(steps)
        return sched, few

    def _step_feeds(self, sched: FlowMatchEulerScheduler, batch: int, few: bool) -> dict[str, np.ndarray]:
        """The step's `sigma` (batch,), and `step_size` (batch,) where the decoders take it: sigma -
        sigma_next at a few-step count (`few`), else 0."""
        feeds = {"sigma": np.full(batch, sched.sigma, np.float32)}
        if self.bundle.few_step is not None:
            feeds["step_size"] = np.full(batch, sched.step_size if few else 0.0, np.float32)
        return feeds

    def _edit(self, image, instruction, box, steps, text_guidance, image_guidance, seed, sparse) -> EditResult:
        t_total = time.perf_counter()
        cfg, be, S = self.bundle.sampler, self.backend, self.side
        instruction = check_text(instruction, "instruction")
        steps = self._steps(steps)
        s_txt = self._scale(text_guidance, cfg.text_guidance, "text_guidance")
        s_img = self._scale(image_guidance, cfg.image_guidance, "image_guidance")
        seed = self._seed(seed)
        sparse = self._sparse(sparse)
        timings: dict = {"text_encoder": 0.0, "gateway": 0.0, "cmg": 0.0, "image_encoder": 0.0}

        t0 = time.perf_counter()
        rgb = load_image(image)
        H0, W0 = rgb.shape[:2]
        if box is not None:
            box = scale_box(check_box(box, W0, H0), W0, H0, S)
        src_px = np.ascontiguousarray((resize_rgb(rgb, S, S).astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None])
        timings["preprocess"] = _ms(t0)

        C, h, p, g = self._shapes()
        t0 = time.perf_counter()
        src = be.infer("image_encoder", {"image": src_px})["latent"]  # (1, C, h, w)
        timings["image_encoder"] = _ms(t0)
        region = max_pool(box_mask(box, S), self.bundle.dims.factor)[None, None]  # (1, 1, h, w)
        has_region = 1.0 if box is not None else 0.0

        nb = edit_branches(s_img)  # text+image, image only[, neither]
        text, mask = self._text_batch(instruction, nb - 1, timings)
        sources = np.concatenate([src, src, np.zeros_like(src)][:nb])
        regions = np.concatenate([region, region, np.zeros_like(region)][:nb]).astype(np.float32)
        flags = np.array([[1.0, has_region], [1.0, has_region], [0.0, 0.0]][:nb], np.float32)
        cond = {"text": text, "text_mask": mask}
        if self.bundle.has_gateway:
            t0 = time.perf_counter()
            cond["kontext"] = be.infer("gateway", {**cond, "source": sources, "region": regions, "flags": flags})["kontext"]
            timings["gateway"] = _ms(t0)

        if self.bundle.has_cmg:
            t0 = time.perf_counter()
            gate = be.infer("cmg", {"kontext": cond["kontext"][:1], "source": src, "region": region})["gate"][0]  # (N,)
            timings["cmg"] = _ms(t0)
        else:
            gate = np.ones(g * g, np.float32)
        thr = cfg.gate_threshold
        m_tok = (gate > thr).astype(np.float32) if thr is not None else gate.astype(np.float32)
        gate_map = tokens_to_map(m_tok[None], g, g, p)  # (1, 1, h, w)
        gate_maps = np.repeat(gate_map, nb, axis=0)

        step_cond = self._step_condition(cond, flags, timings)
        graph, extra, active_tokens = "decoder", {}, None
        if sparse == "region":
            idx = active_token_indices(m_tok > 0.5, g, g, cfg.halo, cfg.region_buckets)
            graph, extra, active_tokens = "decoder_region", {"active": np.repeat(idx[None], nb, axis=0)}, int(idx.size)

        x = portable_normal(seed, (1, C, h, h))
        sched, few = self._schedule(steps)
        per_step = []
        fixed = {**step_cond, "source": sources, "region": regions, "gate_map": gate_maps, **extra}
        for _ in range(steps):
            t0 = time.perf_counter()
            feeds = {"x": np.repeat(x, nb, axis=0), **self._step_feeds(sched, nb, few), **fixed}
            v = be.infer(graph, feeds)["velocity"]  # gated, (nb, C, h, w)
            v = guided_velocity(v, s_txt, s_img)
            x = sched.step(v, x)
            per_step.append(_ms(t0))
        timings["decoder"] = float(sum(per_step))
        timings["decoder_steps"] = per_step

        t0 = time.perf_counter()
        out = be.infer("image_decoder", {"latent": x})["image"]  # (1, 3, S, S)
        timings["image_decoder"] = _ms(t0)
        comp, src_dec = self.bundle.composite, None
        if self.bundle.has_cmg and comp.decodes_source:
            t0 = time.perf_counter()
            src_dec = be.infer("image_decoder", {"latent": src})["image"]  # (1, 3, S, S)
            timings["source_decoder"] = _ms(t0)
        t0 = time.perf_counter()
        if self.bundle.has_cmg:  # outside the active region, and where the edit changed nothing, the source's own pixels
            f = self.bundle.dims.factor
            pix = np.repeat(np.repeat(gate_map, f, axis=2), f, axis=3) if f > 1 else gate_map
            out = composite(out, src_px, pix, comp, src_dec)
        result = to_uint8(out[0])
        if (H0, W0) != (S, S):
            result = resize_rgb(result, W0, H0)
        timings["postprocess"] = _ms(t0)
        timings["total"] = _ms(t_total)
        return EditResult(image=result, timings=timings, gate=gate.reshape(g, g).astype(np.float32),
                          active_tokens=active_tokens, backend=self.backend_name, seed=seed, steps=steps)

    def _generate(self, prompt, steps, guidance, seed) -> EditResult:
        t_total = time.perf_counter()
        cfg, be = self.bundle.sampler, self.backend
        prompt = check_text(prompt, "prompt")
        steps = self._steps(steps)
        s = self._scale(guidance, cfg.text_guidance if cfg.gen_guidance is None else cfg.gen_guidance, "guidance")
        seed = self._seed(seed)
        timings: dict = {"text_encoder": 0.0, "gateway": 0.0, "cmg": 0.0, "image_encoder": 0.0}
        C, h, p, g = self._shapes()

        text, mask = self._text_batch(prompt, 1, timings)  # branches: prompt, empty
        zeros = np.zeros((2, C, h, h), np.float32)
        region = np.zeros((2, 1, h, h), np.float32)
        flags = np.zeros((2, 2), np.float32)
        cond = {"text": text, "text_mask": mask}
        if self.bundle.has_gateway:
            t0 = time.perf_counter()
            cond["kontext"] = be.infer("gateway", {**cond, "source": zeros, "region": region, "flags": flags})["kontext"]
            timings["gateway"] = _ms(t0)
        fixed = {**self._step_condition(cond, flags, timings), "source": zeros, "region": region,
                 "gate_map": np.ones((2, 1, h, h), np.float32)}

        x = portable_normal(seed, (1, C, h, h))
        sched, few = self._schedule(steps)
        per_step = []
        for _ in range(steps):
            t0 = time.perf_counter()
            feeds = {"x": np.repeat(x, 2, axis=0), **self._step_feeds(sched, 2, few), **fixed}
            v = be.infer("decoder", feeds)["velocity"]  # (2, C, h, w)
            v = v[1:2] + s * (v[0:1] - v[1:2])
            x = sched.step(v, x)
            per_step.append(_ms(t0))
        timings["decoder"] = float(sum(per_step))
        timings["decoder_steps"] = per_step
        t0 = time.perf_counter()
        out = be.infer("image_decoder", {"latent": x})["image"]
        timings["image_decoder"] = _ms(t0)
        result = to_uint8(out[0])
        timings["total"] = _ms(t_total)
        return EditResult(image=result, timings=timings, backend=self.backend_name, seed=seed, steps=steps)
