"""INT8 PTQ end to end: sites, QDQ graph rules, simulated vs deployed agreement, recipe errors."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from conftest import CALIB_DIR, EVAL_DIR, cli, deployable_weights
from edgevit.data import Preprocess, open_image_set
from edgevit.errors import BadInput
from edgevit.exporters.onnx import export_onnx, read_metadata
from edgevit.models import load_model
from edgevit.quant import QuantConfig, apply_plan, quantize
from edgevit.quant.plan import prepare
from edgevit.quant.sites import QuantAttention, QuantConv2d, QuantLinear, weighted_sites
from edgevit.recipe import ExportConfig, ModelConfig, build_recipe
from edgevit.validate import OrtRunner, TorchRunner
from edgevit.validate.accuracy import compare_logits


WEIGHTS = deployable_weights()  # the deployed file computes what was simulated on every CPU


@pytest.fixture(scope="module", params=["hybrid-cifar10", "vit-cifar10"])
def quantized(request):
    model, info = load_model(ModelConfig(source=f"builtin:{request.param}"))
    pre = Preprocess(info.input_size, info.mean, info.std)
    calib = open_image_set(CALIB_DIR, num=128, seed=0)
    batches = [torch.from_numpy(x) for x, _ in calib.batches(pre, 64)]
    qmodel, plan = quantize(model, QuantConfig(weights=WEIGHTS), batches)
    x_eval, _ = open_image_set(EVAL_DIR, num=300, seed=0).load(pre)
    return model, info, qmodel, plan, x_eval


def test_sites_cover_every_linear_conv_and_attention(quantized):
    model, _, qmodel, plan, _ = quantized
    n_lin = sum(isinstance(m, nn.Linear) for m in model.modules())
    n_conv = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    n_attn = sum(type(m).__name__ == "Attention" for m in model.modules())
    assert sum(isinstance(m, QuantLinear) for m in qmodel.modules()) == n_lin
    assert sum(isinstance(m, QuantConv2d) for m in qmodel.modules()) == n_conv
    assert sum(isinstance(m, QuantAttention) for m in qmodel.modules()) == n_attn > 0
    kinds = plan.counts()
    assert kinds["attn_softmax"] == n_attn and kinds["weight_tensors"] == n_lin + n_conv
    assert not plan.unobserved
    assert not any(isinstance(m, nn.BatchNorm2d) for m in qmodel.modules())


def test_qdq_graph_follows_explicit_quantization_rules(quantized, tmp_path):
    model, info, qmodel, _, _ = quantized
    p8, p32 = tmp_path / "int8.onnx", tmp_path / "fp32.onnx"
    facts = export_onnx(qmodel, info, ExportConfig(precision="int8"), p8, "unit")
    export_onnx(model, info, ExportConfig(), p32, "unit")
    g = onnx.load(str(p8)).graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    compute = [n for n in g.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    assert compute
    weights_checked = 0
    for n in compute:
        for i in n.input[:2]:
            dq = producer.get(i)
            assert dq is not None and dq.op_type == "DequantizeLinear", f"{n.name} input {i} is not dequantized"
            if dq.input[0] in inits:  # a weight: int8 codes, zero point 0 (left out: ONNX's default)
                t = inits[dq.input[0]]
                assert t.data_type == onnx.TensorProto.INT8 and len(dq.input) == 2
                weights_checked += 1
    assert weights_checked == facts["int8_weight_tensors"] > 0
    assert p8.stat().st_size <= 0.4 * p32.stat().st_size
    assert read_metadata(p8)["precision"] == "int8" and json.loads(read_metadata(p8)["labels"]) == info.labels
    assert facts["ort_int8"]["int8_nodes"] >= facts["ops"].get("MatMul", 0) // 2
    # each GELU is the one op ONNX Runtime runs it as (hybrid: SiLU, none)
    n_gelu = sum(isinstance(m, nn.GELU) for m in model.modules())
    assert facts["gelu_fused"] == facts["ops"].get("Gelu", 0) == n_gelu and "Erf" not in facts["ops"]


def test_deployed_int8_agrees_with_simulation(quantized, tmp_path):
    _, info, qmodel, _, x = quantized
    path = tmp_path / "int8.onnx"
    export_onnx(qmodel, info, ExportConfig(precision="int8"), path, "unit")
    sim = TorchRunner(qmodel)(x)
    dep = OrtRunner(path, threads=1)(x)
    assert (sim.argmax(1) == dep.argmax(1)).mean() >= 0.99
    cos = (sim * dep).sum(1) / (np.linalg.norm(sim, axis=1) * np.linalg.norm(dep, axis=1))
    assert cos.mean() > 0.999


def test_simulation_stays_close_to_fp32(quantized):
    model, _, qmodel, _, x = quantized
    ref, sim = TorchRunner(model)(x), TorchRunner(qmodel)(x)
    assert (ref.argmax(1) == sim.argmax(1)).mean() >= 0.95


def test_int8_export_needs_8_bits_and_a_quantize_section():
    base = {"name": "x", "calibration": {"path": str(CALIB_DIR)}, "export": [{"precision": "int8"}]}
    with pytest.raises(BadInput, match="quantize.activations.bits: 4-bit"):
        build_recipe(base | {"quantize": {"activations": {"bits": 4}}})
    with pytest.raises(BadInput, match="needs a quantize"):
        build_recipe(base)
    with pytest.raises(BadInput, match="needs a calibration"):
        build_recipe({"name": "x", "quantize": {}})
    with pytest.raises(BadInput, match="quantize.weights.granularity"):
        build_recipe(base | {"quantize": {"weights": {"granularity": "row"}}})


def test_int8_recipe_end_to_end(tmp_path):
    out = tmp_path / "int8"
    res = cli("compress", "--recipe", "recipes/int8_ptq.yaml", "--out", str(out),
              "--set", "validate.devices.0.iters=5", "--set", "validate.devices.0.warmup=1",
              "--set", "validate.devices.0.throughput_batch=8", "--set", "quantize.placement=all",
              "--set", "validate.devices=[]")  # every quantizer, not timed: what the INT8 graph holds
    assert res.returncode == 0, res.stderr
    rep = json.loads((out / "report.json").read_text())
    rows = {r["name"]: r for r in rep["results"]}
    assert set(rows) == {"pytorch-fp32", "pytorch-int8-sim", "pytorch-int8-sim-tensorrt", "onnx-fp32", "onnx-int8",
                         "onnx-int8-tensorrt"}
    assert rows["onnx-int8-tensorrt"]["export"]["tensorrt_problems"] == []
    assert rows["onnx-int8-tensorrt"]["accuracy"]["agreement_with_simulation"] >= 0.99
    assert rows["onnx-int8"]["accuracy"]["agreement_with_simulation"] >= 0.99
    assert abs(rows["onnx-int8"]["accuracy"]["delta_top1"]) <= 0.01  # the recipe's budget: 1 point
    assert rows["onnx-int8"]["export"]["ort_int8"]["int8_nodes"] > 0
    assert rows["onnx-int8"]["size_bytes"] < 0.4 * rows["onnx-fp32"]["size_bytes"]
    plan = json.loads((out / "plan.json").read_text())
    assert plan["activations"] and all(len(v["scale"]) >= 1 for v in plan["weights"].values())
    md = (out / "report.md").read_text()
    assert "compute nodes in INT8" in md and "| pytorch-int8-sim |" in md


def test_unreadable_calibration_images_fail_clearly(tmp_path):
    bad = tmp_path / "calib"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"not an image")
    res = cli("compress", "--recipe", "recipes/int8_ptq.yaml", "--calib", str(bad), "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "calibration" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "o").exists()


def test_conv_output_mode_runs_the_conv_trunk_in_int8(tmp_path):
    model, info = load_model(ModelConfig(source="builtin:hybrid-cifar10"))
    pre = Preprocess(info.input_size, info.mean, info.std)
    calib = [torch.from_numpy(x) for x, _ in open_image_set(CALIB_DIR, num=128, seed=0).batches(pre, 64)]
    qmodel, plan = quantize(model, QuantConfig(conv_output=True, weights=WEIGHTS), calib)
    counts = plan.counts()
    assert counts["conv_output"] > 0 and counts["sigmoid_output"] > 0
    path = tmp_path / "int8.onnx"
    facts = export_onnx(qmodel, info, ExportConfig(precision="int8"), path, "unit")
    ops = facts["ort_int8"]["int8_ops"]
    assert ops.get("QLinearConv", 0) == counts["conv_output"]
    x, _ = open_image_set(EVAL_DIR, num=1000, seed=0).load(pre)  # (300: 2 flips with 7-bit weights, 99.3 %)
    sim, dep = TorchRunner(qmodel)(x), OrtRunner(path, threads=1)(x)
    # the simulation adds each conv bias on its int32 grid, as ONNX Runtime does: deployed == simulated
    assert (sim.argmax(1) == dep.argmax(1)).mean() >= 0.995 and compare_logits(dep, sim)["sqnr_db"] >= 35
    assert (TorchRunner(model)(x).argmax(1) == sim.argmax(1)).mean() >= 0.9
    float_bias = apply_plan(model, plan)
    for mod in weighted_sites(float_bias):  # put the float biases back: the simulation misses ORT by ~10 dB
        if isinstance(mod.inner, nn.Conv2d) and mod.inner.bias is not None:
            mod.inner.bias.data.copy_(dict(prepare(model, plan.config, plan.reparam)[0].named_parameters())[
                f"{mod.site}.inner.bias"])
    assert compare_logits(dep, TorchRunner(float_bias)(x))["sqnr_db"] < 33


def test_tensorrt_lowering_and_rule_checker(quantized, tmp_path):
    from edgevit.exporters.qdq import tensorrt_qdq_problems
    from edgevit.quant import apply_plan
    from edgevit.quant.lowering import lower_plan

    model, info, qmodel, plan, _ = quantized
    ort_path, trt_path = tmp_path / "ort.onnx", tmp_path / "trt.onnx"
    ort_facts = export_onnx(qmodel, info, ExportConfig(precision="int8"), ort_path, "unit")
    trt_model = apply_plan(model, lower_plan(plan, "tensorrt"))
    trt_facts = export_onnx(trt_model, info, ExportConfig(precision="int8", target="tensorrt"), trt_path, "unit")
    assert any("uint8" in p for p in ort_facts["tensorrt_problems"])
    assert trt_facts["tensorrt_problems"] == []
    proto = onnx.load(str(trt_path))
    # break the rules on purpose: a nonzero zero point and a -128 weight code
    dq = next(n for n in proto.graph.node if n.op_type == "DequantizeLinear"
              and n.input[0] in {t.name for t in proto.graph.initializer})
    w = next(t for t in proto.graph.initializer if t.name == dq.input[0])
    arr = numpy_helper.to_array(w).copy()
    arr.flat[0] = -128
    w.CopyFrom(numpy_helper.from_array(arr, w.name))
    problems = tensorrt_qdq_problems(proto)
    assert any("-128" in p for p in problems)
    q = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear")
    bad_zp = numpy_helper.from_array(np.array(3, dtype=np.int8), q.input[2])
    holder = next((t for t in proto.graph.initializer if t.name == q.input[2]), None)
    if holder is not None:
        holder.CopyFrom(bad_zp)
    else:  # a Constant node
        const = next(n for n in proto.graph.node if n.op_type == "Constant" and n.output[0] == q.input[2])
        const.attribute[0].t.CopyFrom(bad_zp)
    assert any("nonzero zero point" in p for p in tensorrt_qdq_problems(proto))
