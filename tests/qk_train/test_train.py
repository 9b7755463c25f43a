import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from qk_train.config import ConfigError, load_preset
from qk_train.models import QKModel
from qk_train.pipeline import Pipeline
from qk_train.data.shapeworld import make_edit
from qk_train.train import Trainer, make_batch, main, resolve_config


def _fixed_loss(model, cfg):
    batch = make_batch(cfg, "main", 10_000, 0, 1, size=32)
    with torch.no_grad():
        loss, _ = model.loss(batch, torch.Generator().manual_seed(123))
    return float(loss)


def test_tiny_loss_falls(tmp_path):
    cfg = resolve_config("tiny", ["train.steps=60", "train.lr=3e-3"], None)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    before = _fixed_loss(trainer.model.eval(), cfg)
    trainer.run()
    after = _fixed_loss(trainer.model.eval(), cfg)
    assert after < 0.8 * before, (before, after)
    lines = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 60 and lines[-1]["img_s"] > 0


def test_checkpoint_writes_config_and_reloads_same_outputs(tiny_run):
    final = tiny_run / "final"
    assert (final / "hyperparameters.yaml").exists() and (final / "model.safetensors").exists()
    assert load_preset("tiny") == QKModel.from_checkpoint(final).cfg
    sample = make_edit("test", 3, 32)
    outs = [Pipeline(QKModel.from_checkpoint(final), steps=4).edit(sample.source, sample.instruction, sample.box, seed=7).image
            for _ in range(2)]
    assert outs[0].shape == (32, 32, 3) and outs[0].dtype == np.uint8
    np.testing.assert_array_equal(outs[0], outs[1])


def test_resume_equals_uninterrupted(tmp_path):
    cfg = resolve_config("tiny", ["train.steps=16", "train.checkpoint_every=4"], None)
    Trainer(cfg, tmp_path / "straight", progress=False).run()
    Trainer(cfg, tmp_path / "stopped", progress=False, max_steps=6).run()  # stops with a checkpoint at step 6
    assert not (tmp_path / "stopped" / "final").exists()
    Trainer(cfg, tmp_path / "stopped", progress=False).run()  # a new process would do the same
    a = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "stopped" / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_interrupted_step_checkpoint_is_atomic(tmp_path):
    cfg = resolve_config("tiny", ["train.steps=8", "train.checkpoint_every=4"], None)
    Trainer(cfg, tmp_path / "run", progress=False).run()
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["step-0000004", "step-0000008"]  # no .partial folders left behind


def test_cli_rejects_bad_config(tmp_path, capsys):
    assert main(["--preset", "nonexistent", "--out", str(tmp_path / "x")]) == 2
    assert "unknown preset 'nonexistent'" in capsys.readouterr().err
    assert main(["--preset", "tiny", "--out", str(tmp_path / "x"), "--set", "decoder.colour=3"]) == 2
    assert "unknown key(s) ['colour']" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="must divide the token grid"):
        resolve_config("tiny", ["decoder.attn_window=3"], None)


def test_cli_refuses_resuming_another_config(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["--preset", "tiny", "--out", out, "--steps", "4", "--no-progress"]) == 0
    assert main(["--preset", "tiny", "--out", out, "--set", "train.lr=0.5", "--no-progress"]) == 2
    assert "different config" in capsys.readouterr().err


def test_two_process_ddp_gloo(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533",
           "-m", "qk_train.train", "--preset", "tiny", "--out", str(out), "--steps", "6", "--no-progress", "--threads", "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads(next((out / "checkpoints").iterdir()).joinpath("train_state.json").read_text())
    assert meta["world"] == 2 and meta["step"] == 6
    assert (out / "final" / "model.safetensors").exists()
