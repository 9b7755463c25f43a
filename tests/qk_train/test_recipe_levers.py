"""Each training-recipe lever kept in the code is switchable by config and trains the tiny preset."""
import pytest
import torch
from safetensors.torch import load_file

from qk_train.config import ConfigError
from qk_train.optim import MuonAdamW, is_hidden_matrix
from qk_train.train import Trainer, resolve_config


def test_muon_updates_block_matrices_and_adamw_the_rest(tmp_path):
    cfg = resolve_config("tiny", ["train.optimizer=muon", "train.steps=2"], None)
    trainer = Trainer(cfg, tmp_path / "run", progress=False, max_steps=1)
    trainer.run()
    assert isinstance(trainer.opt, MuonAdamW)
    muon, adamw = trainer.opt.parts
    in_muon = {id(p) for g in muon.param_groups for p in g["params"]}
    named = dict(trainer.model.named_parameters())
    for name, p in trainer.params.items():
        assert (id(p) in in_muon) == is_hidden_matrix(name, p), name
    assert any(".blocks." in n for n, p in named.items() if id(p) in in_muon)
    assert not any(n.startswith("decoder.final") or n.endswith("x_embed.weight") for n, p in named.items() if id(p) in in_muon)


def test_muon_trains_and_resumes_bit_equal(tmp_path, fixed_loss):
    cfg = resolve_config("tiny", ["train.optimizer=muon", "train.steps=60", "train.lr=3e-3", "train.checkpoint_every=20"], None)
    trainer = Trainer(cfg, tmp_path / "straight", progress=False)
    before = fixed_loss(trainer.model.eval(), cfg)
    trainer.run()
    assert fixed_loss(trainer.model.eval(), cfg) < 0.8 * before
    Trainer(cfg, tmp_path / "stopped", progress=False, max_steps=30).run()
    Trainer(cfg, tmp_path / "stopped", progress=False).run()
    a = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "stopped" / "final" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_unknown_optimizer_is_named():
    with pytest.raises(ConfigError, match="train.optimizer='sgd'"):
        resolve_config("tiny", ["train.optimizer=sgd"], None)


def test_codec_from_takes_a_trained_autoencoder_frozen(tmp_path):
    # the small preset's codec from the shipped checkpoint; two joint steps, no autoencoder stage
    from pathlib import Path

    from qk_train.checkpoint import load_weights

    shipped = Path(__file__).resolve().parents[2] / "engines" / "default" / "checkpoint"
    cfg = resolve_config("small", ["train.steps=2", "train.batch_size=2", "data.buckets=[64]", "data.bucket_weights=[1.0]",
                                   f"train.codec_from={shipped}"], None)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    assert trainer.state.stage == "main"
    trainer.run()
    want = {k: v.float() for k, v in load_weights(shipped).items() if k.startswith("codec.")}
    got = load_weights(tmp_path / "run" / "final")
    assert want and all(torch.equal(got[k], want[k]) for k in want)


def test_codec_from_refuses_a_checkpoint_of_another_codec(tmp_path, capsys):
    from pathlib import Path

    from qk_train.train import main

    shipped = Path(__file__).resolve().parents[2] / "engines" / "default" / "checkpoint"
    assert main(["--preset", "tiny", "--out", str(tmp_path / "run"), "--codec-from", str(shipped)]) == 2
    assert "codec section differs" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_batched_muon_matches_torch_muon_and_shares_its_state():
    from qk_train.optim import Muon

    torch.manual_seed(0)
    shapes = [(24, 24), (24, 24), (48, 24), (24, 48)]
    ours = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    a = Muon(ours, lr=2e-3, weight_decay=0.01)
    b = torch.optim.Muon(ref, lr=2e-3, weight_decay=0.01, adjust_lr_fn="match_rms_adamw")
    start = [p.detach().clone() for p in ours]
    for _ in range(3):
        for p, q in zip(ours, ref):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        a.step()
        b.step()
    for p, q, s in zip(ours, ref, start):
        assert not torch.equal(p, s)
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-6)
    b.load_state_dict(a.state_dict())  # a run saved with one resumes with the other
    with pytest.raises(ValueError, match="2-D"):
        Muon([torch.nn.Parameter(torch.zeros(3))], lr=1e-3)


def test_bf16_precision_trains_and_resumes_bit_equal(tmp_path, fixed_loss):
    cfg = resolve_config("tiny", ["train.precision=bf16", "train.steps=40", "train.lr=3e-3", "train.checkpoint_every=20"], None)
    trainer = Trainer(cfg, tmp_path / "straight", progress=False)
    before = fixed_loss(trainer.model.eval(), cfg)
    trainer.run()
    assert fixed_loss(trainer.model.eval(), cfg) < 0.8 * before
    weights = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    assert all(v.dtype != torch.bfloat16 for v in weights.values())  # weights stay float32
    Trainer(cfg, tmp_path / "stopped", progress=False, max_steps=20).run()
    Trainer(cfg, tmp_path / "stopped", progress=False).run()
    again = load_file(str(tmp_path / "stopped" / "final" / "model.safetensors"))
    for k in weights:
        torch.testing.assert_close(weights[k], again[k], rtol=0, atol=0, msg=k)
    with pytest.raises(ConfigError, match="train.precision='fp16'"):
        resolve_config("tiny", ["train.precision=fp16"], None)
