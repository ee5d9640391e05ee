"""TensorRT: the build-log parser (here), and on a machine with an NVIDIA GPU and TensorRT the real
engine path: a 2:4-sparse INT8 QDQ model built with FP16/INT8/sparse-weights flags, run and timed."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from conftest import CALIB_DIR, cli
from edgevit.data import Preprocess, open_image_set
from edgevit.exporters.onnx import export_onnx
from edgevit.exporters.tensorrt import sparsity_from_log, trtexec_command, unavailable
from edgevit.models import load_model
from edgevit.prune import PruneConfig, prune
from edgevit.quant import QuantConfig, apply_plan, quantize
from edgevit.quant.lowering import lower_plan
from edgevit.recipe import ExportConfig, ModelConfig
from edgevit.validate import OrtRunner


def test_sparsity_read_from_the_build_log():
    lines = ["[TRT] Detected 1 inputs and 1 output network tensors.",
             "(Sparsity) Layers eligible for sparse math: Conv_22, MatMul_51 + Add_52, Gemm_725",
             "(Sparsity) TRT inference plan picked sparse implementation for layers: Conv_22",
             "(Sparsity) Layers eligible for sparse math: ",
             ]
    assert sparsity_from_log(lines) == {"eligible": ["Conv_22", "MatMul_51 + Add_52", "Gemm_725"],
                                        "picked": ["Conv_22"]}
    assert sparsity_from_log(["nothing about sparsity"]) == {"eligible": [], "picked": []}


def test_trtexec_line_builds_the_same_engine():
    line = trtexec_command("onnx-int8-tensorrt.onnx", "int8", sparse=True, input_size=32)
    assert line.startswith("trtexec --onnx=onnx-int8-tensorrt.onnx --saveEngine=onnx-int8-tensorrt.engine")
    for flag in ("--fp16", "--int8", "--sparsity=enable", "--minShapes=input:1x3x32x32", "--maxShapes=input:32x3x32x32"):
        assert flag in line
    assert "--int8" not in trtexec_command("m.onnx", "fp16") and "--fp16" not in trtexec_command("m.onnx", "fp32")


@pytest.mark.skipif(unavailable() is None, reason="this machine can build engines")
def test_engine_export_without_gpu_fails_clearly_and_leaves_nothing(tmp_path):
    out = tmp_path / "run"
    res = cli("compress", "--recipe", "recipes/fp32_export.yaml", "--out", str(out),
              "--set", "export=[export/tensorrt-fp16.yaml]", "--set", "validate.eval=null")
    assert res.returncode == 2
    assert "export tensorrt-fp16" in res.stderr and "trtexec" in res.stderr
    assert list(tmp_path.iterdir()) == []  # no run folder, no staging folder


@pytest.mark.skipif(unavailable() is not None, reason=f"TensorRT engine tests need a GPU: {unavailable()}")
def test_sparse_int8_engine_builds_runs_and_agrees(tmp_path):
    from edgevit.exporters.tensorrt import EngineRunner, build_engine, time_engine

    model, info = load_model(ModelConfig(source="builtin:vit-cifar10"))
    x, _ = open_image_set(CALIB_DIR, num=64, seed=0).load(Preprocess(info.input_size, info.mean, info.std))
    sparse = copy.deepcopy(model)
    prune(sparse, PruneConfig(nm={"criterion": "sparsegpt"}, images=64), torch.from_numpy(x))
    _, plan = quantize(sparse, QuantConfig(), [torch.from_numpy(x)])
    qm = apply_plan(sparse, lower_plan(plan, "tensorrt", "uniform"))
    onnx_path = tmp_path / "int8-trt.onnx"
    export_onnx(qm, info, ExportConfig(precision="int8", target="tensorrt"), onnx_path, "test")
    fp32_path = tmp_path / "fp32.onnx"
    export_onnx(sparse, info, ExportConfig(precision="fp32"), fp32_path, "test")
    facts = {}
    for precision, src, flag in (("fp16", fp32_path, False), ("int8", onnx_path, True)):
        engine = tmp_path / f"{precision}.engine"
        facts[precision] = build_engine(src, engine, precision, sparse=flag, layernorm_fp32=True)
        assert engine.stat().st_size > 0 and (tmp_path / f"{precision}.timing.cache").stat().st_size > 0
    assert facts["int8"]["sparsity"] is not None and facts["fp16"]["sparsity"] is None
    # TensorRT must see the 2:4 layers (which it then runs sparse is its own timing choice)
    assert facts["int8"]["sparsity"]["eligible"], facts["int8"]["sparsity"]
    for f in facts.values():  # 13 LayerNorms pinned to FP32; the inspector saw every layer's precision
        assert len(f["layernorm_fp32"]) == 13 and f["layers"]["layers"] > 0
        assert "unknown" not in f["layers"]["by_input_precision"]
    assert facts["int8"]["layers"]["by_input_precision"].get("int8", 0) > 0
    rebuilt = build_engine(fp32_path, tmp_path / "fp16.engine", "fp16", layernorm_fp32=True)  # warm timing cache
    assert rebuilt["build_s"] <= facts["fp16"]["build_s"] + 1
    out = EngineRunner(tmp_path / "int8.engine")(x[:16])
    ref = OrtRunner(onnx_path, 2)(x[:16])
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.99  # the product's deployed-vs-simulation check
    lat = time_engine(tmp_path / "int8.engine", (1, 3, info.input_size, info.input_size), iters=50)
    assert lat["median_ms"] > 0 and np.isfinite(lat["p90_ms"])


def test_engine_inspector_report_flags_fallbacks_and_sparse_tactics():
    """The inspector JSON (DETAILED verbosity, formats as TensorRT writes them): precisions counted per
    layer, math layers outside the build precision flagged unless pinned on purpose, sparse tactics."""
    from edgevit.exporters.tensorrt import layer_report

    def layer(name, kind, fmt, tactic=""):
        return {"Name": name, "LayerType": kind, "Inputs": [{"Format/Datatype": fmt}],
                "Outputs": [{"Format/Datatype": fmt}], "TacticName": tactic}

    info = {"Layers": [
        layer("Reformatting CopyNode for Input Tensor 0", "Reformat", "Row major linear FP32 format"),
        layer("/patch_embed/proj/Conv", "CaskConvolution", "Thirty-two wide channel vectorized row major Int8 format.",
              "sm80_xmma_fprop_sparse_conv_interleaved_i8i8_i8i32_f32"),
        layer("/blocks.0/attn/qkv/MatMul", "CaskGemmConvolution", "Row major linear FP16 format", "sm80_xmma_gemm_f16"),
        layer("/blocks.0/norm1/LayerNormalization", "Normalization", "Row major linear FP32 format"),
        layer("/head/Gemm", "CaskGemmConvolution", "Row major linear Int8 format", "sm80_xmma_gemm_i8"),
    ]}
    rep = layer_report(info, "int8", fp32_layers=["/blocks.0/norm1/LayerNormalization"])
    assert rep["layers"] == 5 and rep["by_input_precision"] == {"int8": 2, "fp16": 1, "fp32": 1}
    assert rep["fell_back"] == ["/blocks.0/attn/qkv/MatMul (fp16)"]
    assert rep["sparse_tactics"] == ["/patch_embed/proj/Conv"]
    assert layer_report(info, "fp16")["fell_back"] == []  # int8 inputs in an fp16 build are not a fallback
    assert layer_report({"Layers": ["a", "b"]}, "int8")["layers"] == 2  # names-only verbosity


def test_trtexec_line_pins_layernorms_and_keeps_a_timing_cache():
    line = trtexec_command("m.onnx", "fp16", fp32_layers=["/norm1/LN", "/norm2/LN"])
    assert "--timingCacheFile=m.timing.cache" in line and "--precisionConstraints=obey" in line
    assert "--layerPrecisions=/norm1/LN:fp32,/norm2/LN:fp32" in line
    assert "--layerOutputTypes=/norm1/LN:fp32,/norm2/LN:fp32" in line
    assert "--precisionConstraints" not in trtexec_command("m.onnx", "fp32", fp32_layers=["/norm1/LN"])


def test_jetson_recipe_writes_onnx_and_trtexec_lines(tmp_path):
    """recipes/tensorrt_jetson.yaml on a machine without a GPU: the FP32 graph with the line for an FP16
    engine, the QDQ graph (TensorRT's rules followed) with the line for an INT8 engine."""
    import json

    out = tmp_path / "run"
    res = cli("compress", "--recipe", "recipes/tensorrt_jetson.yaml", "--out", str(out), "--set",
              "calibration.num=64", "--set", "validate.eval.num=100", "--set", "validate.devices=[]",
              "--set", "budget.max_accuracy_drop=5")  # 100 images: one is a point; the budget is not the subject
    assert res.returncode == 0, res.stderr
    rep = json.loads((out / "report.json").read_text())
    rows = {r["name"]: r for r in rep["results"]}
    fp32, int8 = rows["onnx-fp32-tensorrt"]["export"], rows["onnx-int8-tensorrt"]["export"]
    assert "--fp16" in fp32["trtexec"] and "--int8" not in fp32["trtexec"]
    assert "--fp16 --int8" in int8["trtexec"] and int8["tensorrt_problems"] == []
    assert rows["onnx-fp32-tensorrt"]["precision"] == "fp32" and (out / "onnx-fp32-tensorrt.onnx").is_file()
    assert rep["fp16_layernorm"]["auto"]["layernorms"] == 21 and "--layerPrecisions" not in fp32["trtexec"]
    assert rows["onnx-int8-tensorrt"]["accuracy"]["agreement_with_simulation"] >= 0.98


@pytest.mark.parametrize("name", ["mobilevit_xxs", "efficientformerv2_s0", "levit_128s", "efficientvit_m0"])
def test_tensorrt_lowering_is_per_tensor_on_the_hybrids(name, tmp_path):
    """Every hybrid's QDQ graph lowered for TensorRT follows its rules: weights the simplifier turned into
    constants only after the first weight fold (mobilevit_xxs, efficientvit_m0) are folded too, so no
    weight is left behind a per-channel QuantizeLinear that reads as a per-channel activation."""
    import onnx
    import timm

    from edgevit.exporters.qdq import tensorrt_qdq_problems

    torch.manual_seed(0)
    size = 64
    kw = {"img_size": size} if name != "mobilevit_xxs" else {}
    model = timm.create_model(name, pretrained=False, num_classes=10, **kw).eval()
    _, plan = quantize(model, QuantConfig(), [torch.randn(8, 3, size, size)])
    info = type("Info", (), {"input_size": size, "labels": [str(i) for i in range(10)], "mean": (0.5,) * 3,
                             "std": (0.5,) * 3, "crop_pct": 1.0, "interpolation": "bilinear", "source": name,
                             "arch": name})
    path = tmp_path / "trt.onnx"
    export_onnx(apply_plan(model, lower_plan(plan, "tensorrt")), info,
                ExportConfig(precision="int8", target="tensorrt"), path, "test")
    assert tensorrt_qdq_problems(onnx.load(str(path))) == []


def _qdq_graph(scale, zero_point, weight=None):
    """input -> Q -> DQ (an activation, or a weight initializer through DQ) -> Add -> output."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.asarray(scale, np.float32), "s"),
             numpy_helper.from_array(np.asarray(zero_point), "z")]
    if weight is None:
        nodes = [helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q"], name="act_q", axis=1),
                 helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"], name="act_dq", axis=1)]
    else:
        inits.append(numpy_helper.from_array(np.asarray(weight), "w"))
        nodes = [helper.make_node("DequantizeLinear", ["w", "s", "z"], ["dq"], name="w_dq", axis=1)]
    nodes.append(helper.make_node("Add", ["input", "dq"], ["out"]))
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2]) for n in ("input", "out")]
    return helper.make_model(helper.make_graph(nodes, "g", vi[:1], vi[1:], inits))


@pytest.mark.parametrize("scale, zp, weight, problem", [
    (0.1, np.int8(0), None, None),
    ([0.1, 0.2], np.array([0, 0], np.int8), None, "per-channel quantization of an activation"),
    (0.0, np.int8(0), None, "scale <= 0"),
    (-0.1, np.int8(0), None, "scale <= 0"),
    (0.1, np.uint8(0), None, "zero point type uint8"),
    (0.1, np.int8(3), None, "nonzero zero point"),
    ([0.1, 0.2], np.array([0, 0], np.int8), np.array([[1, -128]], np.int8), "weight code -128"),
    ([0.1, 0.2], np.array([0, 0], np.int8), np.array([[1, -127]], np.int8), None),  # per channel: fine for weights
], ids=["ok", "per-channel-activation", "zero-scale", "negative-scale", "uint8", "zero-point", "weight-128", "weight-ok"])
def test_tensorrt_rules_name_each_violation(scale, zp, weight, problem):
    """Each of TensorRT's explicit-quantization rules is checked on a graph that breaks only that one."""
    from edgevit.exporters.qdq import tensorrt_qdq_problems

    problems = tensorrt_qdq_problems(_qdq_graph(scale, zp, weight))
    if problem is None:
        assert problems == []
    else:
        assert len(problems) >= 1 and all(problem in p for p in problems), problems
