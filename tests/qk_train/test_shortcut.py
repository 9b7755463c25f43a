"""Few-step sampling trained into the model: the step-size conditioning (decoder.step_size_cond)
and the shortcut objective (train.shortcut_fraction)."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from qk_train.config import SHORTCUT_MIN_STEP, ConfigError
from qk_train.models.unified import QKModel, shortcut_draw
from qk_train.pipeline import Pipeline
from qk_train.train import Trainer, main, make_batch, resolve_config

pytestmark = pytest.mark.usefixtures("one_thread")

SWITCH_ON = ["decoder.step_size_cond=true"]


def _switched_on(tiny_run, tmp_path, extra=()) -> QKModel:
    """The tiny checkpoint with the conditioning switched on and not trained (lr 0)."""
    cfg = resolve_config("tiny", [*SWITCH_ON, "train.steps=1", "train.lr=0", f"train.init_from={tiny_run / 'final'}",
                                  *extra], None)
    Trainer(cfg, tmp_path / "on", progress=False).run()
    return QKModel.from_checkpoint(tmp_path / "on" / "final")


def test_switching_it_on_keeps_every_d0_output_to_the_bit(tiny_run, tmp_path, source_image):
    plain = QKModel.from_checkpoint(tiny_run / "final")
    on = _switched_on(tiny_run, tmp_path)
    assert on.cfg.decoder.step_size_cond and not plain.cfg.decoder.step_size_cond
    new = sorted(set(on.state_dict()) - set(plain.state_dict()))
    assert new and all(k.startswith("decoder.d_embed.") for k in new), new
    g = torch.Generator().manual_seed(0)
    B, h = 3, 32
    x, source = torch.randn(B, 3, h, h, generator=g), torch.randn(B, 3, h, h, generator=g)
    region, gate = torch.ones(B, 1, h, h), torch.ones(B, 1, h, h)
    text, mask = plain.text_states(["make the red square blue", "", ""])
    flags = torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    sigma = torch.tensor([0.9, 0.5, 0.1])
    with torch.no_grad():
        kontext = plain.kontext(text, mask, source, region, flags)
        ref = plain.decoder(x, sigma, text, mask, kontext, source, region, gate, flags)
        for step_size in (None, torch.zeros(B)):
            assert torch.equal(on.decoder(x, sigma, text, mask, kontext, source, region, gate, flags, step_size=step_size), ref)
        # a non-zero step size changes nothing either until the embedding is trained (its output layer is 0)
        assert torch.equal(on.decoder(x, sigma, text, mask, kontext, source, region, gate, flags,
                                      step_size=torch.full((B,), 0.25)), ref)
    # the 20-step edit of the reference pipeline: the same pixels and gate
    a = Pipeline(plain).edit(source_image, "make the red square blue", (4, 6, 20, 18), seed=3)
    b = Pipeline(on).edit(source_image, "make the red square blue", (4, 6, 20, 18), seed=3)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.gate, b.gate)
    # and the plain model refuses a step size rather than ignoring it
    with pytest.raises(ValueError, match="step_size_cond"):
        plain.decoder(x, sigma, text, mask, kontext, source, region, gate, flags, step_size=torch.zeros(B))


def test_shortcut_draws_lie_on_the_grid_of_their_step():
    sigma, d = shortcut_draw(4000, torch.Generator().manual_seed(0))
    whole = 2 * d
    levels = SHORTCUT_MIN_STEP * 2.0 ** torch.arange(7)
    assert set(whole.tolist()) == set(levels.tolist())  # every level from 1/64 to 1
    cells = sigma / whole
    assert torch.equal(cells, cells.round()) and (sigma >= whole).all() and (sigma <= 1).all()
    assert (sigma == 1).any() and (sigma[whole == SHORTCUT_MIN_STEP] < 0.5).any()


def test_the_target_is_two_half_steps_of_the_samplers_euler_update(tiny_run):
    """x - 2d v_target lands where two Euler steps of size d (x + (sigma_next - sigma) v, the
    sampler's update) land: the target runs from noise (sigma 1) towards data (sigma 0)."""
    cfg = resolve_config("tiny", SWITCH_ON, None)
    torch.manual_seed(0)
    model = QKModel(cfg)
    plain = QKModel.from_checkpoint(tiny_run / "final")
    model.load_state_dict(plain.state_dict(), strict=False)
    torch.nn.init.normal_(model.decoder.d_embed.mlp[2].weight, std=0.5)  # a step-size embedding that matters
    g = torch.Generator().manual_seed(1)
    n, h = 2, 32
    x, source = torch.randn(n, 3, h, h, generator=g), torch.randn(n, 3, h, h, generator=g)
    region, gate = torch.zeros(n, 1, h, h), torch.ones(n, 1, h, h)
    text, mask = model.text_states(["a red circle", "a blue square"])
    flags = torch.zeros(n, 2)
    sigma, d = torch.tensor([1.0, 0.5]), torch.tensor([0.25, 0.125])
    with torch.no_grad():
        kontext = model.kontext(text, mask, source, region, flags)
        target = model.shortcut_target(x, sigma, d, text, mask, kontext, source, region, gate, flags)
        v = lambda x_, s_: model.decoder(x_, s_, text, mask, kontext, source, region, gate, flags, step_size=d)  # noqa: E731
        x1 = x + ((sigma - d) - sigma)[:, None, None, None] * v(x, sigma)
        x2 = x1 + ((sigma - 2 * d) - (sigma - d))[:, None, None, None] * v(x1, sigma - d)
    torch.testing.assert_close(x - (2 * d)[:, None, None, None] * target, x2, rtol=0, atol=1e-5)
    # the step size reaches the target: another d gives another one
    with torch.no_grad():
        other = model.shortcut_target(x, sigma, d / 2, text, mask, kontext, source, region, gate, flags)
    assert (other - target).abs().max() > 1e-3


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_shortcut_loss_runs_and_trains_the_step_size_embedding(tiny_run, tmp_path, precision):
    model = _switched_on(tiny_run, tmp_path)
    model.train()
    cfg = model.cfg
    batch = make_batch(cfg, "main", 7, 0, 1)
    model.cfg = cfg.replace(train={"shortcut_fraction": 0.5})
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else torch.autocast("cpu", enabled=False)
    with ctx:
        loss, logs = model.loss(batch, torch.Generator().manual_seed(3))
    loss.backward()
    assert np.isfinite(logs["loss"]) and logs["v_shortcut"] > 0
    grad = model.decoder.d_embed.mlp[2].weight.grad
    assert grad is not None and grad.abs().max() > 0
    # with the fraction 0 the loss is the plain one: no shortcut part, the same value as before the switch
    model.zero_grad()
    model.cfg = cfg
    plain = QKModel.from_checkpoint(tiny_run / "final").train()
    with torch.no_grad():
        a, logs_a = model.loss(batch, torch.Generator().manual_seed(3))
        b, _ = plain.loss(batch, torch.Generator().manual_seed(3))
    assert "v_shortcut" not in logs_a and torch.equal(a, b)


def test_shortcut_training_resumes_to_the_same_weights(tiny_run, tmp_path):
    cfg = resolve_config("tiny", [*SWITCH_ON, "train.shortcut_fraction=0.25", "train.steps=6",
                                  "train.checkpoint_every=3", "train.log_every=1", f"train.init_from={tiny_run / 'final'}"],
                         None)
    Trainer(cfg, tmp_path / "straight", progress=False).run()
    Trainer(cfg, tmp_path / "stopped", progress=False, max_steps=3).run()
    assert not (tmp_path / "stopped" / "final").exists()
    Trainer(cfg, tmp_path / "stopped", progress=False).run()
    a = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "stopped" / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and any(k.startswith("decoder.d_embed.") for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert a["decoder.d_embed.mlp.2.weight"].abs().max() > 0  # trained off its zero start
    logs = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    assert len(logs) == 6 and all(r["v_shortcut"] > 0 for r in logs)
    assert QKModel.from_checkpoint(tmp_path / "straight" / "final").cfg.train.shortcut_fraction == 0.25


@pytest.mark.parametrize("override, message", [
    (["train.shortcut_fraction=0.25"], "decoder.step_size_cond=true"),
    ([*SWITCH_ON, "train.shortcut_fraction=1.5"], r"train.shortcut_fraction=1.5 must lie in \[0, 1\]"),
    ([*SWITCH_ON, "train.shortcut_weight=-1"], "train.shortcut_weight=-1.0 must be >= 0"),
    ([*SWITCH_ON, "train.shortcut_steps=[1, 3]"], r"train.shortcut_steps=\[1, 3\] must be increasing step counts"),
    ([*SWITCH_ON, "train.shortcut_steps=[4, 2]"], "must be increasing"),
    ([*SWITCH_ON, "train.shortcut_steps=[128]"], r"from \[1, 2, 4, 8, 16, 32, 64\]"),
])
def test_bad_shortcut_settings_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config("tiny", override, None)


def test_init_from_may_switch_it_on_but_not_off(tiny_run, tmp_path, capsys):
    on = tmp_path / "on"
    _switched_on(tiny_run, tmp_path)
    assert main(["--preset", "tiny", "--init-from", str(on / "final"), "--out", str(tmp_path / "off"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "differs from this run's in ['decoder']" in err and "step_size_cond off" in err
    # another decoder change besides the switch is still refused
    assert main(["--preset", "tiny", "--init-from", str(tiny_run / "final"), "--set", "decoder.step_size_cond=true",
                 "--set", "decoder.depth=3", "--out", str(tmp_path / "deeper"), "--no-progress"]) == 2
    assert "differs from this run's in ['decoder']" in capsys.readouterr().err


def test_pipeline_runs_few_step_counts_on_the_uniform_grid(tiny_run, tmp_path):
    on = _switched_on(tiny_run, tmp_path)
    pipe = Pipeline(on)
    assert pipe.few_step_steps == (1, 2, 4)
    plan = list(pipe.sampling(4, 2))
    assert [float(s[0]) for s, _, _ in plan] == [1.0, 0.75, 0.5, 0.25]
    assert [float(kw["step_size"][0]) for _, kw, _ in plan] == [0.25] * 4
    x, v = torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)
    assert torch.equal(plan[0][2](v, x), torch.full_like(x, -0.25))  # towards sigma 0: x + (sigma_next - sigma) v
    # any other count: the ordinary schedule, step size 0
    plan = list(pipe.sampling(20, 2))
    assert len(plan) == 20 and float(plan[0][0][0]) == 1.0 and float(plan[1][0][0]) != 0.95
    assert all(float(kw["step_size"].abs().max()) == 0 for _, kw, _ in plan)
    assert list(Pipeline(on, few_step_steps=()).sampling(4, 2))[1][1]["step_size"].abs().max() == 0
    with pytest.raises(ValueError, match="step_size_cond"):
        Pipeline(QKModel.from_checkpoint(tiny_run / "final"), few_step_steps=(4,))


@pytest.mark.parametrize("steps", [1, 2, 4])
@pytest.mark.parametrize("sparse", ["none", "region"])
def test_few_step_edits_keep_the_source_outside_the_gate(few_step_checkpoint, source_image, steps, sparse):
    """The gated back-to-source velocity lands on the source at sigma 0 for a step of any size:
    outside the gate the decoded latent is the decoded source, before any compositing."""
    pipe = Pipeline(QKModel.from_checkpoint(few_step_checkpoint))
    out = pipe.edit(source_image, "make the red square blue", (4, 6, 20, 18), steps=steps, seed=1, sparse=sparse)
    p = pipe.model.patch * pipe.model.factor
    off = np.kron(out.gate <= pipe.gate_threshold, np.ones((p, p), bool))  # (32, 32) pixels outside the gate
    assert off.any() and (~off).any()
    np.testing.assert_allclose(out.decoded[:, off], out.source_decoded[:, off], rtol=0, atol=1e-5)
    assert np.abs(out.decoded[:, ~off] - out.source_decoded[:, ~off]).max() > 1e-2  # inside, the model's own
