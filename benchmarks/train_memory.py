"""Training memory of a preset, measured on the CPU and extrapolated to a GPU batch.

Counts, for one training step, the bytes autograd saves for the backward pass (with
saved-tensor hooks, each storage once) at a small batch, scales them linearly to the preset's
batch, and adds weights, gradients, AdamW's two moments and the EMA copy (all FP32). This is an
estimate of a GPU's peak (the allocator's fragmentation and cuDNN/cuBLAS workspaces come on
top, typically 10-20 %). Writes benchmarks/results/cpu-2core/train_memory_<preset>.json.

    python benchmarks/train_memory.py --preset base
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from qk_train.models.unified import QKModel
from qk_train.train import make_batch, resolve_config


def saved_bytes(model: QKModel, cfg, batch_size: int) -> int:
    batch = make_batch(cfg, "main", 0, 0, 1, size=batch_size)
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        try:
            key = t.untyped_storage().data_ptr()
            seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        except RuntimeError:
            pass
        return t

    model.text_states(batch.texts)  # the frozen encoder's states are cached, outside autograd
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = model.loss(batch, torch.Generator().manual_seed(0))
    loss.backward()
    return sum(seen.values())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="base")
    parser.add_argument("--probe-batch", type=int, default=2)
    args = parser.parse_args(argv)
    cfg = resolve_config(args.preset, ["train.edit_fraction=1.0", f"data.buckets=[{resolve_config(args.preset, [], None).data.image_size}]", "data.bucket_weights=[1.0]"], None)
    bucket_factor = (max(resolve_config(args.preset, [], None).data.buckets) / cfg.data.image_size) ** 2  # tokens grow with area
    model = QKModel(cfg)
    trainable = sum(p.numel() for p in model.main_parameters())
    frozen = sum(p.numel() for p in model.parameters()) - trainable
    per_sample = saved_bytes(model, cfg, args.probe_batch) / args.probe_batch
    batch = cfg.train.batch_size
    states = trainable * 4 * 5 + frozen * 4  # weights, grads, 2 AdamW moments, EMA; frozen weights
    total = states + per_sample * batch
    report = {
        "preset": args.preset, "image_size": cfg.data.image_size, "batch_size": batch,
        "trainable_params": trainable, "frozen_params": frozen,
        "activation_mb_per_sample": round(per_sample / 2**20, 1),
        "states_gb": round(states / 2**30, 2), "activations_gb": round(per_sample * batch / 2**30, 2),
        "estimated_peak_gb_fp32": round(total / 2**30, 2),
        "estimated_peak_gb_fp32_largest_bucket": round((states + per_sample * batch * bucket_factor) / 2**30, 2),
        "method": "autograd saved tensors at the probe batch, scaled linearly; + FP32 weights, grads, AdamW, EMA",
    }
    print(json.dumps(report, indent=2))
    dest = Path(__file__).resolve().parent / "results" / "cpu-2core" / f"train_memory_{args.preset}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
