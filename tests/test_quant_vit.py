"""ViT-specific quantizers: log2 / log-sqrt2 / AdaLog / TanQ levels, AdaLog's integer form, searches,
the post-GELU shift folded into fc2's bias, and sub-8-bit uniform quantizers exported exactly."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from edgevit.quant import QuantConfig, quantize
from edgevit.quant.nonuniform import (GELU_SHIFT, LogQuantizer, TanQuantizer, adalog_integer_dequantize,
                                      adalog_quantizer, adalog_table, log2_quantizer, logsqrt2_quantizer)
from edgevit.quant.nonuniform_search import search_post_activation, search_softmax
from edgevit.quant.sites import activation_floor, fake_quant_activation
from edgevit.quant.uniform import qparams_from_range


def test_log2_levels_are_powers_of_two_and_small_values_underflow():
    q = log2_quantizer(3)  # 8 codes: 1, 1/2, ..., 1/128
    grid = q.grid()
    assert grid.tolist() == [0.0] + [2.0 ** -k for k in range(7, -1, -1)]
    x = torch.tensor([1.0, 0.5, 0.3, 2 ** -7, 2 ** -9, 0.0])
    # 0.3: -log2(0.3) = 1.74 -> code 2 -> 0.25; 2^-9: code 9 > 7 -> underflow to 0
    assert q.fake_quant(x).tolist() == [1.0, 0.5, 0.25, 2 ** -7, 0.0, 0.0]


def test_logsqrt2_matches_repq_formula():
    q = logsqrt2_quantizer(4)
    code = torch.arange(16, dtype=torch.float64)
    repq = 2.0 ** (-torch.ceil(code / 2)) * (1 + (math.sqrt(2) - 1) * (code % 2))
    underflow = torch.zeros_like(code, dtype=torch.bool)
    torch.testing.assert_close(q.dequantize(code, underflow), repq)


@pytest.mark.parametrize("bits, temp, seed, delta", [(4, 1.0, 41, 0.42361679673194885),
                                                     (6, 2.0, 62, 0.8340613842010498),
                                                     (3, 5.0, 35, 0.9795761108398438)])
def test_logsqrt2_takes_repq_vits_scale(bits, temp, seed, delta):
    """The log-sqrt2 scale is RepQ-ViT's: the expected deltas are what RepQ-ViT's own LogSqrt2Quantizer
    (zkkli/RepQ-ViT, classification/quant/quantizer.py) chose on these tensors, run outside this repository
    (the percentile of the probabilities with the lowest squared error on them); the samples arrive split."""
    attn = torch.softmax(torch.randn(8, 4, 65, 65, generator=torch.Generator().manual_seed(seed)) * temp, dim=-1)
    q = search_softmax("logsqrt2", bits, [attn[:4], attn[4:]], [torch.randn(4, 4, 65, 16)] * 2)
    assert q.kind == "logsqrt2" and q.step == 0.5 and q.scale == pytest.approx(delta, rel=1e-7)


@pytest.mark.parametrize("make", [lambda: log2_quantizer(4), lambda: logsqrt2_quantizer(4),
                                  lambda: adalog_quantizer(4, 1.0, 29), lambda: TanQuantizer(4, 1.2)])
def test_nonuniform_quantizers_are_monotone_idempotent_and_round_to_a_neighbour(make):
    q = make()
    x = torch.rand(20000, dtype=torch.float64) ** 3  # power-law-like values in [0, 1]
    y = q.fake_quant(x)
    order = torch.argsort(x)
    assert torch.all(torch.diff(y[order]) >= 0)  # monotone
    torch.testing.assert_close(q.fake_quant(y), y)  # grid values are fixed points
    grid = q.grid()
    idx = torch.searchsorted(grid, x).clamp(1, len(grid) - 1)
    lo, hi = grid[idx - 1], grid[idx]
    assert torch.all((y >= lo - 1e-12) & (y <= hi + 1e-12))  # rounds to one of the two neighbours
    assert len(torch.unique(y)) <= 2 ** q.bits + 1


def test_tanq_grid_is_densest_near_one_and_alpha_to_zero_is_uniform():
    g = TanQuantizer(4, 1.4).grid()
    gaps = torch.diff(g)
    assert gaps[-1] < gaps[0] / 3
    u = TanQuantizer(4, 1e-4).grid()
    torch.testing.assert_close(u, torch.arange(16, dtype=torch.float64) / 15, atol=1e-6, rtol=0)


def test_adalog_integer_form_equals_float_form():
    for bits, base_q in ((4, 10), (4, 37), (6, 55), (8, 138)):
        q = adalog_quantizer(bits, 0.8, base_q, table=False)
        code = torch.arange(2 ** bits, dtype=torch.float64)
        flt = q.dequantize(code, torch.zeros_like(code, dtype=torch.bool))
        torch.testing.assert_close(adalog_integer_dequantize(code, q), flt, rtol=1e-12, atol=0)
        # the fixed-point table is off by half a step of 1/(2^(b+1)-2) on T[j] >= 1/2: relative error <= 1/(2^(b+1)-2)
        fixed = adalog_integer_dequantize(code, q, adalog_table(bits))
        assert torch.all(torch.abs(fixed - flt) / flt <= 1.0001 / (2 ** (bits + 1) - 2))


def test_adalog_simulates_the_table_it_ships_by_default():
    """The default AdaLog quantizer dequantizes as an integer accelerator does with the fixed-point table
    quant_params.json ships (to float32 rounding), not with the paper's float formula."""
    x = torch.rand(50000) ** 4 * 1.2
    for bits, base_q in ((4, 23), (6, 55), (8, 100)):
        q = adalog_quantizer(bits, 0.9, base_q)
        assert q.table and q.to_dict()["form"] == "table"
        code, under = q.codes(x)
        fixed = torch.where(under, 0.0, adalog_integer_dequantize(code, q, adalog_table(bits))).float()
        torch.testing.assert_close(q.fake_quant(x), fixed, rtol=1e-6, atol=0)
        flt = adalog_quantizer(bits, 0.9, base_q, table=False)
        assert flt.to_dict()["form"] == "float"
        assert (q.fake_quant(x) != flt.fake_quant(x)).any()  # the two forms differ


@pytest.mark.parametrize("make", [
    lambda b: log2_quantizer(b, 0.7), lambda b: logsqrt2_quantizer(b, 1.0),
    lambda b: adalog_quantizer(b, 0.9, 23), lambda b: adalog_quantizer(b, 2.3, 101, GELU_SHIFT),
    lambda b: adalog_quantizer(b, 0.9, 55, table=False), lambda b: adalog_quantizer(b, 1.7, 138, table=False)])
@pytest.mark.parametrize("bits", [3, 4, 6, 8])
def test_a_log_quantizers_lookup_equals_its_exported_ops_bit_for_bit(make, bits):
    """Eager evaluation (the searches, from a log ratio shared by every candidate of one scale; the
    simulation's forward) looks each value up in the dequantized codes; traced, the quantizer is the ops
    the exporters write (Log, Round, ..., a table Gather and Pow). The two give the same values, bit for bit."""
    g = torch.Generator().manual_seed(bits)
    x = torch.cat([torch.rand(40_013, generator=g) ** 6 * 2.5, torch.randn(997, generator=g), torch.zeros(5),
                   torch.tensor([1e-38, 1e-30, 3.0, float(2 ** -60), float("inf"), -float("inf")])])
    q = make(bits)
    ops = q.dequantize(*q.codes(x))
    fast = q.fake_quant_log_ratio(q.log_ratio(x))
    assert torch.equal(fast.view(torch.int32), ops.view(torch.int32))
    assert torch.equal(q.fake_quant(x).view(torch.int32), ops.view(torch.int32))
    traced = torch.jit.trace(q.fake_quant, x[:64])
    assert "aten::log" in str(traced.graph) and "aten::take" not in str(traced.graph)
    assert torch.equal(traced(x).view(torch.int32), ops.view(torch.int32))
    assert len(torch.unique(fast)) > min(2 ** bits // 2, 16)  # many levels are reached, not only the extremes
    assert torch.isnan(q.fake_quant(torch.tensor([0.5, float("nan")]))).tolist() == [False, True]  # not an index


def test_activation_floor_of_gelu_is_adalogs_eta():
    assert activation_floor(nn.GELU()) == pytest.approx(GELU_SHIFT, abs=1e-6)
    assert activation_floor(nn.ReLU()) == 0.0


def test_softmax_search_beats_fixed_log2_on_the_attention_output():
    torch.manual_seed(0)
    attn = [torch.softmax(torch.randn(2, 4, 16, 16) * 3, -1) for _ in range(2)]
    v = [torch.randn(2, 4, 16, 8) for _ in range(2)]

    def out_err(q):
        return sum(float(((q.fake_quant(a) @ vv - a @ vv) ** 2).sum()) for a, vv in zip(attn, v))

    ada = search_softmax("adalog", 4, attn, v)
    assert isinstance(ada, LogQuantizer) and 10 <= ada.base_q <= 138
    assert out_err(ada) <= out_err(log2_quantizer(4)) + 1e-9
    assert out_err(ada) <= out_err(logsqrt2_quantizer(4)) + 1e-9
    tan = search_softmax("tanq", 4, attn, v)
    assert out_err(tan) <= out_err(TanQuantizer(4, 0.05)) + 1e-9  # at least as good as ~uniform


def test_post_gelu_search_and_bias_fold_keep_the_linear_output():
    torch.manual_seed(0)
    x = nn.functional.gelu(torch.randn(512, 32) * 2)
    w = torch.randn(16, 32) / 6
    q = search_post_activation(4, x, w, GELU_SHIFT)
    assert q.shift == GELU_SHIFT and q.kind == "adalog"
    err_q = float((((q.fake_quant(x + GELU_SHIFT) - GELU_SHIFT) @ w.t() - x @ w.t()) ** 2).mean())
    base = adalog_quantizer(4, float((x + GELU_SHIFT).max()), 37, GELU_SHIFT)
    err_base = float((((base.fake_quant(x + GELU_SHIFT) - GELU_SHIFT) @ w.t() - x @ w.t()) ** 2).mean())
    assert err_q < err_base


class _Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(8, 24), nn.GELU(), nn.Linear(24, 4)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def test_gelu_shift_is_folded_into_fc2_bias_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(_Mlp())
    calib = [torch.randn(64, 8) for _ in range(2)]
    qm, plan = quantize(model, QuantConfig(gelu="adalog", search_images=64), calib)
    fc2 = qm[0].fc2
    site = fc2.input_quant
    assert site.kind == "post_act" and site.nonuniform is not None and site.nonuniform.kind == "adalog"
    assert plan.activations[site.site].quantizer is site.nonuniform
    x = torch.randn(16, 8)
    with torch.no_grad():
        h = qm[0].act(qm[0].fc1(x))
        shifted = site.nonuniform.fake_quant(h + GELU_SHIFT)
        w_hat = fc2.weight()
        expected = (shifted - GELU_SHIFT) @ w_hat.t() + model[0].fc2.bias
        torch.testing.assert_close(fc2(h), expected, atol=1e-5, rtol=1e-5)
    assert "nonuniform" in plan.to_dict()["activations"][site.site]


def test_conv_mlp_gets_the_post_activation_quantizer_a_linear_mlp_gets():
    """timm's ConvMlp (1x1 convs, MobileViTV2) and Mlp with the same weights, on the same tokens: the same
    AdaLog quantizer on the SiLU output, the shift folded into the conv's bias, the same quantized output."""
    from timm.layers import ConvMlp, Mlp

    torch.manual_seed(0)
    lin, conv = Mlp(8, 24, 4, act_layer=nn.SiLU).eval(), ConvMlp(8, 24, 4, act_layer=nn.SiLU).eval()
    with torch.no_grad():
        for name in ("fc1", "fc2"):
            getattr(conv, name).weight.copy_(getattr(lin, name).weight[:, :, None, None])
            getattr(conv, name).bias.copy_(getattr(lin, name).bias)
    tokens = torch.randn(64, 10, 8)
    as_grid = tokens.transpose(1, 2).unsqueeze(-1)  # (B, C, N, 1): the same numbers as a feature map
    cfg = QuantConfig(gelu="adalog", search_images=64)
    ql, lplan = quantize(nn.Sequential(lin), cfg, [tokens])
    qc, cplan = quantize(nn.Sequential(conv), cfg, [as_grid])
    lq, cq = lplan.activations["0.fc2.input"].quantizer, cplan.activations["0.fc2.input"].quantizer
    assert cplan.activations["0.fc2.input"].kind == "post_act" and cq.kind == "adalog"
    assert (cq.scale, cq.base_q, cq.shift) == pytest.approx((lq.scale, lq.base_q, lq.shift), rel=1e-5)
    x = torch.randn(16, 10, 8)
    with torch.no_grad():
        want, got = ql(x), qc(x.transpose(1, 2).unsqueeze(-1)).squeeze(-1).transpose(1, 2)
    # conv and matmul sum in different orders: a value on a code boundary may land one code over
    diff = (got - want).abs()
    assert float((diff > 1e-5).float().mean()) < 0.01 and float(diff.max()) < 0.01 * float(want.abs().max())


@pytest.mark.parametrize("bits,symmetric", [(4, False), (6, False), (4, True), (8, False)])
def test_sub_8bit_activation_via_8bit_container_and_clip_equals_direct_fake_quant(bits, symmetric):
    torch.manual_seed(0)
    x = torch.randn(10000) * 3
    q = qparams_from_range(torch.tensor(-2.0), torch.tensor(5.0), bits, symmetric)
    direct = q.fake_quant(x)
    torch.testing.assert_close(fake_quant_activation(x, q), direct, atol=0, rtol=0)
    assert len(torch.unique(fake_quant_activation(x, q))) <= 2 ** bits


def test_sub_8bit_model_exports_exactly_to_onnx(tmp_path):
    import onnx
    import onnxruntime as ort

    from edgevit.exporters.onnx import torch_to_onnx

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), _Mlp().fc1.__class__(8 * 16, 10))
    calib = [torch.randn(32, 3, 4, 4)]
    cfg = QuantConfig(weights={"bits": 4}, activations={"bits": 4})
    qm, _ = quantize(model, cfg, calib)
    proto = torch_to_onnx(qm, 4, dynamic_batch=True)
    assert any(n.op_type == "Clip" for n in proto.graph.node)
    x = torch.randn(64, 3, 4, 4)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = qm(x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    onnx.checker.check_model(proto)


@pytest.mark.parametrize("method, statistic", [("reparam", "minmax"), ("median", "minmax"), ("mosf", "minmax"),
                                               ("reparam", "percentile")])
def test_layernorm_reparameterization_leaves_the_float_model_unchanged(method, statistic):
    import copy

    from edgevit.models import load_model
    from edgevit.quant.reparam import channel_ranges, layernorm_linear_pairs, reparameterize
    from edgevit.recipe import ModelConfig

    torch.manual_seed(0)
    model, _ = load_model(ModelConfig(source="builtin:vit-cifar10"))
    x = torch.randn(16, 3, 32, 32)
    re = copy.deepcopy(model).eval()
    factors = reparameterize(re, [x[:8]], 4, method, statistic)
    assert len(factors) == len(layernorm_linear_pairs(model)) == 12  # norm1 -> qkv, norm2 -> fc1 in 6 blocks
    with torch.no_grad():
        assert torch.max(torch.abs(re(x) - model(x))) <= 1e-5
    f = factors["blocks.0.norm1"]
    assert f["r"].shape == (128,) and torch.all(f["r"] > 0)
    # after folding, the channel ranges of the LayerNorm output are alike: one layer-wise scale fits
    (lo0, hi0), = channel_ranges(model, [model.blocks[0].norm1], [x[:8]])
    (lo1, hi1), = channel_ranges(re, [re.blocks[0].norm1], [x[:8]])
    spread = lambda lo, hi: float((hi - lo).max() / (hi - lo).median())  # noqa: E731
    assert spread(lo1, hi1) < spread(lo0, hi0)


def test_percentile_channel_ranges_are_repq_vits():
    """RepQ-ViT's channel statistic: the expected scales and zero points are what RepQ-ViT's channel-wise
    UniformQuantizer (zkkli/RepQ-ViT, classification/quant/quantizer.py) chose on this tensor, run outside
    this repository: a free zero point on a one-sided channel (-1), an outlier inside the 99.999th percentile."""
    from edgevit.quant.reparam import percentile_ranges

    g = torch.Generator().manual_seed(7)
    x = torch.randn(4, 65, 24, generator=g) * torch.rand(24, generator=g) * 3 + torch.randn(24, generator=g)
    x[..., 3] = x[..., 3].abs() + 0.5
    x[0, 5, 7] = 40.0
    lo, hi = percentile_ranges(x.reshape(-1, 24), 4)
    s = (hi - lo) / 15
    z = torch.round(-lo / s)
    torch.testing.assert_close(s[[0, 3, 7]], torch.tensor([0.7048562169075012, 0.49656054377555847, 2.63350510597229]))
    assert z[[0, 3, 7]].tolist() == [6.0, -1.0, 0.0]


def test_mosf_target_ignores_outlier_channel_scales():
    from edgevit.quant.reparam import target_scale

    scales = torch.cat([torch.full((60,), 0.01), torch.tensor([0.5, 0.8, 1.2, 2.0])])
    assert target_scale(scales, "reparam") > 0.07  # the mean is dragged up by 4 outliers
    assert target_scale(scales, "median") == pytest.approx(0.01)
    assert target_scale(scales, "mosf") == pytest.approx(0.01)


def test_lowering_policies_are_checked_per_target():
    from edgevit.errors import BadInput
    from edgevit.recipe import build_recipe

    from conftest import CALIB_DIR

    base = {"name": "x", "calibration": {"path": str(CALIB_DIR)}, "quantize": {"weights": {"bits": 4}}}
    with pytest.raises(BadInput, match=r"quantize.weights.bits: 4-bit .*export.0.lowering: exact"):
        build_recipe(base | {"export": [{"precision": "int8"}]})
    with pytest.raises(BadInput, match="export.0.lowering: exact cannot target TensorRT"):
        build_recipe(base | {"export": [{"precision": "int8", "target": "tensorrt", "lowering": "exact"}]})
    ok = build_recipe(base | {"export": [{"precision": "int8", "lowering": "exact"}]})
    assert ok.export[0].lowering == "exact"


def test_uniform_and_float_lowering_of_a_log_plan():
    from edgevit.quant.lowering import has_nonuniform, lower_plan

    torch.manual_seed(0)
    model = nn.Sequential(_Mlp())
    _, plan = quantize(model, QuantConfig(gelu="adalog"), [torch.randn(64, 8)])
    assert has_nonuniform(plan) and lower_plan(plan, "onnxruntime", "exact") is plan
    uni = lower_plan(plan, "onnxruntime", "uniform")
    site = next(k for k, v in plan.activations.items() if v.quantizer is not None)
    assert not has_nonuniform(uni) and uni.activations[site].qparams.bits == 8
    flt = lower_plan(plan, "tensorrt", "float")
    assert site not in flt.activations and all(e.qparams.symmetric for e in flt.activations.values())
    _, p4 = quantize(model, QuantConfig(weights={"bits": 4}), [torch.randn(64, 8)])
    with pytest.raises(ValueError, match="4-bit"):
        lower_plan(p4, "onnxruntime", "uniform")


def test_w4a4_adalog_recipe_end_to_end(tmp_path):
    import json

    from conftest import cli

    out = tmp_path / "w4a4"
    res = cli("compress", "--recipe", "recipes/w4a4_adalog.yaml", "--out", str(out),
              "--set", "calibration.num=64", "--set", "validate.eval.num=300",
              "--set", "validate.devices.0.iters=3", "--set", "validate.devices.0.warmup=1",
              "--set", "validate.devices.0.throughput_batch=4")
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads((out / "report.json").read_text())["results"]}
    assert {"pytorch-w4a4-sim", "onnx-qdq-exact", "onnx-fp32"} <= set(rows)
    exact = rows["onnx-qdq-exact"]
    assert exact["simulated_by"] == "pytorch-w4a4-sim" and exact["export"]["lowering"] == "exact"
    # the exact lowering reproduces the simulation in ONNX Runtime
    assert exact["accuracy"]["agreement_with_simulation"] >= 0.99
    assert abs(exact["accuracy"]["top1"] - rows["pytorch-w4a4-sim"]["accuracy"]["top1"]) <= 0.01
    params = json.loads((out / "quant_params.json").read_text())
    ada = [v for v in params["activations"].values() if v["type"] == "adalog"]
    assert ada and all(10 <= v["base_q"] <= 138 and len(v["table"]) == 37 for v in ada)
    assert any(v["kind"] == "post_act" and v["shift"] > 0.16 for v in ada)
    assert params["weights"] and "adalog (integer)" in params["dequantization"]
    assert all(v["form"] == "table" for v in ada)  # what was simulated is what ships
    assert "AdaLog (softmax, gelu) is searched, simulated and exported in its table form" in \
        (out / "report.md").read_text()


@pytest.mark.parametrize("make", [lambda: adalog_quantizer(4, 1.0, 23), lambda: logsqrt2_quantizer(4),
                                  lambda: adalog_quantizer(4, 3.1, 17, GELU_SHIFT), lambda: TanQuantizer(4, 1.1, 0.6),
                                  lambda: adalog_quantizer(4, 3.1, 17, GELU_SHIFT, table=False)])
def test_exact_onnx_decomposition_of_a_log_or_tan_site_is_bit_exact(make):
    import onnxruntime as ort

    from edgevit.exporters.onnx import torch_to_onnx
    from edgevit.quant.sites import ActQuant

    class Site(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = ActQuant("s", "attn_softmax")
            self.q.mode, self.q.nonuniform = "quant", make()

        def forward(self, x):
            return self.q(torch.softmax(x, dim=-1) * 3 - 0.1)

    torch.manual_seed(0)
    x = torch.randn(8, 3, 8, 8) * 4
    proto = torch_to_onnx(Site(), 8)
    got = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = Site()(x).numpy()
    assert np.array_equal(got, want), f"{np.sum(got != want)} of {got.size} values differ"


def test_reparameterized_plan_rebuilds_the_same_simulation():
    from edgevit.models import load_model
    from edgevit.quant import apply_plan
    from edgevit.recipe import ModelConfig

    torch.manual_seed(0)
    model, _ = load_model(ModelConfig(source="builtin:vit-cifar10"))
    calib = [torch.randn(32, 3, 32, 32)]
    qm, plan = quantize(model, QuantConfig(layernorm="mosf"), calib)
    assert plan.counts()["reparameterized_layernorms"] == 12
    assert len(plan.quant_params()["layernorm_reparam"]["blocks.0.norm1"]["r"]) == 128
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(apply_plan(model, plan)(x), qm(x))  # the plan alone rebuilds the model
        agree = (qm(x).argmax(1) == model(x).argmax(1)).float().mean()
    assert agree >= 0.8


def test_plan_counts_the_log_quantizers():
    torch.manual_seed(0)
    _, plan = quantize(nn.Sequential(_Mlp()), QuantConfig(gelu="adalog"), [torch.randn(64, 8)])
    assert plan.counts()["nonuniform_adalog"] == 1 and plan.counts()["post_act"] == 1


def test_fpcs_uniform_search_lowers_the_consumer_output_error():
    from edgevit.quant.nonuniform_search import fpcs_uniform

    torch.manual_seed(0)
    x = torch.randn(512, 32)
    x[:, 3] *= 20  # one outlier channel: the min-max grid is far too coarse for the rest
    w = torch.randn(16, 32) / 6
    q = fpcs_uniform(4, x, w)
    minmax = qparams_from_range(x.min(), x.max(), 4, False)

    def out_err(qp):
        return float(((qp.fake_quant(x) @ w.t() - x @ w.t()) ** 2).sum())

    assert 0 <= q.zero_point <= 15 and q.bits == 4
    assert out_err(q) < out_err(minmax)


def test_fpcs_activation_method_replaces_linear_input_ranges():
    torch.manual_seed(0)
    _, plan = quantize(nn.Sequential(_Mlp()), QuantConfig(activations={"bits": 4, "method": "fpcs"}),
                       [torch.randn(64, 8)])
    searched = [k for k, v in plan.activations.items() if v.search == "fpcs"]
    assert sorted(searched) == ["0.fc1.input", "0.fc2.input"]
