"""The reference pipeline in torch: `generate(prompt)` and `edit(image, instruction, box)`.

Exported graphs and the runtimes are checked against this. The sampler is diffusers'
`FlowMatchEulerDiscreteScheduler`; the initial noise comes from the portable generator in
`qk_runtime.noise`, so every runtime can reproduce it bit for bit.

An edit, step by step (the runtimes follow the same order):
1. the image (uint8, H x W x 3, resized to the model's side if needed) goes to [-1, 1] and
   through the codec's encoder; the box becomes a region mask at latent resolution;
2. the instruction and the empty string are encoded; the gateway makes kontext tokens for the
   three guidance branches (text+image, image only, neither), or the first two only where
   image guidance is 1 (the third's weight is then 0; a third less decoder work);
3. the Cross-Modal Gate runs once, on the fully conditioned branch; its per-token gate,
   thresholded at `gate_threshold`, is the edit's active region m;
4. the denoising loop: each step runs the decoder on the branches (one batch), gates each
   with m (v = m v_pred + (1 - m) (x - source) / sigma), combines them
   v = v_uu + s_img (v_ui - v_uu) + s_txt (v_ti - v_ui) (v = v_ui + s_txt (v_ti - v_ui) with
   two branches), and takes an Euler step;
5. the codec decodes; pixels outside m (at pixel resolution) are the source's own, and with
   `composite="changed"` (the default) so are the pixels inside m that the edit leaves as they
   were: the source latent is decoded too, and where the two decodings agree (mean RGB
   difference below `change_lo`, ramping to the decoded image's at `change_hi`, widened by
   `change_widen` 3 x 3 max filters) the source's own pixels are kept (`qk_runtime.composite`,
   the rule every runtime applies; bundles carry it in their manifest's `composite` entry).

`sparse="region"` runs the decoder on the active tokens plus a halo only, the token count
rounded up to a bucket (a quarter, half, three quarters or all of the tokens).

Few-step sampling (a model with `decoder.step_size_cond`, trained with `train.shortcut_fraction`):
at the step counts of `few_step_steps` (default the model's `train.shortcut_steps`, e.g. 1, 2, 4)
the sigmas are uniform, sigma_k = (n - k) / n (`qk_runtime.sampler.few_step_sigmas`, no shift),
each decoder call gets step_size = sigma - sigma_next and the Euler step is
x <- x + (sigma_next - sigma) v: the model predicts the mean velocity over the step. At every
other step count (the default 20) the sampler is the ordinary one, with step_size 0 (the
instantaneous velocity), so a 20-step edit runs as it would without the feature. Gating,
back-to-source velocity and guidance are the same at every step count.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from qk_runtime.composite import Composite, composite as composite_images
from qk_runtime.noise import portable_normal
from qk_runtime.sampler import edit_branches, few_step_sigmas
# the runtime's rule (buckets qk_runtime.contract.REGION_BUCKETS), so reference and runtimes run the same tokens
from qk_runtime.session import active_token_indices

from .models.unified import QKModel


# compositing thresholds (qk_runtime.composite kind "changed"), chosen on 200 validation edits
# (benchmarks/seam_compositing.py, benchmarks/results/cpu-2core/seam_compositing.md): lo above the
# background colour drift the decoder leaves inside the gate, hi below the smallest ShapeWorld
# colour change (yellow <-> orange, 0.118), one widening so that object edges are not cut (inside
# error 0.0579 vs 0.0577 gate only, 0.0595 without); seam inside the gate 0.035 -> 0.016 (median
# per edit 0.023 -> 0.002), success unchanged (0.685, no edit flips)
CHANGE_LO = 0.05
CHANGE_HI = 0.10
CHANGE_WIDEN = 1


@dataclass
class PipelineOutput:
    image: np.ndarray  # (H, W, 3) uint8
    gate: np.ndarray | None = None  # (grid, grid) per-token gate in [0, 1] (edits)
    active_tokens: int | None = None  # tokens the decoder ran on (region mode)
    decoded: np.ndarray | None = None  # (3, S, S) float32 in [-1, 1]: the codec's decoding, before compositing (edits)
    source_decoded: np.ndarray | None = None  # (3, S, S) the decoded source latent (edits with composite "changed")
    extras: dict = field(default_factory=dict)


def box_to_mask(box: tuple[int, int, int, int] | None, side: int) -> np.ndarray:
    mask = np.zeros((side, side), np.float32)
    if box is not None:
        x0, y0, x1, y1 = box
        mask[y0:y1, x0:x1] = 1.0
    return mask


def check_box(box, width: int, height: int) -> tuple[int, int, int, int]:
    """The rule: integers with 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height (x1, y1 exclusive)."""
    try:
        x0, y0, x1, y1 = (int(v) for v in box)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"box {box!r} must be four integers x0,y0,x1,y1") from exc
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(
            f"box {box!r} is outside the {width}x{height} image, inverted or empty; "
            f"need 0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height}"
        )
    return x0, y0, x1, y1


class Pipeline:
    # defaults chosen on the validation split (benchmarks/sampler_sweep.py; README "Sampler settings";
    # compositing: benchmarks/seam_compositing.py)
    def __init__(self, model: QKModel, *, steps: int = 20, text_guidance: float = 3.0,
                 image_guidance: float = 1.0, gate_threshold: float | None = 0.3, gen_guidance: float = 5.0,
                 composite: str = "changed", change_lo: float = CHANGE_LO, change_hi: float = CHANGE_HI,
                 change_widen: int = CHANGE_WIDEN, few_step_steps: tuple[int, ...] | None = None):
        self.model = model.eval()
        self.cfg = model.cfg
        self.steps = steps
        self.text_guidance = text_guidance
        self.image_guidance = image_guidance
        self.gen_guidance = gen_guidance
        self.gate_threshold = gate_threshold
        # the edit's compositing (module doc, step 5); composite="gate": every pixel inside m is the decoder's
        self.composite = (Composite(composite, change_lo, change_hi, change_widen) if composite == "changed"
                          else Composite(composite))
        # step counts run as shortcut steps (module doc); () samples the instantaneous velocity at every count
        self.step_size_cond = model.cfg.decoder.step_size_cond
        if few_step_steps is None:
            few_step_steps = model.cfg.train.shortcut_steps if self.step_size_cond else ()
        if few_step_steps and not self.step_size_cond:
            raise ValueError(f"few_step_steps={list(few_step_steps)} needs a model with decoder.step_size_cond; "
                             f"this one samples the instantaneous velocity only (leave few_step_steps out)")
        self.few_step_steps = tuple(int(n) for n in few_step_steps)

    # ------------------------------------------------------------------ helpers

    @property
    def side(self) -> int:
        return self.cfg.data.image_size

    def scheduler(self, steps: int):
        from diffusers import FlowMatchEulerDiscreteScheduler

        sched = FlowMatchEulerDiscreteScheduler(shift=1.0)
        sched.set_timesteps(steps)  # sigmas: (steps + 1,), from 1 down to 1/1000, then 0
        return sched

    def sampling(self, steps: int, batch: int):
        """The denoising loop's schedule: per step, (sigma (batch,), the decoder's keyword arguments,
        the Euler update x -> x_next given the guided velocity). The ordinary scheduler, or at a
        few-step count the uniform sigmas with step_size = sigma - sigma_next (module doc)."""
        if steps in self.few_step_steps:
            sigmas = torch.from_numpy(few_step_sigmas(steps))  # (steps + 1,) float32, last 0
            for i in range(steps):
                d = sigmas[i] - sigmas[i + 1]  # float32, as the runtimes compute it
                update = lambda v, x, i=i: x + (sigmas[i + 1] - sigmas[i]) * v  # noqa: E731
                yield sigmas[i].expand(batch), {"step_size": d.expand(batch)}, update
            return
        sched = self.scheduler(steps)
        extra = {"step_size": torch.zeros(batch)} if self.step_size_cond else {}
        for i, t in enumerate(sched.timesteps):
            yield sched.sigmas[i].to(torch.float32).expand(batch), extra, lambda v, x, t=t: sched.step(v, t, x).prev_sample

    def _noise(self, seed: int, h: int, w: int) -> torch.Tensor:
        return torch.from_numpy(portable_normal(seed, (1, self.model.codec.channels, h, w)))

    def _to_model_side(self, image: np.ndarray) -> np.ndarray:
        if image.shape[:2] == (self.side, self.side):
            return image
        return np.asarray(Image.fromarray(image).resize((self.side, self.side), Image.BILINEAR))

    # ------------------------------------------------------------------ generation

    def generate(self, prompt: str, *, steps: int | None = None, guidance: float | None = None, seed: int = 0) -> PipelineOutput:
        return self.generate_batch([prompt], steps=steps, guidance=guidance, seeds=[seed])[0]

    @torch.no_grad()
    def generate_batch(self, prompts: list[str], *, steps: int | None = None, guidance: float | None = None,
                       seeds: list[int] | None = None) -> list[PipelineOutput]:
        """Text-to-image for several prompts at once; each equals `generate` alone."""
        m = self.model
        n = len(prompts)
        seeds = list(seeds) if seeds is not None else [0] * n
        steps = steps or self.steps
        s_txt = self.gen_guidance if guidance is None else guidance
        h = w = self.side // m.factor
        C = m.codec.channels
        text, mask = m.text_states(list(prompts) + [""] * n)  # (2n, L, Wt): conditioned, then unconditioned
        zeros = torch.zeros(2 * n, C, h, w)
        region = torch.zeros(2 * n, 1, h, w)
        flags = torch.zeros(2 * n, 2)
        kontext = m.kontext(text, mask, zeros, region, flags)
        gate_map = torch.ones(2 * n, 1, h, w)  # m = 1: text-to-image changes everything
        x = torch.cat([self._noise(sd, h, w) for sd in seeds])
        for sigma, step_kw, update in self.sampling(steps, 2 * n):
            v = m.decoder(x.repeat(2, 1, 1, 1), sigma, text, mask, kontext, zeros, region, gate_map, flags, **step_kw)
            v = v[n:] + s_txt * (v[:n] - v[n:])
            x = update(v, x)
        images = m.codec.decode(x)
        return [PipelineOutput(image=_to_uint8(images[k])) for k in range(n)]

    # ------------------------------------------------------------------ editing

    def _prepare_box(self, box, H0: int, W0: int):
        if box is None:
            return None
        box = check_box(box, W0, H0)
        if (H0, W0) != (self.side, self.side):  # scale the box with the image
            sx, sy = self.side / W0, self.side / H0
            x0, y0 = int(np.floor(box[0] * sx)), int(np.floor(box[1] * sy))
            box = (x0, y0, max(int(np.ceil(box[2] * sx)), x0 + 1), max(int(np.ceil(box[3] * sy)), y0 + 1))
        return box

    def edit(self, image: np.ndarray, instruction: str, box=None, *, steps: int | None = None,
             text_guidance: float | None = None, image_guidance: float | None = None, seed: int = 0,
             sparse: str = "none") -> PipelineOutput:
        return self.edit_batch([image], [instruction], [box], steps=steps, text_guidance=text_guidance,
                               image_guidance=image_guidance, seeds=[seed], sparse=sparse)[0]

    @torch.no_grad()
    def edit_batch(self, images: list[np.ndarray], instructions: list[str], boxes: list | None = None, *,
                   steps: int | None = None, text_guidance: float | None = None, image_guidance: float | None = None,
                   seeds: list[int] | None = None, sparse: str = "none") -> list[PipelineOutput]:
        """Several edits at once (one decoder call per step for all of them); each equals `edit` alone."""
        if sparse not in ("none", "region"):
            raise ValueError(f"sparse={sparse!r}; the torch pipeline supports 'none' and 'region'")
        n = len(images)
        if sparse == "region" and n != 1:
            raise ValueError("sparse='region' runs one edit at a time (each has its own active tokens)")
        boxes = list(boxes) if boxes is not None else [None] * n
        seeds = list(seeds) if seeds is not None else [0] * n
        if not (len(instructions) == len(boxes) == len(seeds) == n):
            raise ValueError("images, instructions, boxes and seeds must have the same length")
        m = self.model
        steps = steps or self.steps
        s_txt = self.text_guidance if text_guidance is None else text_guidance
        s_img = self.image_guidance if image_guidance is None else image_guidance
        side = self.side
        sizes = [img.shape[:2] for img in images]
        boxes = [self._prepare_box(b, h0, w0) for b, (h0, w0) in zip(boxes, sizes)]
        src_imgs = [self._to_model_side(img) for img in images]
        src_px = torch.from_numpy(np.stack(src_imgs).astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2)  # (n, 3, S, S)
        src = m.codec.encode(src_px)  # (n, C, h, w)
        _, C, h, w = src.shape
        region = m.latent_mask(torch.from_numpy(np.stack([box_to_mask(b, side) for b in boxes]))[:, None])  # (n, 1, h, w)
        has_region = torch.tensor([0.0 if b is None else 1.0 for b in boxes])

        # branches, each a block of n: text+image, image only, neither; with image guidance 1 the
        # last has weight 0 and is not run
        nb = edit_branches(s_img)
        text, mask = m.text_states(list(instructions) + [""] * ((nb - 1) * n))  # (nb n, L, Wt)
        sources = torch.cat([src, src, torch.zeros_like(src)][:nb])
        regions = torch.cat([region, region, torch.zeros_like(region)][:nb])
        ones = torch.ones(n)
        flags = torch.cat([torch.stack([ones, has_region], 1), torch.stack([ones, has_region], 1), torch.zeros(n, 2)][:nb])
        kontext = m.kontext(text, mask, sources, regions, flags)

        p = m.patch
        gh, gw = h // p, w // p
        if m.cmg is not None:
            logits = m.gate_logits(None if kontext is None else kontext[:n], text[:n], mask[:n], src, region)
            gate = torch.sigmoid(logits)  # (n, N)
        else:
            gate = torch.ones(n, gh * gw)
        m_tok = (gate > self.gate_threshold).float() if self.gate_threshold is not None else gate
        gate_map = m.gate_map(m_tok, h, w)  # (n, 1, h, w)
        gate_maps = gate_map.repeat(nb, 1, 1, 1)

        active = None
        if sparse == "region":
            idx = active_token_indices(m_tok[0].numpy() > 0.5, gh, gw)
            active = torch.from_numpy(idx)[None].expand(nb, -1)

        x = torch.cat([self._noise(sd, h, w) for sd in seeds])  # (n, C, h, w)
        for sigma, step_kw, update in self.sampling(steps, nb * n):
            xb = x.repeat(nb, 1, 1, 1)
            if active is None:
                v = m.decoder(xb, sigma, text, mask, kontext, sources, regions, gate_maps, flags, **step_kw)
            else:
                v_tok = m.decoder(xb, sigma, text, mask, kontext, sources, regions, gate_maps, flags, active=active,
                                  **step_kw)
                back = (xb - sources) / sigma.clamp_min(1e-3)[:, None, None, None]
                v = _scatter_tokens(back, v_tok, active[0], p)
            v = QKModel.gated_velocity(v, xb, sources, sigma, gate_maps)
            if nb == 2:
                v = v[n:] + s_txt * (v[:n] - v[n:])
            else:
                v_ti, v_ui, v_uu = v[:n], v[n:2 * n], v[2 * n:]
                v = v_uu + s_img * (v_ui - v_uu) + s_txt * (v_ti - v_ui)
            x = update(v, x)
        decoded = m.codec.decode(x).numpy()  # (n, 3, S, S)
        src_dec, out = None, decoded
        if m.cmg is not None:  # outside the active region, and where the edit changed nothing, the source's own pixels
            pix = F.interpolate(gate_map, scale_factor=m.factor, mode="nearest") if m.factor > 1 else gate_map
            src_dec = m.codec.decode(src).numpy() if self.composite.decodes_source else None  # (n, 3, S, S)
            out = composite_images(decoded, src_px.numpy(), pix.numpy(), self.composite, src_dec)
        out = torch.from_numpy(out)
        results = []
        for k in range(n):
            result = _to_uint8(out[k])
            H0, W0 = sizes[k]
            if (H0, W0) != (side, side):
                result = np.asarray(Image.fromarray(result).resize((W0, H0), Image.BILINEAR))
            results.append(PipelineOutput(image=result, gate=gate[k].reshape(gh, gw).numpy(),
                                          active_tokens=None if active is None else int(active.shape[1]),
                                          decoded=decoded[k], source_decoded=None if src_dec is None else src_dec[k]))
        return results


def _scatter_tokens(full: torch.Tensor, tokens: torch.Tensor, index: torch.Tensor, p: int) -> torch.Tensor:
    """Write per-token velocities (B, M, C*p*p) of `index` into a (B, C, h, w) map."""
    from .models.layers import patchify, unpatchify

    B, C, h, w = full.shape
    flat = patchify(full, p).clone()  # (B, N, C*p*p)
    flat[:, index] = tokens
    return unpatchify(flat, p, C, h, w)


def _to_uint8(img: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    arr = ((img.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return arr.permute(1, 2, 0).numpy()
