"""Token reduction: ToMe merging and EViT pruning keep their invariants, r=0 is the identity, the adapter
comes off cleanly, hybrids unmerge to the full grid, and the merged model exports and runs in ORT."""
from __future__ import annotations

import copy
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from conftest import cli, fast, speed_only_failures
from edgevit.models import load_model
from edgevit.recipe import ModelConfig, load_recipe
from edgevit.tokens import (TokenBlock, TokenConfig, apply_tokens, bipartite_matching, count_flops, remove_tokens,
                            token_counts, top_k_pruning, unmerge)


@pytest.fixture(scope="module")
def vit():
    return load_model(ModelConfig(source="builtin:vit-cifar10"))[0].eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _reduced(model, **cfg):
    """A copy of ``model`` with token reduction applied, and apply_tokens' records."""
    m = copy.deepcopy(model)
    return m, apply_tokens(m, TokenConfig(**cfg))


def _tokens(n=17, c=8, b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, c, generator=g), torch.randint(1, 5, (b, n, 1), generator=g).float()


@pytest.mark.parametrize("n", [16, 17])
def test_merge_keeps_the_size_weighted_mean_and_total_size(n):
    x, size = _tokens(n)
    red = bipartite_matching(torch.randn(3, n, 8), r=5, protected=1)
    merged, new_size = red.merge(x, size)
    assert merged.shape == (3, n - 5, 8) and new_size.shape == (3, n - 5, 1)
    torch.testing.assert_close(new_size.sum(1), size.sum(1))
    torch.testing.assert_close((merged * new_size).sum(1), (x * size).sum(1), rtol=1e-5, atol=1e-5)
    # every input token lands in exactly one output token
    source = red.track(torch.eye(n).expand(3, -1, -1))
    torch.testing.assert_close(source.sum(1), torch.ones(3, n))


def test_merge_pairs_the_most_similar_tokens():
    """Tokens 2k and 2k+1 are near copies except pair 3: merging r=3 of 5 pairs merges copies only."""
    g = torch.Generator().manual_seed(1)
    base = torch.randn(5, 16, generator=g)
    metric = torch.stack([base, base + 0.01 * torch.randn(5, 16, generator=g)], 1).reshape(1, 10, 16)
    metric[0, 7] = -base[3]  # the partner of token 6 now points the other way
    red = bipartite_matching(metric, r=3)
    source = red.track(torch.eye(10).unsqueeze(0))[0]
    groups = {tuple(torch.nonzero(row).flatten().tolist()) for row in source if row.sum() > 1}
    assert len(groups) == 3 and all(b == a + 1 and a % 2 == 0 for a, b in groups) and (6, 7) not in groups


def test_merge_output_order_follows_tome():
    """[class token, unmerged A tokens in their original order, B tokens in order] with a class token;
    without one the unmerged A tokens come from the best matched to the least (ToMe's reference order,
    which decides the next block's alternate split)."""
    g = torch.Generator().manual_seed(2)
    b_tokens = torch.randn(4, 16, generator=g)
    a_tokens = torch.stack([torch.randn(16, generator=g)] + [b_tokens[j] + eps * torch.randn(16, generator=g)
                                                           for j, eps in ((0, 0.9), (1, 0.05), (2, 0.3))])
    metric = torch.stack([a_tokens, b_tokens], 1).reshape(1, 8, 16)  # A = tokens 0, 2, 4, 6; B = 1, 3, 5, 7
    source = bipartite_matching(metric, r=1, protected=1).track(torch.eye(8).unsqueeze(0))[0]
    held = [torch.nonzero(row).flatten().tolist() for row in source]
    assert held == [[0], [2], [6], [1], [3, 4], [5], [7]]  # token 4 merged (closest); 2 and 6 in order
    metric[0, 0] = b_tokens[3] + 2.0 * torch.randn(16, generator=g)  # no class token: token 0 may merge too
    source = bipartite_matching(metric, r=1).track(torch.eye(8).unsqueeze(0))[0]
    held = [torch.nonzero(row).flatten().tolist() for row in source]
    assert held[3:] == [[1], [3, 4], [5], [7]] and held[0] == [6] and held[1] == [2]  # 6 matches better than 2


def _tome_by_the_paper(x: torch.Tensor, size: torch.Tensor, r: int, protected: int):
    """One ToMe step on one image written from the paper's algorithm (Bolya et al., ICLR 2023, Sec. 3)
    with the reference code's output order, token by token: alternate split, each A token's most similar
    B token by cosine, the r best edges merge (size-weighted mean); class (and distillation) tokens never
    merge; output [unmerged A, B], with the unmerged A in original order when there is a class token and
    the distillation token (B's first) right after the class token."""
    a, b = list(range(0, len(x), 2)), list(range(1, len(x), 2))
    unit = x / x.norm(dim=-1, keepdim=True)
    edges = []
    for i, ai in enumerate(a):
        if protected and i == 0:
            edges.append((-float("inf"), ai, None))
            continue
        sims = [(float(unit[ai] @ unit[bj]), bj) for j, bj in enumerate(b) if not (protected > 1 and j == 0)]
        best = max(sims)
        edges.append((best[0], ai, best[1]))
    edges.sort(key=lambda e: -e[0])
    src, unm = edges[:r], [e[1] for e in edges[r:]]
    if protected:
        unm.sort()
    groups = {bj: [bj] for bj in b}
    for _, ai, bj in src:
        groups[bj].append(ai)
    order = [[ai] for ai in unm] + [groups[bj] for bj in b]
    if protected > 1:  # the reference puts the distillation token (B's first) right after the class token
        order.insert(1, order.pop(len(unm)))
    sizes = torch.stack([size[g].sum(0) for g in order])
    tokens = torch.stack([(x[g] * size[g]).sum(0) for g in order]) / sizes
    return tokens, sizes, order


@pytest.mark.parametrize("protected", [0, 1, 2])
def test_two_merge_steps_match_the_papers_algorithm(protected):
    """Two consecutive ToMe steps (the first step's output order decides the second's split) give the same
    tokens, sizes and groups as the paper's algorithm written token by token, with and without class and
    distillation tokens."""
    g = torch.Generator().manual_seed(3)
    x, size = torch.randn(1, 23, 16, generator=g), torch.ones(1, 23, 1)
    ref_x, ref_size, groups = x[0], size[0], [[i] for i in range(23)]
    for r in (5, 4):
        red = bipartite_matching(x, r=r, protected=protected)
        source = red.track(torch.eye(23).unsqueeze(0) if r == 5 else source)
        x, size = red.merge(x, size)
        ref_x, ref_size, order = _tome_by_the_paper(ref_x, ref_size, r, protected)
        groups = [sorted(i for k in grp for i in groups[k]) for grp in order]
        torch.testing.assert_close(x[0], ref_x, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(size[0], ref_size)
        assert [torch.nonzero(row).flatten().tolist() for row in source[0]] == groups


def test_protected_tokens_never_merge():
    n = 21
    metric = torch.randn(2, n, 8)
    metric[:, 0] = metric[:, 2]  # the class token is the best match of another token
    metric[:, 1] = metric[:, 3]  # the distillation token likewise
    red = bipartite_matching(metric, r=8, protected=2)
    source = red.track(torch.eye(n).expand(2, -1, -1))
    for b in range(2):  # class and distillation tokens alone, where the head reads them
        assert source[b, 0].tolist() == torch.eye(n)[0].tolist()
        assert source[b, 1].tolist() == torch.eye(n)[1].tolist()


def test_pruning_keeps_the_top_tokens_and_fuses_the_rest():
    x = torch.randn(2, 9, 4)
    scores = torch.tensor([[0.0, 0.3, 0.1, 0.2, 0.05, 0.15, 0.02, 0.08, 0.1]] * 2)
    red = top_k_pruning(scores, keep=3, protected=1)
    out = red.apply(x)
    assert out.shape == (2, 5, 4)
    assert [int(row.argmax()) for row in red.assign[0, :4]] == [0, 1, 3, 5]  # prefix, then by score
    dropped = [2, 4, 6, 7, 8]
    torch.testing.assert_close(out[:, -1], (scores[:, dropped, None] * x[:, dropped]).sum(1))
    assert top_k_pruning(scores, keep=3, protected=1, fuse=False).apply(x).shape == (2, 4, 4)


def test_unmerge_restores_the_shape_and_copies_sources():
    x, size = _tokens(16)
    red = bipartite_matching(torch.randn(3, 16, 8), r=6)
    merged, _ = red.merge(x, size)
    source = red.track(torch.eye(16).expand(3, -1, -1))
    full = unmerge(merged, source)
    assert full.shape == x.shape
    for b in range(3):
        for j in range(16):
            torch.testing.assert_close(full[b, j], merged[b, int(torch.nonzero(source[b, :, j])[0])])


def test_r0_is_the_identity_and_remove_restores_the_model(vit, images):
    ref = vit(images)
    m, _ = _reduced(vit, r=0, head_only=False)
    assert torch.equal(m(images), ref)
    m, records = _reduced(vit, r=8, head_only=False)
    assert records[0]["merge"] == [8] * 6 and records[0]["protected"] == 1
    assert isinstance(m.blocks[0], TokenBlock) and list(m.state_dict()) == list(vit.state_dict())
    assert token_counts(m, {"blocks": 65})["blocks"] == [65, 57, 49, 41, 33, 25, 17]
    assert not torch.equal(m(images), ref)
    remove_tokens(m)
    assert type(m.blocks[0]).__name__ == "Block" and torch.equal(m(images), ref)


def test_head_only_last_block_changes_no_logit(vit, images):
    """The last block computes only the class token the head reads: the same logits (up to float
    rounding), fewer FLOPs; merging composes with it; an average-pooled ViT is left alone."""
    ref = vit(images)
    m, records = _reduced(vit, r=0)
    assert records[0]["head_only"] and m.blocks[5].head_only and not m.blocks[4].head_only
    assert token_counts(m, {"blocks": 65})["blocks"] == [65] * 6 + [1]
    torch.testing.assert_close(m(images), ref, rtol=1e-5, atol=1e-5)
    assert count_flops(m, images[:1]) < 0.9 * count_flops(vit, images[:1])
    merged, _ = _reduced(vit, r=8, head_only=False)
    m, _ = _reduced(vit, r=8)
    assert token_counts(m, {"blocks": 65})["blocks"] == [65, 57, 49, 41, 33, 25, 1]
    torch.testing.assert_close(m(images), merged(images), rtol=1e-5, atol=1e-5)
    pooled = copy.deepcopy(vit)
    pooled.global_pool = "avg"
    _, records = _reduced(pooled, r=4)
    assert not records[0]["head_only"] and records[0]["unmerge"]


def test_schedules_and_evit_blocks():
    assert TokenConfig(r=4, schedule="decreasing").merges(5) == [8, 6, 4, 2, 0]
    assert TokenConfig(r=[1, 2, 3]).merges(3) == [1, 2, 3]
    with pytest.raises(ValueError, match="lists 2 values but the stage has 3"):
        TokenConfig(r=[1, 2]).merges(3)
    assert TokenConfig(method="evit").pruning_blocks(12) == [3, 6, 9]


def test_hybrid_stages_unmerge_to_the_full_grid():
    model = load_model(ModelConfig(source="builtin:hybrid-cifar10"))[0].eval()
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    m = copy.deepcopy(model)
    records = apply_tokens(m, TokenConfig(r=4))
    assert [r["stage"] for r in records] == ["stages.2.1.transformer", "stages.3.1.transformer",
                                             "stages.4.1.transformer"]
    assert all(r["unmerge"] and r["protected"] == 0 for r in records)
    seen = {}
    m.stages[2][1].transformer.register_forward_hook(lambda mod, a, out: seen.update(shape=out.shape))
    out = m(x)
    assert seen["shape"] == (2 * 4, 16, 64) and out.shape == ref.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, ref)  # 16 -> 8 tokens in the first stage changes the result
    # the class-token score on stages without one: the error gives the setting that works there
    with pytest.raises(ValueError, match=r"stage stages\.2\.1\.transformer has none \(--set tokens\.score=received"):
        apply_tokens(copy.deepcopy(model), TokenConfig(method="evit", keep_rate=0.7, score="cls"))


@pytest.mark.parametrize("source, cfg, precision", [
    ("builtin:vit-cifar10", TokenConfig(r=8), "int8"),  # tome_int8
    ("builtin:vit-cifar10", TokenConfig(method="evit", keep_rate=0.6), "int8"),  # evit_int8
    ("builtin:vit-cifar10", TokenConfig(r=8), "fp32"),  # tome_fp32
    ("builtin:hybrid-cifar10", TokenConfig(r=4), "fp32"),  # MobileViT: merge, attention, unmerge
    ("timm:efficientformer_l1", TokenConfig(r=8), "fp32"),  # merged tokens average the position biases
], ids=["tome-int8", "evit-int8", "tome-fp32", "mobilevit-unmerge", "efficientformer"])
def test_reduced_model_exports_scatter_free_and_matches_in_onnx_runtime(source, cfg, precision, tmp_path):
    """The ONNX edgevit's exporter writes for a token-reduced model has no Scatter op (TensorRT miscomputes
    ScatterElements-add) and computes what PyTorch computes (INT8: what the simulation predicts)."""
    import onnx

    from edgevit.exporters.onnx import export_onnx
    from edgevit.quant import QuantConfig, quantize
    from edgevit.recipe import ExportConfig
    from edgevit.tokens import TokenStage

    m, info = load_model(ModelConfig(source=source, num_classes=10))
    apply_tokens(m, cfg)
    assert any(isinstance(mod, (TokenBlock, TokenStage)) for mod in m.modules())  # the reduction applies
    torch.manual_seed(0)
    x = torch.randn(6, 3, info.input_size, info.input_size)
    if precision == "int8":
        m, _ = quantize(m, QuantConfig(), [x])
    path = tmp_path / "m.onnx"
    export_onnx(m, info, ExportConfig(precision=precision), path, "test")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert not ops & {"ScatterElements", "ScatterND", "Scatter"}
    assert "TopK" in ops  # the matching (or EViT's top-k) is in the graph
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = m(x).numpy()
    if precision == "fp32":
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    else:
        assert (got.argmax(1) == want.argmax(1)).all()


def test_position_biases_are_averaged_over_merged_positions():
    from timm.models.efficientformer import Attention

    from edgevit.tokens.patch import _position_bias

    a = Attention(dim=32, key_dim=8, num_heads=2, attn_ratio=1, resolution=3)  # 9 positions
    torch.nn.init.normal_(a.attention_biases)
    groups = [[0, 1], [2], [3, 4, 5], [6, 7, 8]]
    source = torch.zeros(1, 4, 9)
    for i, g in enumerate(groups):
        source[0, i, g] = 1
    bias = a.get_attention_biases(a.attention_biases.device)
    got = _position_bias(a, source)
    assert got.shape == (1, 2, 4, 4)
    for i, gi in enumerate(groups):
        for j, gj in enumerate(groups):
            torch.testing.assert_close(got[0, :, i, j], bias[:, gi][:, :, gj].mean(dim=(1, 2)))
    torch.testing.assert_close(_position_bias(a, torch.eye(9).unsqueeze(0))[0], bias)


def _assert_ort_matches(model, x, expected, path):
    """Export ``model`` (batch left dynamic) and check ONNX Runtime's logits on ``x`` against ``expected``."""
    torch.onnx.export(model, (x[:1],), str(path), input_names=["input"], dynamic_axes={"input": {0: "batch"}},
                      opset_version=17, dynamo=False)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-4)


def _random_timm_model_r0_exact(name: str):
    """A timm model with random weights (10 classes), two 224 px inputs and its logits, after checking
    that r=0 token reduction leaves the logits bit-exact."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref = model(x)
        m, _ = _reduced(model, r=0)
        assert torch.equal(m(x), ref)
    return model, x, ref


def test_efficientformer_attention_stage_merges_and_exports(tmp_path):
    """EfficientFormer-L1 (random weights, 224 px): the stage after Flat merges its 49 tokens with the
    position biases averaged, unmerges before the mean pooling, r=0 is exact, and ORT matches."""
    model, x, ref = _random_timm_model_r0_exact("efficientformer_l1")
    with torch.no_grad():
        m, records = _reduced(model, r=8)
        assert [(r["stage"], r["merge"], r["unmerge"]) for r in records] == [("stages.3.blocks", [8], True)]
        out = m(x)
    assert not torch.equal(out, ref) and (out - ref).abs().max() < 0.2 * ref.abs().max()
    _assert_ort_matches(m, x, out, tmp_path / "ef.onnx")


def test_merged_hybrid_quantizes_and_runs_in_onnx_runtime(tmp_path):
    """MobileViT with merge -> attention -> unmerge, then W8A8: the QDQ export follows the simulation."""
    from conftest import CALIB_DIR, deployable_weights
    from edgevit.data import Preprocess, open_image_set
    from edgevit.exporters.onnx import export_onnx
    from edgevit.quant import QuantConfig, quantize
    from edgevit.recipe import ExportConfig
    from edgevit.validate import OrtRunner

    model, info = load_model(ModelConfig(source="builtin:hybrid-cifar10"))
    x = torch.from_numpy(open_image_set(CALIB_DIR, num=64).load(Preprocess(info.input_size, info.mean, info.std))[0])
    apply_tokens(model, TokenConfig(r=4))
    qmodel, _ = quantize(model, QuantConfig(weights=deployable_weights()), [x])
    export_onnx(qmodel, info, ExportConfig(precision="int8"), tmp_path / "q.onnx", "test")
    got = OrtRunner(tmp_path / "q.onnx", 1)(x.numpy())
    sim = qmodel(x).detach().numpy()
    assert (got.argmax(1) == sim.argmax(1)).mean() >= 0.99  # the product's deployed-vs-simulation check
    # most images agree to float precision; a value on a code boundary (conv sums in another order) can land one
    # code over and, before a merge decision, move an image's logits further (measured with the 80.23 % weights:
    # median 1e-6, 90th percentile 0.052, max 0.32 of |logits| up to 4.2)
    per_image = np.abs(got - sim).max(1)
    assert np.median(per_image) < 1e-4 and np.percentile(per_image, 90) < 0.06 * np.abs(sim).max()


def test_merged_model_converts_to_coreml(tmp_path):
    """The static-shape merge (TopK, Gather, one-hot matmuls, CumSum) converts with coremltools."""
    from edgevit.exporters.coreml import export_coreml, unavailable

    if unavailable():
        pytest.skip(unavailable())
    model, info = load_model(ModelConfig(source="builtin:vit-cifar10"))
    apply_tokens(model, TokenConfig(r=8))
    facts = export_coreml(model.eval(), info, tmp_path / "tome.mlpackage", recipe="test")
    assert facts["labels"] == info.labels and facts["input"]["width"] == 32
    assert (tmp_path / "tome.mlpackage").is_dir() and facts["size_bytes"] > 1e5


FAST = fast()


def test_recipes_load():
    assert load_recipe("tome_fp32").tokens.r == 8 and load_recipe("tome_fp32").quantize is None
    assert load_recipe("tome_int8").tokens.method == "tome" and load_recipe("tome_int8").quantize is not None
    assert load_recipe("evit_int8").tokens.method == "evit"


def test_merge_then_quantize_recipe_end_to_end(tmp_path):
    """tome_int8 with --set tokens.r=4: the merged model is quantized and exported as one INT8 QDQ model,
    which runs in ORT and agrees with its fake-quant simulation; the report has the token section."""
    out = tmp_path / "run"
    res = cli("compress", "--recipe", "recipes/tome_int8.yaml", "--out", str(out), "--set", "tokens.r=4",
              "--set", "quantize.placement=all", *FAST,  # the INT8 file whatever its speed here
              "--set", "budget=null",  # 64 calibration images cost 2 points here; the budget is tested apart
              "--set", "tokens.min_time_saving=null")  # r=4 saves 2-9 % of the time here: not timed
    rep = json.loads((out / "report.json").read_text())
    assert res.returncode == (1 if speed_only_failures(rep) else 0), res.stderr
    assert rep["tokens"]["tokens_per_block"]["blocks"] == [65, 61, 57, 53, 49, 45]
    assert rep["tokens"]["flops_ratio"] < 0.85
    rows = {r["name"]: r for r in rep["results"]}
    assert {"pytorch-tokens", "pytorch-int8-sim"} <= set(rows)
    merged, dense = rows["pytorch-tokens"]["accuracy"]["top1"], rows["pytorch-fp32"]["accuracy"]["top1"]
    assert merged > dense - 0.03
    int8 = [r for r in rep["results"] if r["precision"] == "int8" and r["runtime"] == "onnxruntime"]
    assert int8 and all(r["simulated_by"].startswith("pytorch-int8-sim") for r in int8)
    assert all(r["accuracy"]["top1"] > merged - 0.03 for r in int8)
    sim_checks = [c for c in rep["checks"] if "onnx-int8" in c["name"] and "not slower" not in c["name"]]
    assert sim_checks and all(c["ok"] for c in sim_checks)  # deployed INT8 agrees with the merged simulation
    md = (out / "report.md").read_text()
    assert "## Token reduction" in md
    # the unreduced model, exported beside the artifacts and timed with them, is the speed yardstick
    original = rows["onnx-fp32-original"]
    assert original["reference"] and (out / original["file"]).is_file() and original["file"].startswith("reference/")
    assert original["accuracy"]["top1"] == rows["pytorch-fp32"]["accuracy"]["top1"]
    assert "| onnx-fp32-original | onnxruntime | fp32 |" in md and "speed vs original FP32 ONNX" in md
    ratio = md.split("| onnx-fp32-original |")[1].split("|")[6].strip()
    assert ratio == "1.00x"


def test_efficientformerv2_merges_inside_attention_exactly_on_duplicate_tokens():
    """GridTokenAttention on EfficientFormerV2's Attention2d: when merged positions are exact duplicates
    (and the position biases and the talking heads' bias are zero) merging, proportional attention and
    unmerging reproduce the unmerged attention; otherwise only the merged tokens' outputs move."""
    from timm.models.efficientformer_v2 import Attention2d

    from edgevit.tokens.patch import GridTokenAttention

    torch.manual_seed(0)
    attn = Attention2d(dim=32, key_dim=8, num_heads=2, attn_ratio=2, resolution=4)
    attn.eval()  # Attention2d.train returns None
    with torch.no_grad():
        attn.attention_biases.zero_()
        attn.talking_head2.bias.zero_()
    x = torch.randn(2, 32, 4, 4)
    x[..., 1::2] = x[..., 0::2]  # token 2i + 1 (a B token) duplicates token 2i (an A token)
    merged = GridTokenAttention(attn, merge=5)
    assert merged.tokens == (16, 11) and list(merged.state_dict()) == list(attn.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(merged(x), attn(x), rtol=1e-5, atol=1e-5)
        y = torch.randn(2, 32, 4, 4)
        assert not torch.allclose(merged(y), attn(y), atol=1e-3)


def test_efficientformerv2_stages_merge_export_and_come_off(tmp_path):
    """EfficientFormerV2-S0 (random weights, 224 px): both attention stages merge inside each attention,
    the map stays whole for the convs, r=0 is exact, ORT matches PyTorch and remove_tokens restores it."""
    from edgevit.report.sections import token_lines
    from edgevit.tokens import summarize

    model, x, ref = _random_timm_model_r0_exact("efficientformerv2_s0")
    with torch.no_grad():
        m, records = _reduced(model, r=8)
        assert [(r["stage"], r["inside_attention"], r["unmerge"]) for r in records] == \
            [("stages.2.blocks", True, True), ("stages.3.blocks", True, True)]
        assert list(m.state_dict()) == list(model.state_dict())
        out = m(x)
        facts = summarize(model, m, x)
    assert facts["tokens_per_block"] == {"stages.2.blocks": [41, 41], "stages.3.blocks": [41, 41]}
    # 49 tokens are too few: the one-hot matmuls cost more than the attention saves, and the summary says so
    assert facts["flops_reduced"] > facts["flops"] and "more FLOPs" in facts["warning"]
    lines = token_lines({"method": "tome", "stages": records} | facts)
    assert "| `stages.2.blocks` | attention over 41, 41 (merged inside each attention) | after each attention |" \
        in lines and any(line.startswith("**Warning:**") for line in lines)
    assert not torch.equal(out, ref) and (out - ref).abs().max() < 0.2 * ref.abs().max()
    _assert_ort_matches(m, x, out, tmp_path / "ef2.onnx")
    with pytest.raises(ValueError, match="only be merged inside the attention"):
        _reduced(model, method="evit")
    remove_tokens(m)
    with torch.no_grad():
        assert torch.equal(m(x), ref)


def test_a_model_without_attention_stages_is_refused_before_pruning(tmp_path, monkeypatch):
    """hybrid_full on EfficientViT (its cascaded group attention is not a stage token reduction supports): the
    run is refused with exit 2 and one line naming `tokens` and how to go on, before the pruning stage starts
    (it took minutes, then failed), and leaves no run folder."""
    from edgevit.stages.prune import PruneStage

    def pruned(*a, **kw):
        raise AssertionError("pruning ran before the tokens settings were checked")

    monkeypatch.setattr(PruneStage, "apply", pruned)
    out = tmp_path / "run"
    res = cli("compress", "--recipe", "hybrid_full", "--model", "builtin:efficientvit-cifar10", "--out", str(out))
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 2 and last.startswith("error: tokens: the model has no attention stage"), res.stderr
    assert "--set tokens=null" in last and "Traceback" not in res.stderr and "tokens: tokens" not in last
    assert not out.exists() and not list(tmp_path.glob(".run*"))
