"""The timed editors, one per engine, with one interface:

    engine.edit(job, seed)      -> Outcome(image, timings, active_tokens)
    engine.generate(text, seed) -> Outcome
    engine.decoder_call(batch, active=None) -> a no-argument callable running one decoder step
    engine.edit_many / generate_many / side   (qk-eval's Editor protocol, for quality)

`timings` are milliseconds per stage with the same names everywhere: text_encoder, image_encoder,
gateway, cmg, decoder (all steps), decoder_steps (each step: the decoder call plus the guidance
combine and Euler update), image_decoder, total (the whole call, so `total` minus the stages is
pre/post-processing and Python glue).

- `TorchEngine`: `qk_train.pipeline.Pipeline` as is (eager, or with `torch.compile` on the
  decoder), its stages timed by forward hooks. The text embedder's memo of encoded strings is
  cleared (except the empty string, which the runtime also encodes once) before each timed edit.
- `RuntimeEngine`: `qk_runtime.EditSession`, its own `timings`.
- `PeerEngine`: the strongest plain peer. The bundle's ONNX files compiled by OpenVINO with its
  defaults (only the thread count set), run by a straightforward loop: every text encoded every
  time, every input passed anew at every step, outputs copied, the dense decoder at every step.
  It uses none of `EditSession`'s choices (precision hint, latency hint, single stream, shared
  input buffers, cached empty-text encoding, region decoding), only the numpy sampler and noise
  that every runtime shares.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qk_runtime.contract import STEP_CONDITION
from qk_runtime.sampler import edit_branches

from .workload import EditJob, graph_feeds, manifest_tensors

STAGES = ("text_encoder", "image_encoder", "gateway", "cmg", "decoder_cond", "decoder", "image_decoder")


@dataclass
class Outcome:
    image: np.ndarray
    timings: dict = field(default_factory=dict)
    active_tokens: int | None = None


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def normalise(timings: dict) -> dict:
    """Every stage present (0 where a pipeline has no such stage), plus `other`."""
    out = {s: float(timings.get(s, 0.0)) for s in STAGES}
    out["decoder_steps"] = [float(x) for x in timings.get("decoder_steps", [])]
    out["total"] = float(timings["total"])
    out["other"] = max(0.0, out["total"] - sum(out[s] for s in STAGES))
    return out


# --------------------------------------------------------------------------- torch reference


class TorchEngine:
    def __init__(self, checkpoint: Path, *, threads: int, steps: int, compile: bool = False):
        import torch

        from qk_train.models.unified import QKModel
        from qk_train.pipeline import Pipeline

        self.torch = torch
        torch.set_num_threads(threads)
        self.model = QKModel.from_checkpoint(checkpoint)
        if compile:
            self.model.decoder = torch.compile(self.model.decoder)  # compiled on the first call (the edit's batch)
        self.compiled = compile
        self.pipe = Pipeline(self.model, steps=steps)
        self.steps = steps
        self.side = self.pipe.side
        # the decoder batch of an edit step: its guidance branches (2 where image guidance is 1)
        self.edit_batch = edit_branches(self.pipe.image_guidance)
        self.sparse = "none"
        self._sink: dict | None = None
        self._starts: dict = {}
        m = self.model
        self._hook(m.text_encoder, "text_encoder")
        self._hook(m.gateway, "gateway")
        self._hook(m.cmg, "cmg")
        self._hook(m.decoder, "decoder")
        ae = getattr(m.codec, "ae", None)  # the pixel codec (tiny preset) has no networks
        if ae is not None:
            self._hook(ae.encoder, "image_encoder")
            self._hook(ae.decoder, "image_decoder")

    def _hook(self, module, stage: str) -> None:
        if module is None:
            return

        def pre(_mod, _args):
            if self._sink is not None:
                self._starts[stage] = time.perf_counter()

        def post(_mod, _args, _out):
            if self._sink is not None and stage in self._starts:
                ms = _ms(self._starts.pop(stage))
                self._sink[stage] = self._sink.get(stage, 0.0) + ms
                if stage == "decoder":
                    self._sink.setdefault("decoder_steps", []).append(ms)

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)

    def _forget_texts(self) -> None:
        cache = getattr(self.model.embedder, "cache", None)
        if cache:
            for key in [k for k in cache if k]:
                del cache[key]

    def _timed(self, fn) -> tuple[object, dict]:
        self._forget_texts()
        self._sink = {}
        t0 = time.perf_counter()
        try:
            out = fn()
        finally:
            timings, self._sink = self._sink, None
        timings["total"] = _ms(t0)
        return out, normalise(timings)

    def edit(self, job: EditJob, seed: int) -> Outcome:
        out, timings = self._timed(lambda: self.pipe.edit(job.image, job.instruction, job.box, seed=seed))
        return Outcome(out.image, timings, None)

    def generate(self, text: str, seed: int) -> Outcome:
        out, timings = self._timed(lambda: self.pipe.generate(text, seed=seed))
        return Outcome(out.image, timings)

    def _graph(self, batch: int, active: int | None):
        from qk_export.graphs import model_specs, wrap

        spec = model_specs(self.model, region=active is not None)["decoder_region" if active else "decoder"]
        module = wrap(self.model, spec)
        feeds = graph_feeds(spec.inputs, batch, active)
        args = tuple(self.torch.from_numpy(feeds[t.name]) for t in spec.inputs)
        return module, args

    def decoder_call(self, batch: int, active: int | None = None):
        module, args = self._graph(batch, active)
        torch = self.torch

        def call():
            with torch.inference_mode():
                return module(*args)

        return call

    def counted_flops(self, batch: int, active: int | None = None) -> int:
        """FLOPs of one decoder step as torch's FlopCounterMode counts them (eager only)."""
        from torch.utils.flop_counter import FlopCounterMode

        module, args = self._graph(batch, active)
        with self.torch.inference_mode(), FlopCounterMode(display=False) as counter:
            module(*args)
        return int(counter.get_total_flops())

    @property
    def tokens(self) -> int:
        from qk_export.graphs import model_dims

        return model_dims(self.model).tokens

    def parameter_counts(self) -> dict:
        return {k: int(v) for k, v in self.model.count_parameters().items()}

    def edit_many(self, images, instructions, boxes, seeds):
        return [o.image for o in self.pipe.edit_batch(images, instructions, boxes, seeds=seeds)]

    def generate_many(self, prompts, seeds):
        return [o.image for o in self.pipe.generate_batch(prompts, seeds=seeds)]

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- qk_runtime


class RuntimeEngine:
    def __init__(self, bundle: Path, *, backend: str, threads: int, steps: int, sparse: str, precision_hint: str | None = None,
                 spinning: bool = False):
        from qk_runtime import EditSession

        options = {"precision": precision_hint} if precision_hint else {}
        if spinning:
            options["spinning"] = True
        self.session = EditSession(bundle, backend=backend, threads=threads, **options)
        self.steps = steps
        self.sparse = sparse
        self.side = self.session.side
        self.open_ms = self.session.open_ms
        self.edit_batch = edit_branches(self.session.bundle.sampler.image_guidance)

    def edit(self, job: EditJob, seed: int) -> Outcome:
        r = self.session.edit(job.image, job.instruction, box=job.box, steps=self.steps, seed=seed, sparse=self.sparse)
        return Outcome(r.image, normalise(r.timings), r.active_tokens)

    def generate(self, text: str, seed: int) -> Outcome:
        r = self.session.generate(text, steps=self.steps, seed=seed)
        return Outcome(r.image, normalise(r.timings))

    def graph_feeds(self, batch: int, active: int | None = None) -> tuple[str, dict]:
        graph = "decoder_region" if active else "decoder"
        return graph, graph_feeds(self.session.bundle.graphs[graph].inputs, batch, active)

    def decoder_call(self, batch: int, active: int | None = None):
        graph, feeds = self.graph_feeds(batch, active)
        backend = self.session.backend
        return lambda: backend.infer(graph, feeds)

    def edit_many(self, images, instructions, boxes, seeds):
        return [self.session.edit(img, ins, box=box, steps=self.steps, seed=sd, sparse=self.sparse).image
                for img, ins, box, sd in zip(images, instructions, boxes, seeds)]

    def generate_many(self, prompts, seeds):
        return [self.session.generate(p, steps=self.steps, seed=sd).image for p, sd in zip(prompts, seeds)]

    def close(self) -> None:
        self.session.close()


def ort_op_profile(model_path: Path, feeds: dict, threads: int, runs: int = 20) -> dict:
    """Where an ONNX Runtime CPU session spends one call of a graph: the share of kernel time per
    op type over `runs` calls (its own session, with ONNX Runtime's profiler on)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.enable_profiling = True
    opts.log_severity_level = 3
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        sess = ort.InferenceSession(str(model_path), sess_options=opts, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            sess.run(None, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            per_op[op] = per_op.get(op, 0.0) + float(e.get("dur", 0.0))
    total = sum(per_op.values()) or 1.0
    ranked = sorted(per_op.items(), key=lambda kv: -kv[1])
    return {"kernel_ms_per_call": total / 1000.0 / runs,
            "share": {op: round(us / total, 4) for op, us in ranked}}


# --------------------------------------------------------------------------- the plain peer


class PeerEngine:
    """OpenVINO with its defaults and a plain loop; see the module doc."""

    def __init__(self, bundle: Path, *, threads: int, steps: int):
        import openvino as ov
        from tokenizers import Tokenizer

        from qk_runtime.sampler import FlowMatchEulerScheduler

        self.bundle = Path(bundle)
        self.manifest = json.loads((self.bundle / "manifest.json").read_text())
        dims = self.manifest["dims"]
        self.side, self.factor, self.patch = dims["image_size"], dims["factor"], dims["patch"]
        self.channels, self.latent = dims["latent_channels"], dims["image_size"] // dims["factor"]
        self.grid = self.latent // self.patch
        self.sampler = self.manifest["sampler"]
        self.steps = steps
        self.sparse = "none"
        self.edit_batch = 3  # a straightforward loop runs all three guidance branches (as diffusers' pipelines do)
        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": int(threads)} if threads else {}
        t0 = time.perf_counter()
        self.models = {name: core.compile_model(str(self.bundle / g["file"]), "CPU", config)
                       for name, g in self.manifest["graphs"].items() if name != "decoder_region"}
        self.open_ms = _ms(t0)
        self.tokenizer = Tokenizer.from_file(str(self.bundle / "tokenizer.json"))
        self.scheduler = FlowMatchEulerScheduler(shift=float(self.sampler.get("shift", 1.0)))

    def _run(self, graph: str, feeds: dict, timings: dict | None = None, stage: str | None = None) -> np.ndarray:
        t0 = time.perf_counter()
        out = np.array(self.models[graph](feeds)[0], copy=True)
        if timings is not None:
            timings[stage or graph] = timings.get(stage or graph, 0.0) + _ms(t0)
        return out

    def _text(self, texts: list[str], timings: dict) -> tuple[np.ndarray, np.ndarray]:
        t0 = time.perf_counter()
        encs = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encs], np.int64)
        mask = np.array([e.attention_mask for e in encs], np.int64)
        hidden = np.array(self.models["text_encoder"]({"input_ids": ids, "attention_mask": mask})[0], copy=True)
        timings["text_encoder"] = _ms(t0)
        return hidden, mask.astype(np.float32)

    def _step_condition(self, cond: dict, timings: dict) -> dict:
        """The steps' conditioning inputs as the bundle's contract has them: format 3 runs
        decoder_cond once per edit; older bundles' steps take text, kontext and flags."""
        if "decoder_cond" not in self.models:
            return cond
        t0 = time.perf_counter()
        out = self.models["decoder_cond"](cond)
        timings["decoder_cond"] = _ms(t0)
        return {name: np.array(out[k], copy=True) for k, name in enumerate(STEP_CONDITION)}

    def _loop(self, x, fixed: dict, branches: int, combine, timings: dict) -> np.ndarray:
        sched = self.scheduler
        sched.set_timesteps(self.steps)
        steps = []
        for _ in range(self.steps):
            t0 = time.perf_counter()
            feeds = dict(fixed, x=np.repeat(x, branches, axis=0), sigma=np.full(branches, sched.sigma, np.float32))
            v = np.array(self.models["decoder"](feeds)[0], copy=True)
            x = sched.step(combine(v), x)
            steps.append(_ms(t0))
        timings["decoder"] = sum(steps)
        timings["decoder_steps"] = steps
        return x

    def edit(self, job: EditJob, seed: int) -> Outcome:
        return self._edit(job.image, job.instruction, job.box, seed)

    def _edit(self, image: np.ndarray, instruction: str, box, seed: int) -> Outcome:
        from qk_runtime.noise import portable_normal
        from qk_runtime.session import box_mask, max_pool, to_uint8, tokens_to_map

        t_total = time.perf_counter()
        timings: dict = {}
        S, C, h, g, p = self.side, self.channels, self.latent, self.grid, self.patch
        if image.shape[:2] != (S, S):
            raise ValueError(f"the plain peer takes images at the model's side {S}x{S}, got {image.shape[:2]}")
        src_px = (image.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None]
        src = self._run("image_encoder", {"image": src_px}, timings)
        region = max_pool(box_mask(box, S), self.factor)[None, None].astype(np.float32)
        has_region = 1.0 if box is not None else 0.0
        text, mask = self._text([instruction, "", ""], timings)
        sources = np.concatenate([src, src, np.zeros_like(src)])
        regions = np.concatenate([region, region, np.zeros_like(region)])
        flags = np.array([[1.0, has_region], [1.0, has_region], [0.0, 0.0]], np.float32)
        kontext = self._run("gateway", {"text": text, "text_mask": mask, "source": sources, "region": regions, "flags": flags}, timings)
        gate = self._run("cmg", {"kontext": kontext[:1], "source": src, "region": region}, timings)[0]
        thr = self.sampler.get("gate_threshold")
        m_tok = (gate > thr).astype(np.float32) if thr is not None else gate.astype(np.float32)
        gate_map = tokens_to_map(m_tok[None], g, g, p)
        s_txt, s_img = float(self.sampler["text_guidance"]), float(self.sampler["image_guidance"])
        cond = self._step_condition({"text": text, "text_mask": mask, "kontext": kontext, "flags": flags}, timings)
        fixed = {**cond, "source": sources, "region": regions, "gate_map": np.repeat(gate_map, 3, axis=0)}
        x = portable_normal(seed, (1, C, h, h))
        x = self._loop(x, fixed, 3, lambda v: v[2:3] + s_img * (v[1:2] - v[2:3]) + s_txt * (v[0:1] - v[1:2]), timings)
        out = self._run("image_decoder", {"latent": x}, timings)
        f = self.factor
        pix = np.repeat(np.repeat(gate_map, f, axis=2), f, axis=3) if f > 1 else gate_map
        result = to_uint8((pix * out + (1.0 - pix) * src_px)[0])
        timings["total"] = _ms(t_total)
        return Outcome(result, normalise(timings))

    def generate(self, text: str, seed: int) -> Outcome:
        from qk_runtime.noise import portable_normal
        from qk_runtime.session import to_uint8

        t_total = time.perf_counter()
        timings: dict = {}
        C, h = self.channels, self.latent
        hidden, mask = self._text([text, ""], timings)
        zeros = np.zeros((2, C, h, h), np.float32)
        region = np.zeros((2, 1, h, h), np.float32)
        flags = np.zeros((2, 2), np.float32)
        kontext = self._run("gateway", {"text": hidden, "text_mask": mask, "source": zeros, "region": region, "flags": flags}, timings)
        cond = self._step_condition({"text": hidden, "text_mask": mask, "kontext": kontext, "flags": flags}, timings)
        fixed = {**cond, "source": zeros, "region": region, "gate_map": np.ones((2, 1, h, h), np.float32)}
        s = float(self.sampler["text_guidance"] if self.sampler.get("gen_guidance") is None else self.sampler["gen_guidance"])
        x = self._loop(portable_normal(seed, (1, C, h, h)), fixed, 2, lambda v: v[1:2] + s * (v[0:1] - v[1:2]), timings)
        out = self._run("image_decoder", {"latent": x}, timings)
        timings["total"] = _ms(t_total)
        return Outcome(to_uint8(out[0]), normalise(timings))

    def decoder_call(self, batch: int, active: int | None = None):
        if active is not None:
            return None  # the plain peer runs the dense decoder only
        feeds = graph_feeds(manifest_tensors(self.manifest["graphs"]["decoder"]["inputs"]), batch)
        model = self.models["decoder"]
        return lambda: model(feeds)

    def edit_many(self, images, instructions, boxes, seeds):
        return [self._edit(img, ins, box, sd).image for img, ins, box, sd in zip(images, instructions, boxes, seeds)]

    def generate_many(self, prompts, seeds):
        return [self.generate(p, sd).image for p, sd in zip(prompts, seeds)]

    def close(self) -> None:
        self.models.clear()

