"""Pruning: n:m masks, SparseGPT vs magnitude, block allocation, structured shrinking, zeros kept
through quantization (also AdaRound), the 2:4 pattern proven on exported ONNX files, and recipes."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from conftest import CALIB_DIR, cli, fast
from edgevit.data import Preprocess, open_image_set
from edgevit.errors import BadInput
from edgevit.exporters.onnx import export_onnx
from edgevit.exporters.sparsity import weight_sparsity
from edgevit.models import load_model
from edgevit.prune import PruneConfig, prune
from edgevit.prune.block import allocate, block_mask
from edgevit.prune.layout import from_matrix, nm_ineligible, nm_violations, to_matrix
from edgevit.prune.obs import Hessian, nm_magnitude_mask, obs_prune
from edgevit.prune.structured import prune_structured
from edgevit.quant import QuantConfig, quantize
from edgevit.quant.config import Reconstruct
from edgevit.recipe import ExportConfig, ModelConfig, load_recipe
from edgevit.validate import OrtRunner

FAST = fast()


@pytest.fixture(scope="module")
def vit():
    return load_model(ModelConfig(source="builtin:vit-cifar10"))


@pytest.fixture(scope="module")
def calib(vit):
    _, info = vit
    x, _ = open_image_set(CALIB_DIR, num=64, seed=0).load(Preprocess(info.input_size, info.mean, info.std))
    return torch.from_numpy(x)


def _conv_groups_ok(w: torch.Tensor, n: int, m: int) -> bool:
    """TensorRT's rule checked on the raw [K, C, R, S] tensor: at each (k, r, s), every m consecutive
    input channels hold at most n non-zeros."""
    k, c, r, s = w.shape
    nz = (w != 0).reshape(k, c // m, m, r, s).sum(2)
    return bool((nz <= n).all())


def test_nm_masks_keep_exactly_n_of_m_along_inputs():
    torch.manual_seed(0)
    lin, conv = nn.Linear(32, 16), nn.Conv2d(16, 8, 3, padding=1)
    for layer in (lin, conv):
        mat = to_matrix(layer)
        mask = nm_magnitude_mask(mat, 2, 4)
        assert (mask.reshape(len(mat), -1, 4).sum(-1) == 2).all()  # exactly 2 pruned, 2 kept per group
        kept = mat.masked_fill(mask, 0)
        # the kept ones are the two largest |w| of their group
        groups = mat.abs().reshape(len(mat), -1, 4)
        assert torch.equal(kept.abs().reshape(len(mat), -1, 4).topk(2, -1).values, groups.topk(2, -1).values)
        from_matrix(layer, kept)
    assert nm_violations(to_matrix(lin), 2, 4) == 0 and _conv_groups_ok(conv.weight, 2, 4)
    # 1:4 keeps one
    assert ((~nm_magnitude_mask(to_matrix(nn.Linear(16, 8)), 1, 4)).reshape(8, -1, 4).sum(-1) == 1).all()
    assert nm_ineligible(nn.Linear(30, 16), 4) and nm_ineligible(nn.Conv2d(16, 16, 3, groups=16), 4)
    assert nm_ineligible(nn.Linear(64, 64), 4) is None


def test_sparsegpt_beats_magnitude_on_correlated_inputs():
    torch.manual_seed(0)
    z = torch.randn(4096, 64)
    x = z @ torch.randn(64, 64) * 0.3 + z  # strongly correlated input channels
    w = torch.randn(48, 64)
    h = Hessian(64)
    h.add(x)
    w_obs, mask = obs_prune(w, h.value, 2, 4)
    w_mag = w.masked_fill(nm_magnitude_mask(w, 2, 4), 0)
    err = {name: float(((x @ w.t() - x @ v.t()) ** 2).mean()) for name, v in (("obs", w_obs), ("mag", w_mag))}
    assert nm_violations(w_obs, 2, 4) == 0 and float((w_obs == 0).float().mean()) == 0.5
    assert torch.equal(w_obs == 0, mask)
    assert err["obs"] < 0.75 * err["mag"], err  # measured: 35.3 vs 57.7


def test_block_mask_and_allocation():
    scores = torch.tensor([[1.0, 5.0], [3.0, 0.5]])
    mask = block_mask(scores, (2, 4), 0.5)
    assert mask.shape == (4, 8) and mask[:2, :4].all() and mask[2:, 4:].all() and not mask[:2, 4:].any()
    levels = [0.0, 0.25, 0.5, 0.75]
    # layer "a" is insensitive, "b" degrades fast: the budget goes to "a"
    curves = {"a": [0.0, 0.01, 0.02, 0.03], "b": [0.0, 1.0, 5.0, 20.0]}
    alloc = allocate(curves, {"a": 100, "b": 100}, levels, 0.375)
    assert alloc["a"] == 0.75 and alloc["b"] == 0.0
    assert (alloc["a"] * 100 + alloc["b"] * 100) / 200 >= 0.375


def test_block_pruning_meets_budget_and_is_blockwise(vit, calib):
    model = copy.deepcopy(vit[0])
    cfg = PruneConfig(block={"sparsity": 0.3, "block": [16, 16], "allocation": "uniform"}, images=32)
    rep = prune(model, cfg, calib)
    assert abs(rep["achieved"] - 0.3) < 0.02 and rep["layers"]
    for rec in rep["layers"]:
        w = model.get_submodule(rec["layer"]).weight.detach()
        blocks = (w != 0).reshape(w.shape[0] // 16, 16, w.shape[1] // 16, 16).sum(dim=(1, 3))
        assert ((blocks == 0) | (blocks == 256)).all(), rec["layer"]  # whole 16x16 blocks, nothing partial


def test_structured_shrink_equals_mask_and_is_smaller(vit, calib):
    model = vit[0]
    cfg = PruneConfig(structured={"mlp_hidden": 0.3, "heads": 0.25})
    shrunk, masked = copy.deepcopy(model), copy.deepcopy(model)
    rep = prune_structured(shrunk, cfg, calib)
    prune_structured(masked, cfg, calib, shrink=False)
    with torch.no_grad():
        a, b, ref = shrunk(calib), masked(calib), model(calib)
    assert (a - b).abs().max() <= 1e-4 * float(ref.abs().max())
    mlp = [r for r in rep["modules"] if r["kind"] == "mlp"]
    assert mlp and all(r["kept"] % 8 == 0 and r["kept"] < r["units"] for r in mlp)
    assert shrunk.blocks[0].mlp.fc1.out_features == mlp[0]["kept"] and shrunk.blocks[0].attn.num_heads == 3
    assert sum(p.numel() for p in shrunk.parameters()) < 0.85 * sum(p.numel() for p in model.parameters())
    # the OBS refit keeps the logits closer to the dense model's than dropping the same units without it
    plain = copy.deepcopy(model)
    prune_structured(plain, PruneConfig(structured={"mlp_hidden": 0.3, "heads": 0.25, "criterion": "magnitude"}),
                     calib)
    with torch.no_grad():
        assert ((a - ref) ** 2).mean() < ((plain(calib) - ref) ** 2).mean()


def test_zeros_stay_zero_through_quantization_and_export(vit, calib, tmp_path):
    model, info = vit
    sparse = copy.deepcopy(model)
    rep = prune(sparse, PruneConfig(nm={"criterion": "sparsegpt"}, images=32), calib)
    assert rep["layers"] and "patch_embed.proj" in rep["skipped"]  # 3 input channels: no sparse kernels
    cfg = QuantConfig(weights={"bits": 4}, keep_8bit=["patch_embed*", "head*"],
                      reconstruct=Reconstruct(images=32, iters=20, batch=16))
    qm, plan = quantize(sparse, cfg, [calib[:32]])
    assert plan.rounded  # AdaRound ran and chose roundings
    for r in rep["layers"]:
        codes = plan.rounded[r["layer"]].reshape(plan.rounded[r["layer"]].shape[0], -1)
        assert int((codes != 0).reshape(len(codes), -1, 4).sum(-1).max()) <= 2, r["layer"]
    paths = {}
    for precision, src in (("fp32", sparse), ("int8", qm)):
        cfg8 = QuantConfig()
        if precision == "int8":
            src, _ = quantize(sparse, cfg8, [calib[:32]])
        paths[precision] = tmp_path / f"{precision}.onnx"
        export_onnx(src, info, ExportConfig(precision=precision), paths[precision], "test")
        sp = weight_sparsity(paths[precision])
        assert sp["nm_layers"] == len(rep["layers"]), precision
        # the sparse file computes what its PyTorch model computes (FP32: the parity tolerance; INT8: the
        # simulation's top-1 on the check images)
        got = OrtRunner(paths[precision], 1)(calib[:16].numpy())
        with torch.no_grad():
            want = src(calib[:16]).numpy()
        if precision == "fp32":
            assert np.abs(got - want).max() <= 1e-3
        else:
            assert (got.argmax(1) == want.argmax(1)).all()
    dense = tmp_path / "dense.onnx"
    export_onnx(model, info, ExportConfig(precision="fp32"), dense, "test")
    assert weight_sparsity(dense)["nm_layers"] == 0


def test_checker_finds_a_broken_pattern(vit, calib, tmp_path):
    model, info = vit
    sparse = copy.deepcopy(model)
    rep = prune(sparse, PruneConfig(nm={"criterion": "magnitude"}), calib)
    fc1 = sparse.blocks[2].mlp.fc1
    with torch.no_grad():
        fc1.weight[0, :4] = 1.0  # one group of 4 all non-zero
    path = tmp_path / "broken.onnx"
    export_onnx(sparse, info, ExportConfig(precision="fp32"), path, "test")
    sp = weight_sparsity(path)
    assert sp["nm_layers"] == len(rep["layers"]) - 1
    assert sum(r.get("nm_violations", 0) == 1 for r in sp["layers"]) == 1


def test_recipe_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nprune: {nm: {n: 4, m: 4}}\ncalibration: calibration/builtin.yaml\n")
    with pytest.raises(BadInput, match=r"prune\.nm.*n \(4\) must be smaller than m"):
        load_recipe(bad)
    bad.write_text("name: bad\nprune: {nm: {}, block: {}}\ncalibration: calibration/builtin.yaml\n")
    with pytest.raises(BadInput, match="exactly one of nm, block or structured"):
        load_recipe(bad)
    bad.write_text("name: bad\nprune: {structured: {}}\n")
    with pytest.raises(BadInput, match="prune: needs a calibration"):
        load_recipe(bad)
    for name in ("sparse24_int8", "block_prune_int8", "structured_prune"):
        assert load_recipe(name).prune is not None


def test_sparse24_recipe_end_to_end(tmp_path):
    out = tmp_path / "run"
    # every quantizer and no timing: this is about the weights in the files; 1,000 images so that three
    # near-tie flips between the simulation and ONNX Runtime (~43 dB apart) do not decide the agreement check
    res = cli("compress", "--recipe", "recipes/sparse24_int8.yaml", "--out", str(out), "--set", "calibration.num=64",
              "--set", "quantize.placement=all", "--set", "validate.devices=[]")
    assert res.returncode == 0, res.stderr
    rep = json.loads((out / "report.json").read_text())
    assert rep["status"] == "ok"
    names = [c["name"] for c in rep["checks"]]
    assert sum("2:4 sparsity intact" in n for n in names) == 3
    assert any(n == "coreml-sparse: weights stored sparse" for n in names)
    rows = {r["name"]: r for r in rep["results"]}
    budget = load_recipe("sparse24_int8").budget.max_accuracy_drop / 100
    assert rows["pytorch-pruned"]["accuracy"]["top1"] >= rows["pytorch-fp32"]["accuracy"]["top1"] - budget
    md = (out / "report.md").read_text()
    assert "## Pruning" in md
    # the layers left dense are listed with the reason (the 3-channel patch embedding: no sparse kernel takes it)
    skipped = rep["pruning"]["skipped"]
    assert "patch_embed.proj" in skipped and f"Left dense ({len(skipped)} layers):" in md
    assert all(f"- `{name}`: {why}" in md for name, why in list(skipped.items())[:20])


def test_conv_hidden_channels_shrink_on_the_hybrid(calib):
    """MobileViT's inverted residuals lose 30 % of their hidden channels (expand conv, BN, depthwise conv,
    BN and the project conv's inputs): the shrunk model equals the masked one, and the OBS refit keeps
    the logits closer to the dense model's than magnitude selection without refit."""
    model, info = load_model(ModelConfig(source="builtin:hybrid-cifar10"))
    cfg = PruneConfig(structured={"mlp_hidden": 0.0, "conv_hidden": 0.3})
    shrunk, masked = copy.deepcopy(model), copy.deepcopy(model)
    rep = prune_structured(shrunk, cfg, calib)
    prune_structured(masked, cfg, calib, shrink=False)
    convs = [r for r in rep["modules"] if r["kind"] == "conv"]
    assert len(convs) == 7 and all(r["kept"] < r["units"] for r in convs)
    block = shrunk.stages[1][0]
    assert block.conv1_1x1.conv.out_channels == block.conv2_kxk.conv.groups == block.conv3_1x1.conv.in_channels \
        == block.conv1_1x1.bn.num_features == convs[0]["kept"]
    plain = copy.deepcopy(model)
    prune_structured(plain, PruneConfig(structured={"mlp_hidden": 0.0, "conv_hidden": 0.3, "criterion": "magnitude"}),
                     calib)
    with torch.no_grad():
        a, ref = shrunk(calib), model(calib)
        assert (a - masked(calib)).abs().max() <= 1e-4 * float(ref.abs().max())
        assert ((a - ref) ** 2).mean() < 0.5 * ((plain(calib) - ref) ** 2).mean()


@pytest.mark.parametrize("arch,setting", [("levit_128s", "mlp_hidden"), ("efficientformerv2_s0", "conv_hidden")])
def test_structured_pruning_shrinks_levit_and_efficientformerv2_mlps(arch, setting):
    """LeViT's MLPs (Linear + BatchNorm pairs) and EfficientFormerV2's conv MLPs (1x1 -> depthwise -> 1x1, convs
    with biases) lose 30 % of their hidden units: every MLP is narrowed with its norm, the shrunk model computes
    what the masked one does, OBS with the refit stays closer to the dense logits than weight norms without it,
    and the shrunk model exports to an ONNX file ONNX Runtime runs as PyTorch does."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(arch, img_size=64, num_classes=10).eval()
    with torch.no_grad():  # as if trained: timm starts the norm after each MLP at zero, so the MLPs would add nothing
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.normal_(1, 0.2), m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 2)
    x = torch.randn(24, 3, 64, 64)
    cfg = PruneConfig(structured={"mlp_hidden": 0.0, setting: 0.3})
    shrunk, masked, plain = copy.deepcopy(model), copy.deepcopy(model), copy.deepcopy(model)
    rep = prune_structured(shrunk, cfg, x)
    prune_structured(masked, cfg, x, shrink=False)
    prune_structured(plain, PruneConfig(structured={"mlp_hidden": 0.0, setting: 0.3, "criterion": "magnitude"}), x)
    mlps = [n for n, m in model.named_modules() if type(m).__name__ in ("LevitMlp", "ConvMlpWithNorm")]
    assert [r["module"] for r in rep["modules"]] == mlps and all(r["kept"] < r["units"] for r in rep["modules"])
    first = shrunk.get_submodule(mlps[0])
    producer = first.ln1 if arch.startswith("levit") else first.fc1
    assert producer.bn.num_features == rep["modules"][0]["kept"]
    assert sum(p.numel() for p in shrunk.parameters()) < 0.9 * sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        a, ref = shrunk(x), model(x)
        assert (a - masked(x)).abs().max() <= 1e-4 * float(ref.abs().max())
        assert ((a - ref) ** 2).mean() < 0.5 * ((plain(x) - ref) ** 2).mean()
    import onnxruntime as ort

    from edgevit.exporters.onnx import torch_to_onnx

    proto = torch_to_onnx(shrunk, 64)
    got = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"input": x[:8].numpy()})[0]
    assert np.abs(got - a[:8].numpy()).max() <= 1e-4 * float(ref.abs().max()) + 1e-5


def test_structured_pruning_narrows_tinyvits_mlp_not_an_mlp_that_normalizes_its_hidden_units():
    """TinyViT's NormMlp normalizes its input, so its hidden units can go (shrunk = masked); timm's Mlp with a norm
    on its hidden units is left alone (removing units would change what that norm computes)."""
    from timm.layers import Mlp
    from timm.models.tiny_vit import NormMlp

    from edgevit.prune.structured import check_structured

    torch.manual_seed(0)
    model = nn.Sequential(NormMlp(32, 64), nn.GELU(), Mlp(32, 64, norm_layer=nn.LayerNorm)).eval()
    x = torch.randn(16, 10, 32)
    cfg = PruneConfig(structured={"mlp_hidden": 0.5})
    shrunk, masked = copy.deepcopy(model), copy.deepcopy(model)
    rep = prune_structured(shrunk, cfg, x)
    prune_structured(masked, cfg, x, shrink=False)
    assert [(r["module"], r["units"], r["kept"]) for r in rep["modules"]] == [("0", 64, 32)]
    assert shrunk[0].fc1.out_features == shrunk[0].fc2.in_features == 32 and shrunk[2].fc1.out_features == 64
    with torch.no_grad():
        assert (shrunk(x) - masked(x)).abs().max() <= 1e-5 and not torch.allclose(shrunk(x), model(x))
    with pytest.raises(ValueError, match="finds nothing to shrink"):
        check_structured(model[2:], cfg)


@pytest.mark.parametrize("mlp", ["efficientformer", "fastvit", "no-bias"])
def test_conv_mlps_with_norms_beside_the_convs_or_none_shrink(mlp):
    """EfficientFormer's conv MLP (BatchNorms held beside the convs: fc1 -> norm1 -> act -> fc2 -> norm2) and
    FastViT's (plain 1x1 convs with biases, a depthwise conv on the input) are conv units, as are 1x1 convs with
    neither bias nor norm (the refit's bias then gets a conv with one): the shrunk model
    computes what the masked one does, with fewer parameters and every unit narrowed."""
    from timm.layers import ConvMlp
    from timm.models.efficientformer import ConvMlpWithNorm

    from edgevit.prune.channels import conv_units

    torch.manual_seed(0)
    class FastVitMlp(ConvMlp):  # FastViT's ConvMlp: a depthwise conv on the input, then timm's ConvMlp
        def __init__(self):
            super().__init__(16, 64)
            self.conv = nn.Conv2d(16, 16, 7, padding=3, groups=16)

        def forward(self, x):
            return super().forward(self.conv(x))

    # no-bias: 1x1 convs with neither a bias nor a norm after them; the refit's bias needs a new conv with one
    block = ConvMlpWithNorm(16, 64) if mlp == "efficientformer" else FastVitMlp() if mlp == "fastvit" else \
        ConvMlp(16, 64, bias=False)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), block).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.normal_(1, 0.2), m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 2)
    assert list(conv_units(model)) == ["1"]
    x = torch.randn(8, 3, 8, 8)
    cfg = PruneConfig(structured={"mlp_hidden": 0.0, "conv_hidden": 0.5})
    shrunk, masked = copy.deepcopy(model), copy.deepcopy(model)
    rep = prune_structured(shrunk, cfg, x)
    prune_structured(masked, cfg, x, shrink=False)
    assert [(r["units"], r["kept"]) for r in rep["modules"]] == [(64, 32)] and shrunk[1].fc1.out_channels == 32
    if mlp == "efficientformer":
        assert shrunk[1].norm1.num_features == 32
    if mlp == "no-bias":
        assert shrunk[1].fc1.bias is None and shrunk[1].fc2.bias is not None and masked[1].fc2.bias is not None
    def fc_params(m):
        return sum(p.numel() for k in ("fc1", "fc2") for p in getattr(m[1], k).parameters())

    assert fc_params(shrunk) < 0.55 * fc_params(model)
    with torch.no_grad():
        ref = model(x)
        assert (shrunk(x) - masked(x)).abs().max() <= 1e-5 * float(ref.abs().max()) + 1e-6
        assert not torch.allclose(shrunk(x), ref)


def test_structured_settings_that_shrink_nothing_are_refused_before_calibration(tmp_path, monkeypatch):
    """The structured recipe (MLP hidden units only) on EfficientViT, whose MLPs are convs: exit 2 before any stage
    runs, one line naming the setting that would shrink them and no run folder; that setting then shrinks them. A
    model with nothing structured pruning removes is told to use nm or block pruning."""
    from edgevit.prune.structured import check_structured
    from edgevit.stages.prune import PruneStage

    def pruned(*a, **kw):
        raise AssertionError("pruning ran before its settings were checked")

    with monkeypatch.context() as m:
        m.setattr(PruneStage, "apply", pruned)
        out = tmp_path / "run"
        res = cli("compress", "--recipe", "structured_prune", "--model", "builtin:efficientvit-cifar10",
                  "--out", str(out))
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 2 and last.startswith("error: prune: structured pruning with mlp_hidden=0.3"), res.stderr
    assert "conv MLP / inverted residual" in last and "--set prune.structured.conv_hidden=0.3" in last
    assert "Traceback" not in res.stderr and not out.exists() and not list(tmp_path.glob(".run*"))
    model, _ = load_model(ModelConfig(source="builtin:efficientvit-cifar10"))
    cfg = PruneConfig(structured={"mlp_hidden": 0.0, "conv_hidden": 0.3})
    check_structured(model, cfg)
    x = torch.randn(8, 3, 64, 64)
    rep = prune_structured(model, cfg, x)
    assert rep["modules"] and all(r["kind"] == "conv" and r["kept"] < r["units"] for r in rep["modules"])
    vit, _ = load_model(ModelConfig(source="builtin:vit-cifar10"))
    with pytest.raises(ValueError, match=r"it has 6 MLP .* set prune.structured.mlp_hidden"):
        check_structured(vit, PruneConfig(structured={"mlp_hidden": 0.0, "heads": 0.0}))
    with pytest.raises(ValueError, match="use prune.nm or prune.block"):
        check_structured(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten()), PruneConfig(structured={"mlp_hidden": 0.3}))


def test_pruning_names_each_phase_of_its_progress_bar_with_its_length():
    """A long pruning step shows which phase it is in and how far: each phase starts the bar with its label and
    length, and the bar advances once per unit of it (the greedy pass over the layers moved no bar before)."""
    class Steps:  # what edgevit.progress.Steps does to a rich task, recorded
        def __init__(self):
            self.phases = []

        def __call__(self, name=None):
            self.phases[-1][2] += 1

        def phase(self, label, total):
            self.phases.append([label, total, 0])

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)

        def forward(self, x):
            return x + self.fc2(torch.relu(self.fc1(x)))

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), Block(), Block(), nn.Linear(16, 10))
    cfg = PruneConfig.model_validate({"nm": {"n": 2, "m": 4, "criterion": "sparsegpt", "max_disagreement": 50.0},
                                      "images": 64, "reconstruct": {"iters": 2}})
    steps = Steps()
    out = prune(model, cfg, torch.randn(64, 8), steps)
    pruned = len(out["layers"])
    assert steps.phases == [["2:4 weights of each layer alone", 4, 4], ["cost of each layer pruned alone", 4, 4],
                            ["layers taken by gain per cost", 4, 4],
                            ["2:4 weights", pruned, pruned], ["reconstruct blocks", 2, 2]]
    from edgevit.progress import Steps as RichSteps, new_progress

    with new_progress() as progress:
        bar = RichSteps(progress, "prune (nm)")
        bar.phase("2:4 weights", 3)
        bar("1.fc1")
        bar("1.fc2")
        task = progress.tasks[0]
        assert (task.description, task.total, task.completed) == ("prune (nm): 2:4 weights", 3, 2)
