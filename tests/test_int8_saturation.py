"""x86 CPUs without VNNI add each pair of uint8 x int8 products in 16 bits, which saturates: what edgevit
detects, and what it does about it (exact stand-in for TensorRT files, 7-bit weights, refusals)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgevit.validate.latency import int8_dot_saturates

K = 64  # products per output: 32 pairs, each 255 x w x 2
OUT_SCALE = 16384.0  # a power of two, and no sum here lands on a rounding tie


def _matmul_graph(path, weight: int, target: str | None = None) -> float:
    """A QDQ MatMul of uint8 activations (all 255) with int8 weights (all ``weight``), scales 1: ONNX Runtime
    fuses it into its integer kernel. Returns the exact output."""
    w = np.full((K, 1), weight, np.int8)
    nodes = [helper.make_node("QuantizeLinear", ["x", "one", "zu"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "one", "zu"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "one", "zs"], ["wd"]),
             helper.make_node("MatMul", ["xd", "wd"], ["y"]),
             helper.make_node("QuantizeLinear", ["y", "out_scale", "zu"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "out_scale", "zu"], ["out"])]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(0, np.uint8), "zu"), numpy_helper.from_array(np.array(0, np.int8), "zs"),
             numpy_helper.from_array(np.array(OUT_SCALE, np.float32), "out_scale")]
    g = helper.make_graph(nodes, "sat", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, K])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    if target:
        m.metadata_props.add(key="target", value=target)
    onnx.save(m, str(path))
    return float(np.round(K * 255 * weight / OUT_SCALE) * OUT_SCALE)


@pytest.mark.parametrize("weight", [127, 63])
def test_onnx_runtime_saturates_where_int8_dot_saturates_says(tmp_path, weight):
    from edgevit.validate.runners import OrtRunner

    exact = _matmul_graph(tmp_path / "m.onnx", weight)
    x = np.full((1, K), 255.0, np.float32)
    fused = float(OrtRunner(tmp_path / "m.onnx", 1)(x)[0, 0])
    unfused = OrtRunner(tmp_path / "m.onnx", 1, exact_integers=True)
    assert unfused.exact_integers and float(unfused(x)[0, 0]) == exact
    if weight == 63:  # 7-bit weights: 2 x 255 x 63 = 32,130 fits in 16 bits, on every CPU
        assert fused == exact
    else:  # the pairs of 255 x 127 clip at 32,767 where the CPU has no VNNI, nowhere else
        assert (fused != exact) == int8_dot_saturates(), (fused, exact)
        if int8_dot_saturates():
            assert fused < 0.6 * exact


def test_int8_dot_saturates_reads_the_cpu_flags():
    assert int8_dot_saturates({"model": "x", "flags": ["avx2"]}, "x86_64")
    assert int8_dot_saturates({"model": "x", "flags": ["avx2", "avx512f"]}, "AMD64")
    assert not int8_dot_saturates({"model": "x", "flags": ["avx2", "avx512f", "avx512_vnni"]}, "x86_64")
    assert not int8_dot_saturates({"model": "x", "flags": ["avx2", "avx_vnni"]}, "x86_64")
    assert not int8_dot_saturates({"model": None, "flags": []}, "x86_64")  # the OS does not say
    assert not int8_dot_saturates({"model": "x", "flags": ["avx2"]}, "aarch64")


@pytest.mark.parametrize("target", ["tensorrt", "onnxruntime"])
def test_a_tensorrt_graph_is_checked_without_saturating_kernels(tmp_path, target):
    """ONNX Runtime stands in for TensorRT here; TensorRT adds int8 products in 32 bits, so on a CPU whose
    kernels saturate the stand-in runs without them. A graph for ONNX Runtime itself runs as deployed."""
    from edgevit.runtimes import RUNTIMES

    exact = _matmul_graph(tmp_path / "m.onnx", 127, target)
    runner = RUNTIMES["onnxruntime"].local_runner(tmp_path / "m.onnx", None)
    assert runner.exact_integers == (target == "tensorrt" and int8_dot_saturates())
    out = float(runner(np.full((1, K), 255.0, np.float32))[0, 0])
    assert (out == exact) == (target == "tensorrt" or not int8_dot_saturates())


def test_seven_bit_weights_go_into_int8_files(tmp_path):
    """quantize.weights.bits: 7 is accepted for the integer runtimes (int8 codes in -63..63) and its file holds
    no weight code outside them; other widths below 8 still need lowering: exact; CoreML refuses 7 too."""
    import torch

    from edgevit.errors import BadInput
    from edgevit.quant import QuantConfig, quantize
    from edgevit.quant.lowering import lower_plan
    from edgevit.recipe import build_recipe

    from conftest import CALIB_DIR

    base = {"name": "x", "calibration": {"path": str(CALIB_DIR)}, "quantize": {"weights": {"bits": 7}}}
    for export in ({"precision": "int8"}, {"precision": "int8", "target": "tensorrt"},
                   {"format": "openvino", "precision": "int8"}):
        assert build_recipe(base | {"export": [export]}).quantize.weights.bits == 7
    with pytest.raises(BadInput, match="quantize.weights.bits: 7-bit"):
        build_recipe(base | {"export": [{"format": "coreml", "precision": "int8", "compression": "w8"}]})
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    qmodel, plan = quantize(model, QuantConfig(weights={"bits": 7}), [torch.randn(64, 8)])
    assert lower_plan(plan, "onnxruntime", "uniform") is plan
    assert lower_plan(plan, "tensorrt", "uniform").weights.keys() == plan.weights.keys()
    for q in plan.weights.values():
        assert (q.qmin, q.qmax) == (-63, 63)
    _, p6 = quantize(model, QuantConfig(weights={"bits": 6}), [torch.randn(64, 8)])
    with pytest.raises(ValueError, match="6-bit"):
        lower_plan(p6, "onnxruntime", "uniform")


def test_overflow_fix_takes_seven_bits_where_this_cpu_saturates():
    """auto: 7-bit weights when an INT8 artifact for ONNX Runtime or OpenVINO is evaluated on a CPU whose int8
    kernels saturate (not for a graph lowered for TensorRT, nor when a CoreML int8 package shares the plan)."""
    from edgevit.errors import BadInput
    from edgevit.recipe import build_recipe
    from edgevit.stages.quantize import overflow_fix

    from conftest import CALIB_DIR

    def fix(exports, mode="auto", bits=8):
        return overflow_fix(build_recipe({"name": "x", "calibration": {"path": str(CALIB_DIR)}, "export": exports,
                                          "quantize": {"weights": {"bits": bits, "overflow_fix": mode}}}))

    ort, ov = {"precision": "int8"}, {"format": "openvino", "precision": "int8"}
    trt = {"precision": "int8", "target": "tensorrt"}
    coreml = {"format": "coreml", "precision": "int8", "compression": "w8"}
    saturates = int8_dot_saturates()
    for exports in ([ort], [ov], [trt, ort]):
        assert (fix(exports) is not None) == saturates
        assert fix(exports, "off") is None and "overflow_fix: on" in fix(exports, "on")
    assert "no VNNI" in (fix([ort]) or "no VNNI")
    assert fix([trt]) is None and fix([ort, coreml]) is None and fix([ort | {"lowering": "exact"}], "on", 4) is None
    with pytest.raises(BadInput, match="quantize.weights.bits: 7-bit"):
        fix([coreml], "on")


def test_int8_files_beside_a_coreml_package_take_seven_bit_weights_alone():
    """auto with a CoreML int8 package (8-bit codes only) beside the ONNX Runtime / OpenVINO INT8 files: only
    those files take 7-bit weights where this CPU saturates; the 7-bit grid spans each 8-bit weight range."""
    import torch

    from edgevit.quant import QuantConfig, apply_plan, quantize
    from edgevit.quant.lowering import lower_plan, seven_bit_weights
    from edgevit.recipe import build_recipe
    from edgevit.stages.quantize import overflow_fix_per_artifact, saturating_int8

    from conftest import CALIB_DIR

    def recipe(exports, mode="auto"):
        return build_recipe({"name": "x", "calibration": {"path": str(CALIB_DIR)}, "export": exports,
                             "quantize": {"weights": {"overflow_fix": mode}}})

    ort, trt = {"precision": "int8", "name": "ort"}, {"precision": "int8", "target": "tensorrt"}
    coreml = {"format": "coreml", "precision": "int8", "compression": "w8", "name": "cm"}
    both = recipe([ort, trt, coreml])
    why = overflow_fix_per_artifact(both)
    assert (why is not None) == int8_dot_saturates()
    if why:
        assert why.startswith("weights of ort on the 7-bit grid") and "cm keep 8-bit weights" in why
    assert [saturating_int8(e) for e in both.export] == [True, False, False]
    for exports, mode in (([ort], "auto"), ([trt, coreml], "auto"), ([ort, coreml], "off")):
        assert overflow_fix_per_artifact(recipe(exports, mode)) is None

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    x = torch.randn(64, 8)
    _, plan = quantize(model, QuantConfig(), [x])
    plan.rounded["0"] = plan.weights["0"].quantize(model[0].weight.detach()).to(torch.int8)  # as reconstruction
    seven = seven_bit_weights(plan)
    assert lower_plan(seven, "onnxruntime", "uniform") is seven and seven.config.weights.bits == 7
    for name, q in plan.weights.items():
        q7 = seven.weights[name]
        assert (q.bits, q7.bits, q7.qmin, q7.qmax) == (8, 7, -63, 63)
        assert torch.allclose(q7.scale * 63, q.scale * 127)  # the same range
    assert plan.weights["0"].bits == 8 and plan.rounded["0"].abs().max() == 127  # the 8-bit plan is untouched
    assert seven.rounded["0"].abs().max() == 63
    assert torch.equal(seven.rounded["0"], torch.round(plan.rounded["0"].float() * 63 / 127).to(torch.int8))
    q7 = apply_plan(model, seven)
    for name in ("0", "2"):
        codes = q7.get_submodule(name).inner.weight / seven.weights[name].scale[:, None]
        assert torch.allclose(codes, codes.round(), atol=1e-4) and codes.abs().max() <= 63 + 1e-4
    with torch.no_grad():  # coarser weights, the same function within the 7-bit rounding error
        ref, got = apply_plan(model, plan)(x), q7(x)
    assert 0 < (got - ref).abs().max() < 0.1 * ref.abs().max()


def test_overflow_fix_reads_yaml_on_and_off(tmp_path):
    """A bare on / off in a recipe (YAML reads them as true / false) means "on" / "off"."""
    from edgevit.recipe import load_recipe

    from conftest import CALIB_DIR

    r = tmp_path / "r.yaml"
    for word in ("on", "off", "auto"):
        r.write_text(f"name: x\ncalibration: {{path: {CALIB_DIR}}}\nquantize:\n  weights: {{overflow_fix: {word}}}\n")
        assert load_recipe(str(r)).quantize.weights.overflow_fix == word


def test_placement_checks_every_candidate_where_the_kernels_saturate():
    """With 8-bit weights on a CPU whose int8 kernels saturate, every INT8 candidate of ONNX Runtime and OpenVINO
    is inexact (checked against its simulation before it ships); 7-bit weights, TensorRT's lowering's runtime
    check elsewhere, and an SSH device's CPU (unknown here) are not."""
    import torch

    from edgevit.quant import QuantConfig, quantize
    from edgevit.recipe import DeviceConfig
    from edgevit.runtimes import RUNTIMES
    from edgevit.stages.placement import _saturating_kernels

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    _, p8 = quantize(model, QuantConfig(), [torch.randn(64, 8)])
    _, p7 = quantize(model, QuantConfig(weights={"bits": 7}), [torch.randn(64, 8)])
    local = DeviceConfig(name="here", kind="local", runtime="onnxruntime")
    ssh = DeviceConfig.model_construct(name="pi", kind="ssh", runtime="onnxruntime")
    for rt in ("onnxruntime", "openvino"):
        why = _saturating_kernels(RUNTIMES[rt], local, p8)
        assert (why is not None) == int8_dot_saturates() and (why is None or "overflow_fix: on" in why)
        assert _saturating_kernels(RUNTIMES[rt], local, p7) is None
        assert _saturating_kernels(RUNTIMES[rt], ssh, p8) is None
    assert not RUNTIMES["coreml"].int8_kernels_saturate
