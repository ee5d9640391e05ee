"""Each stage spends only what it pays for: n:m layers chosen by gain per cost within an allowed
disagreement, block reconstruction after pruning, attention stages reduced only where it saves FLOPs
(and within an allowed disagreement), on the built-in hybrid with real calibration and eval images."""
from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
import torch
from torch import nn

from conftest import CALIB_DIR, EVAL_DIR, cli, speed_only_failures
from edgevit.costs import disagreement, kl_cost, outputs
from edgevit.data import Preprocess, open_image_set
from edgevit.models import load_model
from edgevit.prune import PruneConfig, prune
from edgevit.prune.allocate import choose_layers, layer_macs, sparse_gain
from edgevit.prune.reconstruct import reconstruct_pruned
from edgevit.recipe import ModelConfig, load_recipe
from edgevit.report.sections import pruning_lines, token_lines
from edgevit.tokens import TokenConfig
from edgevit.tokens.choose import TOGETHER, UNREDUCED, choose_stages, keep_stages_that_pay
from edgevit.validate.latency import int8_dot_saturates


@pytest.fixture(scope="module")
def hybrid():
    model, info = load_model(ModelConfig(source="builtin:hybrid-cifar10"))
    pre = Preprocess(info.input_size, info.mean, info.std)
    x = torch.from_numpy(open_image_set(CALIB_DIR, num=256, seed=0).load(pre)[0])
    xe, ye = open_image_set(EVAL_DIR, num=500, seed=0).load(pre)
    return model.eval(), x, torch.from_numpy(xe), np.asarray(ye)


@pytest.fixture(scope="module")
def pruned_everywhere(hybrid):
    """2:4 SparseGPT on every eligible layer of the hybrid (256 calibration images) and its report."""
    model, x, _, _ = hybrid
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        rep = prune(pruned, PruneConfig(nm={"criterion": "sparsegpt"}, images=256), x)
    return pruned, rep


def _top1(model, xe, ye) -> float:
    return 100.0 * float((outputs(model, xe).argmax(1).numpy() == ye).mean())


def test_costs_are_zero_for_equal_outputs_and_bound_the_drop():
    ref = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 2.0], [0.0, 0.0, 1.0]])
    assert disagreement(ref, ref) == 0.0 and kl_cost(ref, ref) == 0.0
    other = ref.clone()
    other[1] = torch.tensor([4.0, 3.0, 1.0])  # one of four images changes its answer
    assert disagreement(other, ref) == 25.0 and kl_cost(other, ref) > 0


def test_gain_follows_the_export_targets():
    recipe = load_recipe("int8_ptq")
    assert sparse_gain(recipe.export)[0] == "macs"  # onnx-int8-tensorrt: TensorRT's sparse kernels
    coreml = load_recipe("int8_ptq", ["export=[export/onnx-fp32.yaml,export/coreml-sparse.yaml]"])
    assert sparse_gain(coreml.export) == ("weights", "CoreML stores the pruned weights sparse")
    joint = load_recipe("int8_ptq", ["export=[export/onnx-fp32.yaml,export/coreml-w8a8-sparse.yaml]"])
    assert sparse_gain(joint.export) == ("weights", "CoreML stores the pruned weights sparse")
    ort = load_recipe("int8_ptq", ["export=[export/onnx-fp32.yaml,export/onnx-int8.yaml]"])
    gain, why = sparse_gain(ort.export)
    assert gain == "weights" and "run the pruned weights dense" in why


def test_a_layer_that_costs_more_than_it_gains_stays_dense():
    """Three layers; the trial weights of the middle one wreck the output: it is left dense, the cheap ones
    are pruned, the model comes back unchanged, and a zero allowance takes only cost-free layers."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    x = torch.randn(256, 8)
    before = {n: m.weight.clone() for n, m in layers}
    trial = {n: m.weight.clone() for n, m in layers}
    trial["0"] = trial["0"] * 0.999  # almost free
    trial["2"] = -trial["2"]  # flips the answers
    trial["4"] = trial["4"].clone()  # exactly free
    gains = layer_macs(model, layers, x)
    assert gains == {"0": 8 * 16, "2": 16 * 16, "4": 16 * 4}
    chosen, records = choose_layers(model, layers, trial, gains, x, max_disagreement=1.0)
    assert chosen == ["0", "4"]
    by = {r["layer"]: r for r in records}
    assert not by["2"]["pruned"] and by["2"]["disagreement_if_pruned"] > 1.0
    assert by["2"]["cost_kl"] > by["0"]["cost_kl"] >= by["4"]["cost_kl"] == 0.0
    assert all(torch.equal(m.weight, before[n]) for n, m in layers)
    chosen0, _ = choose_layers(model, layers, trial, gains, x, max_disagreement=0.0)
    assert "2" not in chosen0 and "4" in chosen0


def test_nm_allocation_keeps_the_hybrid_within_the_allowance(hybrid, pruned_everywhere):
    """2:4 SparseGPT on every eligible layer of the hybrid costs ~14 points on eval images; chosen by gain per
    cost with a 1 % calibration allowance it prunes over half the weights within that allowance, and the
    eval images lose at most a point."""
    model, x, xe, ye = hybrid
    fp32 = _top1(model, xe, ye)
    everything, chosen = pruned_everywhere[0], copy.deepcopy(model)
    with torch.no_grad():
        rep = prune(chosen, PruneConfig(nm={"criterion": "sparsegpt", "max_disagreement": 1.0}, images=256), x,
                    gain=("weights", "CoreML"))
    a = rep["choice"]
    assert a["disagreement"] <= 1.0 == a["max_disagreement"]
    assert disagreement(outputs(chosen, x), outputs(model, x)) == pytest.approx(a["disagreement"], abs=1e-3)
    taken = [r["layer"] for r in a["layers"] if r["pruned"]]
    assert [r["layer"] for r in rep["layers"]] == [n for n in [r["layer"] for r in a["layers"]] if n in taken]
    assert 10 < len(taken) < len(a["layers"]) and a["gain_kept"] > 0.5 * a["gain_total"]
    eligible = {r["layer"] for r in a["layers"]}
    assert all(why.startswith("kept dense") for n, why in rep["skipped"].items() if n in eligible)
    drop_all, drop_chosen = fp32 - _top1(everything, xe, ye), fp32 - _top1(chosen, xe, ye)
    assert drop_all > 5 and drop_chosen <= 1.0, (drop_all, drop_chosen)
    lines = "\n".join(pruning_lines(rep | {"seconds": 1.0}))
    assert f"{len(taken)} of {len(a['layers'])} eligible layers pruned" in lines and "| no |" in lines


def test_reconstruction_recovers_what_one_shot_pruning_lost(hybrid, pruned_everywhere):
    """After 2:4 SparseGPT on every layer, reconstructing each block to the dense block's output (zeros fixed)
    wins back most of the lost top-1 on eval images the reconstruction never saw."""
    model, x, xe, ye = hybrid
    pruned, rep = pruned_everywhere
    with torch.no_grad():
        layers = [r["layer"] for r in rep["layers"]]
        zeros = {n: pruned.get_submodule(n).weight == 0 for n in layers}
        fixed = copy.deepcopy(pruned)
        blocks = reconstruct_pruned(model, fixed, layers, x, iters=200, lr=1e-3)
    assert blocks and all(b["loss_after"] <= b["loss_before"] for b in blocks)
    assert all(bool((fixed.get_submodule(n).weight[zeros[n]] == 0).all()) for n in layers)
    fp32, one_shot, recon = _top1(model, xe, ye), _top1(pruned, xe, ye), _top1(fixed, xe, ye)
    assert recon - one_shot > 0.5 * (fp32 - one_shot) > 2, (fp32, one_shot, recon)


def test_token_stages_are_reduced_only_where_it_pays(hybrid):
    """MobileViT at 32 px: the last stage's 2x2 map saves nothing and is left as is; without an allowance the
    others take the recipe's rate; with one, each stage takes the largest of r, r/2, ... that keeps the
    model within it, or none (ToMe changes answers here); the report lists each rate's saving and cost."""
    model, x, _, _ = hybrid
    one = x[:1]
    chosen, records = choose_stages(model, TokenConfig(method="tome", r=4), one, x)
    by = {r["stage"]: r for r in records}
    assert set(by) == {"stages.2.1.transformer", "stages.3.1.transformer", "stages.4.1.transformer"}
    assert not by["stages.4.1.transformer"]["reduced"] and by["stages.4.1.transformer"]["flop_saving"] < 0.01
    assert chosen == {n: 4 for n, r in by.items() if r["reduced"]} and len(chosen) == 2
    assert all(r["flop_saving"] >= 0.01 and r["disagreement_alone"] > 0 for r in records if r["reduced"])
    none, strict = choose_stages(model, TokenConfig(method="tome", r=4, max_disagreement=0.0), one, x)
    assert none == {} and all("allowed 0 %" in r["why"] or "FLOPs" in r["why"] for r in strict)
    tried = {r["stage"]: [o["r"] for o in r["options"]] for r in strict}
    assert tried["stages.2.1.transformer"] == [4, 2, 1]
    loose, _ = choose_stages(model, TokenConfig(method="tome", r=4, max_disagreement=100.0), one, x)
    assert loose == chosen  # everything allowed: the recipe's rate
    s21 = {o["r"]: o for o in next(r for r in strict if r["stage"] == "stages.2.1.transformer")["options"]}
    s31 = next(r for r in strict if r["stage"] == "stages.3.1.transformer")["options"]
    between = (s21[2]["disagreement_alone"] + s21[4]["disagreement_alone"]) / 2
    assert s21[2]["disagreement_alone"] < between < min(o["disagreement_alone"] for o in s31)
    mid, _ = choose_stages(model, TokenConfig(method="tome", r=4, max_disagreement=between), one, x)
    assert mid == {"stages.2.1.transformer": 2}  # r=4 costs too much, r=1 saves < 1 %; stage 3 fits no rate
    every, _ = choose_stages(model, TokenConfig(method="tome", r=4, min_saving=None), one, None)
    assert len(every) == 3
    lines = "\n".join(token_lines({"method": "tome", "stages": [], "choice": strict, "warning": "nothing pays"}))
    assert "| `stages.4.1.transformer` | 4: 0.0 % / 0.00 %" in lines and "not applied:** nothing pays" in lines


def test_token_stages_are_kept_only_where_they_save_time(hybrid):
    """With measured times (injected here): a stage whose reduction alone saves less than min_time_saving of
    the unreduced model's time is left unreduced; the ones left must save it together too; time_at chooses
    batch 1, throughput or either."""
    model, x, _, _ = hybrid
    cfg = TokenConfig(method="tome", r=4)
    picks, records = choose_stages(model, cfg, x[:1], x)
    a, b = picks  # MobileViT's stages 2 and 3 at 32 px
    calls = []

    def timer_of(table):
        def timer(models, sample):
            calls.append(sorted(models))
            assert all(isinstance(m, nn.Module) for m in models.values()) and sample.shape[0] == 1
            return {k: dict(zip(("batch1", "throughput"), table[k])) for k in models}
        return timer

    # b saves time only in throughput; a saves nothing; together with a dropped, b is timed alone already
    table = {UNREDUCED: (10.0, 100.0), a: (9.9, 99.0), b: (10.2, 90.0), TOGETHER: (10.1, 89.0)}
    kept, timing = keep_stages_that_pay(model, cfg, dict(picks), copy.deepcopy(records), timer_of(table),
                                        x[:1].numpy())
    assert kept == {b: 4} and timing["time_saving"] == {"batch1": -0.02, "throughput": 0.1}
    assert calls == [sorted([UNREDUCED, a, b, TOGETHER])]
    only_b1 = cfg.model_copy(update={"time_at": "batch1"})
    recs = copy.deepcopy(records)
    kept, timing = keep_stages_that_pay(model, only_b1, dict(picks), recs, timer_of(table), x[:1].numpy())
    assert kept == {} and "time_saving" not in timing
    why = {r["stage"]: r["why"] for r in recs}
    assert why[b] == ("reduced alone it adds 2.0 % at batch 1, saves 10.0 % in throughput of the unreduced "
                      "model's time (needs to save 3 %)")
    assert all(not r["reduced"] and "r_chosen" not in r for r in recs)
    # each pays alone, together they do not: neither is applied
    table = {UNREDUCED: (10.0, 100.0), a: (9.0, 90.0), b: (9.5, 95.0), TOGETHER: (9.8, 98.0)}
    recs = copy.deepcopy(records)
    kept, timing = keep_stages_that_pay(model, cfg, dict(picks), recs, timer_of(table), x[:1].numpy())
    assert kept == {} and timing["time_saving"] == {"batch1": 0.02, "throughput": 0.02}
    assert all(r["why"].startswith("the reduced stages together: saves 2.0 % at batch 1") for r in recs
               if r["stage"] in picks)
    lines = "\n".join(token_lines({"method": "tome", "stages": [], "choice": recs, "warning": "nothing pays",
                                   "timing": timing | {"where": "local-ort-cpu"}}))
    assert "| 10.0 % / 10.0 % | no: the reduced stages together" in lines
    assert "on local-ort-cpu: unreduced 10.000 ms / 100.00 ms, with the stages reduced 9.800 ms / 98.00 ms" in lines


def test_hybrid_full_recipe_chains_every_stage_within_its_budget(tmp_path):
    """The capstone recipe on the built-in hybrid: the planner prunes some layers and leaves others dense,
    reconstruction runs, no attention stage pays for ToMe at 32 px (said in the report), W8A8 with AdaLog,
    every exporter writes its artifact (CoreML W8A8 with sparse int8 weights), every deployed artifact is
    within the 1-point budget, and the report opens with the per-stage table."""
    out = tmp_path / "full"
    # 128 of the recipe's 256 pruning images: 44 of 60 layers pruned either way here, 11 s less in pruning
    proc = cli("compress", "--recipe", "hybrid_full", "--out", str(out), "--set", "quantize.placement=all",
               "--set", "prune.reconstruct.iters=100", "--set", "prune.images=128",
               "--set", "validate.devices.0.iters=5", "--set", "validate.devices.0.warmup=1",
               "--set", "validate.devices.0.throughput_batch=4")
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    rep = json.loads((out / "report.json").read_text())
    speed_only_failures(rep)  # placement: all ships all-INT8, which may time slower than FP32 here
    choice = rep["pruning"]["choice"]
    assert 0 < len(rep["pruning"]["layers"]) < len(choice["layers"])
    assert choice["disagreement"] <= choice["max_disagreement"]
    assert rep["pruning"]["reconstruction"]["blocks"]
    assert rep["tokens"]["stages"] == [] and not any(c["reduced"] for c in rep["tokens"]["choice"])
    names = {r["name"] for r in rep["results"]}
    assert {"onnx-fp32", "onnx-int8", "onnx-int8-tensorrt", "coreml-w8a8-sparse", "coreml-sparse"} <= names
    budget = [c for c in rep["checks"] if c.get("kind") == "budget"]
    assert len(budget) >= 4 and all(c["ok"] for c in budget)
    assert any(c["ok"] and "weights stored w8-sparse" in c["name"] for c in rep["checks"])
    md = (out / "report.md").read_text()
    assert md.index("## What each stage cost and saved") < md.index("## Accuracy budget") < md.index("## Artifacts")
    assert "| + token reduction | not applied:" in md
    # where this CPU's int8 kernels saturate on 8-bit weights, the ONNX Runtime file alone takes 7-bit ones (its
    # own simulation); the TensorRT graph and the CoreML packages keep the 8-bit codes
    seven = int8_dot_saturates()
    by = {r["name"]: r for r in rep["results"]}
    assert by["onnx-int8"]["simulated_by"].endswith("-w7") == seven
    assert not any(by[n]["simulated_by"].endswith("-w7") for n in ("onnx-int8-tensorrt", "coreml-w8a8-sparse"))
    assert next(c for c in rep["checks"] if c["name"].startswith("onnx-int8: deployed model agrees"))["ok"]
    top = {n: max(int(np.abs(numpy_helper.to_array(t)).max()) for t in onnx.load(out / f"{n}.onnx").graph.initializer
                  if t.data_type == onnx.TensorProto.INT8) for n in ("onnx-int8", "onnx-int8-tensorrt")}
    assert top == {"onnx-int8": 63 if seven else 127, "onnx-int8-tensorrt": 127}


def test_settings_errors_name_the_key():
    from edgevit.errors import BadInput

    with pytest.raises(BadInput, match=r"prune.*reconstruct applies to nm and block pruning"):
        load_recipe("structured_prune", ["prune.reconstruct={iters: 10}"])
    with pytest.raises(BadInput, match=r"prune.nm.max_disagreement"):
        load_recipe("sparse24_int8", ["prune.nm.max_disagreement=-1"])
    with pytest.raises(BadInput, match=r"tokens.min_saving"):
        load_recipe("tome_int8", ["tokens.min_saving=1.5"])
    with pytest.raises(BadInput, match=r"tokens.min_time_saving"):
        load_recipe("tome_int8", ["tokens.min_time_saving=-0.1"])
    with pytest.raises(BadInput, match=r"tokens.time_at"):
        load_recipe("tome_int8", ["tokens.time_at=b32"])
