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


# token routing (TREAD): the tiny preset at patch 4 (8 x 8 tokens at 32 px, so an edit's change
# leaves tokens to route) with a third block, routing past block 1
ROUTE = ["decoder.patch=4", "decoder.depth=3", "train.route_blocks=[1, 2]"]


def _weights(folder):
    return load_file(str(folder / "final" / "model.safetensors"))


@pytest.mark.usefixtures("one_thread")
def test_routing_off_trains_bit_equal_to_no_routing(tmp_path):
    plain = resolve_config("tiny", [*ROUTE[:2], "train.steps=3"], None)
    Trainer(plain, tmp_path / "plain", progress=False).run()
    want = _weights(tmp_path / "plain")
    # off: route_blocks is not read; a fraction that routes no token (round(0.005 * 64) = 0) draws
    # once more after every other draw of the step, and changes nothing either
    for i, sets in enumerate([["train.route_fraction=0", "train.route_blocks=[0, 3]"], ["train.route_fraction=0.005"]]):
        cfg = resolve_config("tiny", [*ROUTE, *sets, "train.steps=3"], None)
        Trainer(cfg, tmp_path / f"r{i}", progress=False).run()
        got = _weights(tmp_path / f"r{i}")
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)


@pytest.mark.usefixtures("one_thread")
def test_a_route_that_keeps_every_token_changes_nothing():
    from qk_train.models.dit import Route
    from qk_train.models.unified import QKModel

    for mode in ("channel", "sequence"):
        cfg = resolve_config("tiny", [*ROUTE, f"decoder.source_mode={mode}"], None)
        torch.manual_seed(0)
        model = QKModel(cfg).eval()
        for layer in [block.ada[1] for block in model.decoder.blocks] + [model.decoder.final.linear]:
            torch.nn.init.normal_(layer.weight, std=0.1)  # adaLN-Zero starts as the identity and zero: open it
        g = torch.Generator().manual_seed(1)
        B, h = 2, 32
        x, src = torch.randn(B, 3, h, h, generator=g), torch.randn(B, 3, h, h, generator=g)
        region, gate = torch.ones(B, 1, h, h), torch.ones(B, 1, h, h)
        text, mask = model.text_states(["make the red square blue", "a red square"])
        flags = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
        sigma = torch.tensor([0.7, 0.2])
        with torch.no_grad():
            kontext = model.kontext(text, mask, src, region, flags)
            args = (x, sigma, text, mask, kontext, src, region, gate, flags)
            ref = model.decoder(*args)
            every = Route(torch.arange(64).expand(B, -1), 1, 2)
            assert torch.equal(model.decoder(*args, route=every), ref), mode
            half = Route(torch.arange(0, 64, 2).expand(B, -1), 1, 2)
            assert not torch.equal(model.decoder(*args, route=half), ref), mode


@pytest.mark.usefixtures("one_thread")
def test_routing_never_routes_the_tokens_an_edit_changes(tmp_path):
    """The real loss's routed forward, read back through block hooks: block 1 runs the kept tokens
    only, every edit's changed tokens (dilated by one) among them; the others rejoin unchanged."""
    import torch.nn.functional as F

    from qk_train.models.unified import QKModel
    from qk_train.train import make_batch

    cfg = resolve_config("tiny", [*ROUTE, "train.route_fraction=0.5", "train.batch_size=16"], None)
    torch.manual_seed(0)
    model = QKModel(cfg)
    for block in model.decoder.blocks:
        torch.nn.init.normal_(block.ada[1].weight, std=0.1)
    seen = {}
    hooks = [model.decoder.blocks[0].register_forward_hook(lambda m, i, o: seen.__setitem__("before", o)),
             model.decoder.blocks[1].register_forward_hook(lambda m, i, o: seen.__setitem__("kept", (i[0], o))),
             model.decoder.blocks[2].register_forward_pre_hook(lambda m, i: seen.__setitem__("after", i[0]))]
    checked_edits = routed_any = 0
    for step in range(3):
        batch = make_batch(cfg, "main", step, 0, 1)
        side = batch.target.shape[-1]
        grid = side // 4
        with torch.no_grad():
            _, logs = model.loss(batch, torch.Generator().manual_seed(step))
        before, (kept_in, kept_out), after = seen["before"], seen["kept"], seen["after"]
        N, K = grid * grid, kept_in.shape[1]
        assert before.shape[1] == after.shape[1] == N and K < N
        assert logs["routed"] == pytest.approx(1 - K / N)
        changed = F.max_pool2d(batch.change, 4)  # (B, 1, grid, grid): a token changes if any of its pixels does
        protect = F.max_pool2d(changed, 3, stride=1, padding=1).flatten(1) > 0  # dilated by one token
        for b in range(batch.target.shape[0]):
            # which tokens block 1 ran: its input rows are copies of block 0's output rows
            match = (kept_in[b][:, None] == before[b][None]).all(-1)  # (K, N)
            assert (match.sum(1) == 1).all()
            kept = match.float().argmax(1)
            routed = torch.ones(N, dtype=torch.bool)
            routed[kept] = False
            assert torch.equal(after[b][routed], before[b][routed])  # rejoin unchanged
            assert torch.equal(after[b][kept], kept_out[b])  # the kept tokens carry block 1's output
            if batch.is_edit[b] > 0:
                assert not (routed & protect[b]).any(), f"step {step} sample {b}: a changed token was routed"
                checked_edits += 1
            else:
                assert routed.sum() == N - K  # generation: every routed slot taken
            routed_any += int(routed.sum())
    for hook in hooks:
        hook.remove()
    assert checked_edits >= 10 and routed_any > 0


@pytest.mark.usefixtures("one_thread")
def test_routing_trains_resumes_bit_equal_and_leaves_inference_alone(tmp_path, source_image):
    import json

    import numpy as np

    from qk_train.models.unified import QKModel
    from qk_train.pipeline import Pipeline

    cfg = resolve_config("tiny", [*ROUTE, "train.route_fraction=0.5", "train.steps=6", "train.checkpoint_every=3"], None)
    Trainer(cfg, tmp_path / "straight", progress=False).run()
    logs = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    main = [r for r in logs if r["stage"] == "main"]
    assert main and all(np.isfinite(r["loss"]) and 0 < r["routed"] <= 0.5 for r in main)
    Trainer(cfg, tmp_path / "stopped", progress=False, max_steps=3).run()
    Trainer(cfg, tmp_path / "stopped", progress=False).run()
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "stopped")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    # the checkpoint loads like any other; its inference is the same with routing off
    routed = QKModel.from_checkpoint(tmp_path / "straight" / "final")
    assert routed.cfg.train.route_fraction == 0.5
    off = QKModel(cfg.replace(train={"route_fraction": 0.0}), routed.tokenizer)
    off.load_state_dict(routed.state_dict())
    off.eval()
    for name in ("edit", "generate"):
        args = (source_image, "make the red square blue", (4, 6, 20, 18)) if name == "edit" else ("a red square",)
        x, y = (getattr(Pipeline(m, steps=4), name)(*args, seed=3) for m in (routed, off))
        assert np.array_equal(x.image, y.image), name




@pytest.mark.parametrize("sets, message", [
    (["train.route_fraction=1.0"], r"train.route_fraction=1.0 must lie in \[0, 1\)"),
    (["train.route_blocks=[2, 1]"], r"train.route_blocks=\[2, 1\] must be \[start, end\]"),
    (["train.route_fraction=0.5"], r"train.route_blocks=\[1, 5\] routes past blocks 1 .. 4, but the decoder has decoder.depth=2"),
    (["train.route_fraction=0.5", "train.route_blocks=[1, 2]", "decoder.attn_window=2"], "needs dense self-attention"),
])
def test_routing_settings_are_checked(sets, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config("tiny", sets, None)
