"""Quantizer closed forms, observers, range search, BN folding and sites."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from edgevit.quant.fold import fold_batchnorm
from edgevit.quant.observers import HistogramObserver
from edgevit.quant.search import activation_range, weight_qparams
from edgevit.quant.uniform import qparams_from_range, qrange


@pytest.mark.parametrize("bits", [2, 4, 6, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_levels_round_trip_and_error_bound(bits, symmetric):
    lo, hi = (-1.5, 2.5)
    q = qparams_from_range(torch.tensor(lo), torch.tensor(hi), bits, symmetric)
    qmin, qmax = qrange(bits, symmetric)
    x = torch.linspace(lo, hi, 10001)
    codes = q.quantize(x)
    assert codes.min() >= qmin and codes.max() <= qmax and torch.equal(codes, codes.round())
    levels = torch.unique(q.fake_quant(x))
    assert len(levels) <= 2 ** bits
    inside = (x >= q.dequantize(torch.tensor(float(qmin)))) & (x <= q.dequantize(torch.tensor(float(qmax))))
    err = (q.fake_quant(x) - x).abs()[inside]
    assert err.max() <= q.scale / 2 + 1e-6
    assert q.fake_quant(torch.zeros(1)).item() == 0.0  # zero is exact
    if symmetric:
        assert q.zero_point.item() == 0


def test_clipping_saturates():
    q = qparams_from_range(torch.tensor(0.0), torch.tensor(1.0), 8, False)
    assert q.fake_quant(torch.tensor([5.0])).item() == pytest.approx(1.0, abs=q.scale.item())
    assert q.fake_quant(torch.tensor([-3.0])).item() == 0.0


def test_bad_bits():
    with pytest.raises(ValueError):
        qrange(9, True)


def test_per_channel_beats_per_tensor_on_uneven_channels():
    torch.manual_seed(0)
    w = torch.randn(8, 64) * torch.logspace(-2, 1, 8)[:, None]
    pc = weight_qparams(w, 8, True, per_channel=True, method="minmax")
    pt = weight_qparams(w, 8, True, per_channel=False, method="minmax")
    assert pc.scale.shape == (8,) and pt.scale.dim() == 0
    err_pc = ((pc.fake_quant(w) - w) ** 2).sum(1)
    err_pt = ((pt.fake_quant(w) - w) ** 2).sum(1)
    assert (err_pc <= err_pt + 1e-12).all() and err_pc[0] < err_pt[0] / 100


def test_mse_weight_search_not_worse_than_minmax():
    torch.manual_seed(1)
    w = torch.randn(16, 128)
    w[:, 0] *= 20  # outliers
    mm = weight_qparams(w, 4, True, True, "minmax")
    mse = weight_qparams(w, 4, True, True, "mse")
    assert ((mse.fake_quant(w) - w) ** 2).sum() <= ((mm.fake_quant(w) - w) ** 2).sum()


def test_histogram_streams_and_grows():
    obs = HistogramObserver(bins=512)
    rng = np.random.default_rng(0)
    chunks = [rng.normal(0, s, 5000).astype(np.float32) for s in (0.1, 1.0, 5.0)]
    for c in chunks:
        obs.update(torch.from_numpy(c))
    allv = np.concatenate(chunks)
    assert obs.min == pytest.approx(allv.min()) and obs.max == pytest.approx(allv.max())
    assert obs.counts.sum() == pytest.approx(allv.size)
    lo, hi = obs.percentile_range(99.0)
    assert np.percentile(allv, 0.5) - 0.5 < lo < np.percentile(allv, 1.5) + 0.5
    assert np.percentile(allv, 98.5) - 0.5 < hi < np.percentile(allv, 99.5) + 0.5


def test_activation_search_methods_clip_outliers():
    obs = HistogramObserver()
    x = torch.randn(100000)
    x[0] = 60.0
    obs.update(x)
    mm = activation_range(obs, "minmax", 8, False)
    pct = activation_range(obs, "percentile", 8, False, percentile=99.9)
    mse = activation_range(obs, "mse", 8, False)
    assert mm[1] == pytest.approx(60.0)
    assert pct[1] < 10 and mse[1] < mm[1]

    def err(r):
        q = qparams_from_range(torch.tensor(r[0]), torch.tensor(r[1]), 8, False)
        return ((q.fake_quant(x) - x) ** 2).sum()

    assert err(mse) < err(mm)


def test_fold_batchnorm_is_exact():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1, bias=False),
                        nn.BatchNorm2d(4))
    for bn in (net[1], net[4]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    net.eval()
    x = torch.randn(2, 3, 16, 16)
    ref = net(x)
    folded = copy.deepcopy(net)
    names = fold_batchnorm(folded)
    assert names == ["1", "4"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    torch.testing.assert_close(folded(x), ref, atol=1e-5, rtol=1e-5)


def test_weights_use_tensorrt_narrow_range():
    from edgevit.quant.sites import clamp_weight, fake_quant_weight

    torch.manual_seed(0)
    w = torch.randn(4, 32)
    w[0, 0] = -50.0  # an outlier the MSE search clips
    q = weight_qparams(w, 8, True, True, "mse")
    assert q.narrow and q.qmin == -127
    assert q.quantize(w).min() >= -127
    w2 = w.clone()
    clamp_weight(w2, q)
    torch.testing.assert_close(fake_quant_weight(w2, q), q.fake_quant(w))
