import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from qk_train.config import ConfigError, load_preset
from qk_train.models import QKModel
from qk_train.pipeline import Pipeline
from qk_train.data.shapeworld import make_edit
from qk_train.train import Trainer, main, resolve_config


def test_tiny_loss_falls(tmp_path, fixed_loss):
    cfg = resolve_config("tiny", ["train.steps=60", "train.lr=3e-3"], None)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    before = fixed_loss(trainer.model.eval(), cfg)
    trainer.run()
    after = fixed_loss(trainer.model.eval(), cfg)
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


def test_checkpoint_files_get_the_usual_permissions(tmp_path):
    # safetensors writes 0600 files; a checkpoint on a shared machine must be readable like any file
    from qk_train.checkpoint import save_checkpoint

    mask = os.umask(0o022)
    try:
        final = save_checkpoint(tmp_path / "ckpt", config_yaml="x: 1\n", weights={"w": torch.zeros(2)},
                                tokenizer_json="{}", pretrained={}, train_tensors={"t": torch.ones(1)}, train_meta={})
    finally:
        os.umask(mask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in final.iterdir()}
    assert modes and all(m == 0o644 for m in modes.values()), modes
    assert final.stat().st_mode & 0o777 == 0o755


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


def test_resume_after_a_kill_tidies_the_log_and_half_written_checkpoints(tmp_path):
    # a kill -9 after step 8 of a run checkpointed at 6 leaves log records of steps 7-8 (trained
    # again on resume) and perhaps a half-written checkpoint folder; before, both stayed
    cfg = resolve_config("tiny", ["train.steps=10", "train.checkpoint_every=6", "train.log_every=1", "train.ae_steps=2"], None)
    run = tmp_path / "run"
    Trainer(cfg, run, progress=False, max_steps=6).run()  # checkpoint at main step 6 (ae stage first)
    log = run / "log.jsonl"
    with open(log, "a") as f:
        f.write(json.dumps({"stage": "main", "step": 7, "loss": 1.0}) + "\n")
        f.write(json.dumps({"stage": "main", "step": 8, "loss": 1.0}) + "\n")
        f.write('{"stage": "main", "st')  # the line the kill cut
    (run / "checkpoints" / ".step-0000008.abc.partial").mkdir()
    Trainer(cfg, run, progress=False).run()
    records = [json.loads(line) for line in log.read_text().splitlines()]
    keys = [(r["stage"], r["step"]) for r in records]
    assert len(keys) == len(set(keys)), keys  # every step logged once
    assert [k for k in keys if k[0] == "main"] == [("main", s) for s in range(1, 11)]
    assert all("lr" in r for r in records)  # the fake records were dropped, the retrained steps logged
    assert not list((run / "checkpoints").glob(".*.partial"))


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



@pytest.mark.parametrize("override, message", [  # each was a traceback or a silent exit 0 before
    ("train.lr=-1", "train.lr=-1.0 must be >= 0"),
    ("train.checkpoint_every=0", "train.checkpoint_every=0 must be > 0"),
    ("decoder.heads=0", "decoder.heads=0 must be > 0"),
    ("train.ema_decay=2", "train.ema_decay=2.0 must lie in [0, 1)"),
    ("train.warmup=-5", "train.warmup=-5 must be >= 0"),
    ("data.buckets=abc", "buckets='abc' should be a list like [48, 64, 80]"),
    ("data.buckets=[32, x]", "buckets item='x' should be a int"),
    ("data.buckets=[32,", "the value is not valid YAML"),
])
def test_cli_names_a_bad_value_and_writes_nothing(override, message, tmp_path, capsys):
    assert main(["--preset", "tiny", "--out", str(tmp_path / "x"), "--set", override, "--max-steps", "1"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_refuses_max_steps_below_one(tmp_path, capsys):
    assert main(["--preset", "tiny", "--out", str(tmp_path / "x"), "--max-steps", "-1"]) == 2
    assert "--max-steps -1: must be >= 1" in capsys.readouterr().err


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


def _write_png(path, array):
    from PIL import Image

    Image.fromarray(array).save(path)


def test_trains_on_a_users_edit_manifest(tmp_path, capsys):
    rng = np.random.default_rng(0)
    lines = []
    for i in range(3):
        src = rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)
        tgt = src.copy()
        tgt[10:20, 30:40] = (255, 0, 0)
        _write_png(tmp_path / f"s{i}.png", src)
        _write_png(tmp_path / f"t{i}.png", tgt)
        lines.append(json.dumps({"source": f"s{i}.png", "instruction": "make the patch red", "target": f"t{i}.png",
                                 "box": [30, 10, 40, 20]}))
    (tmp_path / "edits.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    args = ["--preset", "tiny", "--out", str(out), "--steps", "3", "--no-progress",
            "--set", f"data.edit_manifest={tmp_path / 'edits.jsonl'}", "--set", "train.edit_fraction=1.0"]
    assert main(args) == 0
    assert (out / "final" / "model.safetensors").exists()
    (tmp_path / "bad.jsonl").write_text(lines[0] + "\n{not json\n")
    bad = ["--preset", "tiny", "--out", str(tmp_path / "run2"), "--set", f"data.edit_manifest={tmp_path / 'bad.jsonl'}"]
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:2" in err and not (tmp_path / "run2").exists()


def test_autoencoder_stage_then_joint_stage_resumes(tmp_path):
    sets = ["codec.kind=tiny_ae", "codec.block_channels=[8,8,8]", "decoder.patch=2", "train.ae_steps=4",
            "train.ae_batch_size=4", "train.steps=4", "train.checkpoint_every=2"]
    cfg = resolve_config("tiny", sets, None)
    Trainer(cfg, tmp_path / "straight", progress=False).run()
    Trainer(cfg, tmp_path / "stopped", progress=False, max_steps=4).run()  # ends right after the AE stage
    Trainer(cfg, tmp_path / "stopped", progress=False).run()
    a = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "stopped" / "final" / "model.safetensors"))
    assert float(a["codec.scale"].min()) > 0 and not torch.equal(a["codec.scale"], torch.ones_like(a["codec.scale"]))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    model = QKModel.from_checkpoint(tmp_path / "stopped" / "final")
    assert model.factor == 4


def test_release_writes_half_precision_weights_that_load_and_edit_alike(tiny_run, tmp_path, capsys):
    final = tiny_run / "final"
    out = tmp_path / "released"
    assert main(["--release", str(final), "--out", str(out), "--dtype", "float16"]) == 0
    weights = load_file(str(out / "model.safetensors"))
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float16}
    assert not (out / "train_state.safetensors").exists() and not list(out.glob("*state*"))
    assert (out / "model.safetensors").stat().st_size < 0.6 * (final / "model.safetensors").stat().st_size
    sample = make_edit("test", 3, 32)
    a = Pipeline(QKModel.from_checkpoint(final), steps=4).edit(sample.source, sample.instruction, sample.box, seed=7).image
    b = Pipeline(QKModel.from_checkpoint(out), steps=4).edit(sample.source, sample.instruction, sample.box, seed=7).image
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2  # float16 storage rounds weights by ~5e-4


def test_release_refuses_a_folder_that_is_not_a_checkpoint(tiny_run, tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["--release", str(tiny_run / "final"), "--out", str(tmp_path / "mine")]) == 2
    assert "not a checkpoint" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert main(["--release", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_release_never_replaces_a_run_or_its_own_source(tiny_run, tmp_path, capsys):
    # before: --release RUN/final --out RUN replaced the whole run (checkpoints, log) by the copy
    import shutil

    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    before = sorted(p.name for p in run.iterdir())
    assert main(["--release", str(run / "final"), "--out", str(run)]) == 2
    assert "is a training run folder" in capsys.readouterr().err
    assert main(["--release", str(run / "final"), "--out", str(run / "final")]) == 2
    assert "holds" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == before and (run / "final" / "train_state.json").exists() is False
    assert main(["--release", str(run / "final"), "--out", str(tmp_path / "rel")]) == 0
    assert main(["--release", str(run / "final"), "--out", str(tmp_path / "rel"), "--dtype", "float16"]) == 0  # a release is replaced


def test_out_must_be_new_empty_or_a_run(tiny_run, tmp_path, capsys):
    # before: --out on a checkpoint overwrote its config (its weights then no longer loaded); a folder of
    # other files got the run mixed in
    import shutil

    ckpt_copy = Path(shutil.copytree(tiny_run / "final", tmp_path / "ckpt"))
    config = (ckpt_copy / "hyperparameters.yaml").read_text()
    assert main(["--preset", "small", "--out", str(ckpt_copy), "--max-steps", "1", "--no-progress"]) == 2
    assert "is a checkpoint, not a run folder" in capsys.readouterr().err
    assert (ckpt_copy / "hyperparameters.yaml").read_text() == config
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["--preset", "tiny", "--out", str(tmp_path / "mine"), "--max-steps", "1", "--no-progress"]) == 2
    assert "holds files qk-train did not write" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
    (tmp_path / "afile").write_text("x")
    assert main(["--preset", "tiny", "--out", str(tmp_path / "afile"), "--max-steps", "1", "--no-progress"]) == 2
    assert "is a file" in capsys.readouterr().err


def test_init_from_starts_a_new_run_from_a_checkpoints_weights(tiny_run, tmp_path):
    src = load_file(str(tiny_run / "final" / "model.safetensors"))
    # lr 0: the run must end with exactly the weights it started from
    cfg = resolve_config("tiny", ["train.steps=3", "train.lr=0", f"train.init_from={tiny_run / 'final'}"], None)
    Trainer(cfg, tmp_path / "still", progress=False).run()
    out = load_file(str(tmp_path / "still" / "final" / "model.safetensors"))
    assert out.keys() == src.keys()
    for k in src:
        torch.testing.assert_close(out[k], src[k], rtol=0, atol=0, msg=k)
    # with training: its first loss (same batch and noise: same seed and step) is the trained
    # model's, below a fresh run's (the tiny fixture trained only 30 steps: about 0.9x)
    first = {}
    for name, extra in (("warm", [f"train.init_from={tiny_run / 'final'}"]), ("fresh", [])):
        cfg = resolve_config("tiny", ["train.steps=1", "train.log_every=1", "train.seed=5", *extra], None)
        Trainer(cfg, tmp_path / name, progress=False).run()
        first[name] = json.loads((tmp_path / name / "log.jsonl").read_text().splitlines()[0])["v"]
    assert first["warm"] < 0.95 * first["fresh"], first


def test_init_from_refuses_another_preset_or_a_missing_folder(tiny_run, tmp_path, capsys):
    assert main(["--preset", "small", "--init-from", str(tiny_run / "final"), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "--init-from" in err and "differs" in err and "'tiny'" in err
    assert main(["--preset", "tiny", "--init-from", str(tmp_path / "nope"), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "--init-from" in err and "does not exist" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_stops_training_with_a_checkpoint_that_resumes(tmp_path, sig):
    """`kill` (SIGTERM) and Ctrl-C end a run with a checkpoint, even where the shell that started
    it in the background set SIGINT to ignored (as shells without job control do)."""
    import signal
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "qk_train.train", "--preset", "tiny", "--steps", "100000", "--set", "train.log_every=1",
           "--threads", "1", "--no-progress", "--out", str(out)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    deadline = time.monotonic() + 240
    while not (out / "log.jsonl").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted: checkpoint saved" in err
    saved = sorted((out / "checkpoints").iterdir())
    assert len(saved) == 1 and int(saved[0].name.split("-")[1]) >= 1
    trainer = Trainer(resolve_config("tiny", ["train.steps=100000", "train.log_every=1"], None), out, progress=False, max_steps=1)
    trainer.run()
    assert trainer.state.step == int(saved[0].name.split("-")[1]) + 1


def test_device_cuda_without_a_gpu_is_a_clear_error(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    assert main(["--preset", "tiny", "--device", "cuda", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "--device cuda" in err and "--device cpu" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none here); the CPU path is every other test")
def test_trains_on_the_gpu_and_the_checkpoint_loads_on_the_cpu(tmp_path):
    cfg = resolve_config("tiny", ["train.steps=4", "train.checkpoint_every=2"], None)
    trainer = Trainer(cfg, tmp_path / "run", progress=False, device="cuda")
    assert next(trainer.model.parameters()).is_cuda
    trainer.run()
    model = QKModel.from_checkpoint(tmp_path / "run" / "final")
    sample = make_edit("test", 3, 32)
    out = Pipeline(model, steps=2).edit(sample.source, sample.instruction, sample.box, seed=1).image
    assert out.shape == (32, 32, 3)
    Trainer(cfg, tmp_path / "run", progress=False, device="cuda").run()  # resumes from the GPU checkpoint


# --------------------------------------------------------------------------- wall clock and --data device


def _same_weights(a_dir, b_dir):
    a = load_file(str(a_dir / "final" / "model.safetensors"))
    b = load_file(str(b_dir / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


@pytest.mark.usefixtures("one_thread")
def test_time_budget_stops_with_a_checkpoint_and_the_same_command_finishes_the_run(tmp_path, capsys):
    base = ["--preset", "tiny", "--steps", "4", "--set", "train.checkpoint_every=1000", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "straight")]) == 0
    budget = [*base, "--out", str(tmp_path / "budget"), "--time-budget", "0.0001"]  # 6 ms: one step per call
    assert main(budget) == 0
    assert "time budget of 0.0001 min spent" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "budget" / "checkpoints").iterdir()] == ["step-0000001"]
    assert not (tmp_path / "budget" / "final").exists()
    for _ in range(3):
        assert main(budget) == 0
    _same_weights(tmp_path / "straight", tmp_path / "budget")


@pytest.mark.usefixtures("one_thread")
def test_data_device_trains_the_same_weights_as_data_cpu(tmp_path):
    base = ["--preset", "tiny", "--steps", "3", "--set", "train.edit_fraction=0.6", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "cpu")]) == 0
    assert main([*base, "--out", str(tmp_path / "device"), "--data", "device", "--data-workers", "1"]) == 0
    _same_weights(tmp_path / "cpu", tmp_path / "device")


@pytest.mark.parametrize("flags, message", [
    (["--time-budget", "-1"], "--time-budget -1: must be a number of minutes > 0"),
    (["--time-budget", "0"], "--time-budget 0: must be a number of minutes > 0"),
    (["--checkpoint-minutes", "0"], "--checkpoint-minutes 0: must be a number of minutes > 0"),
    (["--checkpoint-minutes", "-0.5"], "--checkpoint-minutes -0.5: must be a number of minutes > 0"),
    (["--data-workers", "-1", "--data", "device"], "--data-workers -1: must be >= 0"),
    (["--data", "device", "--set", "data.caption_json=captions.json"], "use --data cpu"),
])
def test_cli_refuses_bad_wall_clock_and_data_values(flags, message, tmp_path, capsys):
    assert main(["--preset", "tiny", "--out", str(tmp_path / "x"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_killed_run_keeps_its_last_timed_checkpoint_and_the_same_command_resumes(tmp_path, capsys):
    """SIGKILL (no handler runs) loses at most --checkpoint-minutes of training."""
    import signal
    import time

    out = tmp_path / "run"
    args = ["--preset", "tiny", "--steps", "100000", "--set", "train.checkpoint_every=100000", "--set", "train.log_every=1",
            "--checkpoint-minutes", "0.003", "--time-budget", "0.1", "--threads", "1", "--no-progress", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "qk_train.train", *args], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    saved = []
    while not saved and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
        saved = sorted((out / "checkpoints").glob("step-*")) if (out / "checkpoints").exists() else []
    assert proc.poll() is None, proc.stderr.read()  # still training: only the clock wrote checkpoints
    proc.kill()
    proc.communicate(timeout=60)
    saved = sorted((out / "checkpoints").glob("step-*"))
    assert saved, "no checkpoint survived the kill"
    step = int(saved[-1].name.split("-")[1])
    assert step >= 1
    assert main(args) == 0  # the same command: resumes, trains until the 6 s budget is spent, checkpoints
    err = capsys.readouterr().err
    assert f"resuming from {saved[-1]}" in err and "time budget of 0.1 min spent" in err
    assert int(sorted((out / "checkpoints").glob("step-*"))[-1].name.split("-")[1]) > step
