"""FLOPs of a decoder step: the analytic count against a hand count for the tiny preset, and against
torch's FlopCounterMode on the real DiT (dense, region and window)."""
from __future__ import annotations

import pytest

from qk_bench.flops import FLOAT_PARTS, DecoderShape, decoder_step_flops, floor_ms

# The tiny preset (qk_train/configs/tiny.yaml): width 32, depth 2, heads 2, patch 8, MLP ratio 2,
# pixel codec (3 channels, 32 px: 32 x 32 latent, a 4 x 4 grid = 16 tokens), text 24 tokens of
# width 32, 4 kontext tokens, channel source mode.
# step_condition=False: the whole DiT.forward (the torch pipeline's call, and older bundles' step).
TINY = DecoderShape(width=32, depth=2, heads=2, patch=8, mlp_ratio=2.0, latent_channels=3, latent_size=32,
                    text_length=24, text_width=32, kontext_tokens=4, step_condition=False)


def hand_count_tiny_batch1() -> dict:
    """One image, written out; 2 FLOPs per multiply-add, a (m x k) @ (k x n) product = 2 m k n."""
    N, D, F, L, S = 16, 32, 64, 24, 24 + 4
    x_embed = 2 * N * (3 + 3 + 1 + 1) * 8 * 8 * D  # x_t, source, region, gate: 8 channels x 64 px  = 524,288
    t_embed = 2 * 128 * D + 2 * D * D  # sinusoid (128) -> D -> D                                     =  10,240
    pool_proj = 2 * 32 * D  #                                                                           =   2,048
    flag_embed = 2 * 2 * D  #                                                                           =     128
    text_proj = 2 * L * 32 * D  #                                                                       =  49,152
    per_block = (
        2 * D * 6 * D  # adaLN modulation                                                                  12,288
        + 2 * N * D * (D + 2 * D + D)  # self-attention q, kv, out                                        131,072
        + 2 * (2 * N * D * N)  # q k^T and weights x v over 16 keys, all heads together                  32,768
        + 2 * (2 * N * D * D)  # cross-attention q and out                                                65,536
        + 2 * S * D * 2 * D  # cross-attention kv over the 28 conditioning tokens                        114,688
        + 2 * (2 * N * D * S)  # cross scores and weights x v                                             57,344
        + 2 * N * D * F + 2 * N * F * D  # MLP                                                           131,072
    )  # = 544,768 per block
    final = 2 * D * 2 * D + 2 * N * D * 3 * 8 * 8  # final adaLN + linear to 3 x 8 x 8 per token          200,704
    total = x_embed + t_embed + pool_proj + flag_embed + text_proj + 2 * per_block + final
    int8 = text_proj + 2 * (2 * N * D * (D + 2 * D + D) + 2 * (2 * N * D * D) + 2 * S * D * 2 * D + 2 * N * D * F * 2)
    return {"total": total, "int8": int8, "per_block": per_block}


def test_hand_count_matches():
    hand = hand_count_tiny_batch1()
    assert hand["per_block"] == 544_768
    assert hand["total"] == 1_876_096  # 524,288 + 10,240 + 2,048 + 128 + 49,152 + 2 x 544,768 + 200,704
    assert hand["int8"] == 933_888
    got = decoder_step_flops(TINY, batch=1)
    assert got["total"] == hand["total"]
    assert got["int8"] == hand["int8"] and got["float"] == hand["total"] - hand["int8"]
    assert decoder_step_flops(TINY, batch=3)["total"] == 3 * hand["total"]  # everything is per image


def test_step_of_format_3_leaves_the_conditioning_to_decoder_cond():
    hand = hand_count_tiny_batch1()
    D, L, S = 32, 24, 24 + 4
    once_per_edit = 2 * 32 * D + 2 * 2 * D + 2 * L * 32 * D + 2 * (2 * S * D * 2 * D)  # pool, flags, text_proj, 2 x cross kv
    step = decoder_step_flops(DecoderShape(**{**TINY.__dict__, "step_condition": True}), batch=1)
    assert step["total"] == hand["total"] - once_per_edit
    assert step["int8"] == hand["int8"] - 2 * L * 32 * D - 2 * (2 * S * D * 2 * D)  # text_proj and cross kv were INT8 parts


def test_region_and_window_by_hand():
    # region, 4 active tokens: every block term in N becomes 4 (self-attention 4 x 4), x_embed stays at 16
    full, region = decoder_step_flops(TINY, 1), decoder_step_flops(TINY, 1, active=4)
    assert region["parts"]["x_embed"] == full["parts"]["x_embed"]
    assert region["parts"]["self_attn_products"] == 2 * 2 * (2 * 4 * 32 * 4)
    assert region["parts"]["final_linear"] == 2 * 4 * 32 * 192
    # window 2: each of 16 queries attends to 2 x 2 = 4 keys instead of 16
    windowed = decoder_step_flops(DecoderShape(**{**TINY.__dict__, "window": 2}), 1)
    assert windowed["parts"]["self_attn_products"] == 2 * 2 * (2 * 16 * 32 * 4)
    assert windowed["total"] == full["total"] - (full["parts"]["self_attn_products"] - windowed["parts"]["self_attn_products"])
    with pytest.raises(ValueError, match="active"):
        decoder_step_flops(TINY, 1, active=17)


@pytest.mark.parametrize("window,active,mode,step_size", [(0, None, "channel", False), (0, 4, "channel", False),
                                                          (2, None, "channel", False), (0, None, "sequence", False),
                                                          (0, 8, "sequence", False), (0, None, "channel", True),
                                                          (0, 4, "channel", True)])
def test_against_flop_counter(window, active, mode, step_size):
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode

    from qk_train.config import load_preset
    from qk_train.models.dit import DiT

    cfg = load_preset("tiny").replace(decoder={"attn_window": window, "source_mode": mode, "step_size_cond": step_size})
    shape = DecoderShape.from_config(cfg, cfg.text.width)
    assert shape == DecoderShape(**{**TINY.__dict__, "window": window, "source_mode": mode, "step_condition": True,
                                    "step_size_cond": step_size})
    dit = DiT(cfg.decoder, cfg.latent_channels, cfg.text.width).eval()
    B, h, L = 3, 32, 24
    x, sigma, source = torch.randn(B, 3, h, h), torch.rand(B), torch.randn(B, 3, h, h)
    text, mask, kontext, flags = torch.randn(B, L, 32), torch.ones(B, L), torch.randn(B, 4, 32), torch.ones(B, 2)
    ones = torch.ones(B, 1, h, h)
    kwargs = {"active": torch.arange(active)[None].expand(B, -1)} if active else {}
    if step_size:  # a few-step model's step also embeds the step size
        kwargs["step_size"] = torch.full((B,), 0.25)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:  # the whole forward: condition + step
        dit(x, sigma, text, mask, kontext, source, ones, ones, flags, **kwargs)
    full = DecoderShape(**{**shape.__dict__, "step_condition": False})
    assert decoder_step_flops(full, B, active)["total"] == counter.get_total_flops()
    with torch.no_grad():
        cond = dit.condition(text, mask, kontext, flags)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:  # the step alone (format 3)
        dit.step(x, sigma, *cond, source, ones, ones, **kwargs)
    assert decoder_step_flops(shape, B, active)["total"] == counter.get_total_flops()


def test_float_parts_follow_the_quantizer():
    quantize = pytest.importorskip("qk_export.quantize")
    kept = {frag.strip("/") for frag in quantize.SENSITIVE["decoder"]}
    for name in kept:  # every module the quantizer keeps in float is a float part here
        assert any(p == name or p.startswith(name + "_") or p.endswith("_" + name) for p in FLOAT_PARTS), name
    assert quantize.EXCLUDE_ATTENTION and {"self_attn_products", "cross_attn_products"} <= FLOAT_PARTS


def test_floor():
    fl = {"total": 3e9, "int8": 2e9, "float": 1e9}
    assert floor_ms(fl, {"fp32": 100.0}, "fp32") == pytest.approx(30.0)  # 3 GFLOP at 100 GFLOP/s
    assert floor_ms(fl, {"fp32": 100.0, "int8": 200.0}, "int8") == pytest.approx(10.0 + 10.0)
    assert floor_ms(fl, {"fp32": 100.0}, "int8") is None
