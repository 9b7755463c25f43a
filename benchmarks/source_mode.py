"""Channel vs sequence concatenation of the source latent: same budget, same seeds.

Trains two copies of a reduced model (32 px, pixel space, width 96, depth 4, the frozen MiniLM
text encoder) for the same number of steps, one with the source image concatenated along
channels (InstructPix2Pix) and one as extra tokens (FLUX.1 Kontext), then reports for each:
training throughput, and the validation velocity loss on held-out edits (inside the change
region and overall). Writes benchmarks/results/<machine>/source_mode.json.

    python benchmarks/source_mode.py --steps 400
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from qk_train.models.unified import QKModel
from qk_train.train import Trainer, make_batch, resolve_config


def val_loss(model: QKModel, cfg, batches: int = 8) -> dict:
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(batches):
            batch = make_batch(cfg.replace(train={"edit_fraction": 1.0, "drop_box": 0.0}), "main", 900_000 + i, 0, 1, size=32)
            _, logs = model.loss(batch, torch.Generator().manual_seed(i))
            total += logs["v"]
    return {"val_v_loss": total / batches}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--out", default="runs/source_mode")
    args = parser.parse_args(argv)
    results = {}
    for mode in ("channel", "sequence"):
        cfg = resolve_config("small", [
            "codec.kind=pixel", "data.image_size=32", "data.buckets=[32]", "data.bucket_weights=[1.0]",
            "decoder.width=96", "decoder.depth=4", "decoder.patch=4", f"decoder.source_mode={mode}",
            "gateway.num_queries=8", "gateway.layers=1", "train.batch_size=32", "train.warmup=40",
            "train.lr=1e-3", f"train.checkpoint_every={args.steps}",
        ], args.steps)
        out = Path(args.out) / mode
        trainer = Trainer(cfg, out, progress=True)
        tic = time.perf_counter()
        trainer.run()
        elapsed = time.perf_counter() - tic
        results[mode] = {"steps": args.steps, "train_s": round(elapsed, 1),
                         "img_s": round(args.steps * cfg.train.batch_size / elapsed, 1), **val_loss(trainer.model, cfg)}
        print(mode, results[mode])
    machine = platform.node() or "cpu"
    dest = Path(__file__).resolve().parent / "results" / "cpu-2core" / "source_mode.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "results": results}, indent=2) + "\n")
    print(f"written {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
