"""qk_train/config.py's validation and qk-train's command line: numbers finite and sized for the
machine, preset files read as UTF-8 YAML, --threads checked; checkpoints' pretrained.json checked."""
import json
import shutil
from pathlib import Path

import pytest

from qk_train import checkpoint as ckpt
from qk_train.config import (ConfigError, check_train_memory, estimate_train_bytes, load_preset, machine_memory_bytes,
                             read_yaml)
from qk_train.train import main, resolve_config

ROOT = Path(__file__).resolve().parents[2]


def test_sizes_past_the_machines_memory_are_refused_with_the_estimate():
    """Before: --set train.batch_size=1e12 was accepted and training ran until memory ran out."""
    cfg = resolve_config("tiny", ["train.batch_size=1e12"], None)
    with pytest.raises(ConfigError, match=r"needs at least .* GiB per step \(estimate: .* MiB of activations per "
                                          r"sample x train.batch_size 1000000000000\)"):
        check_train_memory(cfg, machine_memory_bytes())
    for preset in ("tiny", "small"):  # the presets this machine trains fit
        check_train_memory(load_preset(preset), machine_memory_bytes())
    base = estimate_train_bytes(load_preset("base"))  # benchmarks/train_memory.py measured 18.5-27.5 GB: a lower estimate
    assert 10 * 2**30 < base["total"] < 28 * 2**30


@pytest.mark.parametrize("setting", ["train.lr=inf", "train.lr=.nan", "train.grad_clip=inf", "decoder.mlp_ratio=inf",
                                     "train.steps=1e400"])
def test_numbers_must_be_finite(setting):
    with pytest.raises(ConfigError, match="finite|should be a"):
        resolve_config("tiny", [setting], None)


def test_preset_files_are_utf8_and_not_empty(tmp_path):
    """Before: a non-UTF-8 preset was a UnicodeDecodeError traceback and an empty one silently the defaults."""
    for data, words in [(b"train: {lr: \xff}\n", "not UTF-8"), (b"", "is empty"), (b"# only a comment\n", "is empty"),
                        (b"[" * 5000 + b"]" * 5000, "not valid YAML")]:
        (tmp_path / "p.yaml").write_bytes(data)
        with pytest.raises(ConfigError, match=words):
            read_yaml(tmp_path / "p.yaml")


@pytest.mark.parametrize("argv, words", [
    (["--threads", "-1"], "--threads -1: must be from 1 to"),
    (["--threads", "0"], "--threads 0: must be from 1 to"),
    (["--set", "train.batch_size=1e12"], "needs at least"),
])
def test_qk_train_refuses_bad_arguments_in_one_line(tmp_path, capsys, argv, words):
    """Before: --threads -1 was a torch traceback, --threads 0 silently ignored."""
    assert main(["--preset", "tiny", "--out", str(tmp_path / "run"), "--max-steps", "1", "--no-progress", *argv]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_qk_train_refuses_a_run_folder_inside_what_it_reads(tmp_path, capsys):
    ck = shutil.copytree(ROOT / "engines" / "default" / "checkpoint", tmp_path / "ck")
    assert main(["--preset", "small", "--init-from", str(ck), "--out", str(ck / "run"), "--max-steps", "1"]) == 2
    assert "lies inside the checkpoint --init-from" in capsys.readouterr().err
    assert sorted(p.name for p in ck.iterdir()) == sorted(p.name for p in (ROOT / "engines" / "default" / "checkpoint").iterdir())


@pytest.mark.parametrize("text", ["{text_encoder: ", "[]", '{"text_encoder": {"package": "x"}}',
                                  '{"text_encoder": {"sha256": 5}}', "[" * 100_000 + "]" * 100_000, ""],
                         ids=["not JSON", "a list", "no sha256", "sha256 a number", "nested 100000 levels", "empty"])
def test_a_damaged_pretrained_json_is_a_checkpoint_error(tmp_path, text):
    """Before: JSONDecodeError, KeyError or RecursionError from QKModel.from_checkpoint."""
    ck = shutil.copytree(ROOT / "engines" / "default" / "checkpoint", tmp_path / "ck")
    (ck / ckpt.PRETRAINED_FILE).write_text(text)
    with pytest.raises(ckpt.CheckpointError, match="pretrained.json"):
        ckpt.check_checkpoint_dir(ck)
    from qk_train.models.unified import QKModel

    with pytest.raises(ckpt.CheckpointError, match="pretrained.json"):
        QKModel.from_checkpoint(ck)
    assert json.loads((ROOT / "engines" / "default" / "checkpoint" / ckpt.PRETRAINED_FILE).read_text())["text_encoder"]
