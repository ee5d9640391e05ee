"""The OpenVINO graph form of a channel Split of a conv's output: one conv per part (``split_conv_outputs``), the
same values in ONNX Runtime, on the float graph and on the INT8 QDQ graph, and on EfficientViT through the
pipeline."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper

from conftest import cli
from edgevit.exporters.conv_splits import split_conv_outputs


class QKV(torch.nn.Module):
    """EfficientViT's q/k/v: one 1x1 conv, viewed as (B, -1, H, W) and split along the channels (``view``: a
    view that changes the shape instead)."""

    def __init__(self, view=lambda t, b: t.view(b, -1, 7, 7)):
        super().__init__()
        self.conv = torch.nn.Conv2d(16, 48, 1)
        self.view = view

    def forward(self, x):
        q, k, v = self.view(self.conv(x), x.shape[0]).split([8, 8, 32], dim=1)  # B from x, as timm does
        return q.flatten(2).transpose(1, 2) @ k.flatten(2), v * 2


def _onnx(module, tmp_path) -> onnx.ModelProto:
    torch.manual_seed(0)
    path = tmp_path / "qkv.onnx"
    torch.onnx.export(module, (torch.randn(1, 16, 7, 7),), str(path), input_names=["input"], opset_version=17,
                      dynamic_axes={"input": {0: "batch"}}, dynamo=False)
    return onnx.load(str(path))


def _as_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """The QDQ exporter's form of the conv: int8 weights with per-channel scales, float bias, a per-tensor
    quantizer pair on its output."""
    g = model.graph
    conv = next(n for n in g.node if n.op_type == "Conv")
    w = next(t for t in g.initializer if t.name == conv.input[1])
    wf = numpy_helper.to_array(w)
    scale = np.abs(wf).reshape(len(wf), -1).max(1) / 127
    g.initializer.remove(w)
    g.initializer.extend([numpy_helper.from_array(np.round(wf / scale[:, None, None, None]).astype(np.int8), "w_q"),
                          numpy_helper.from_array(scale.astype(np.float32), "w_s"),
                          numpy_helper.from_array(np.array(0.02, np.float32), "y_s"),
                          numpy_helper.from_array(np.array(128, np.uint8), "y_z")])
    y = conv.output[0]
    conv.input[1], conv.output[0] = "w_dq", "y_conv"
    at = list(g.node).index(conv)
    g.node.insert(at, helper.make_node("DequantizeLinear", ["w_q", "w_s"], ["w_dq"], name="w/DQ", axis=0))
    g.node.insert(at + 2, helper.make_node("QuantizeLinear", ["y_conv", "y_s", "y_z"], ["y_q"], name="out/Q"))
    g.node.insert(at + 3, helper.make_node("DequantizeLinear", ["y_q", "y_s", "y_z"], [y], name="out/DQ"))
    onnx.checker.check_model(model)
    return model


def _run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})


@pytest.mark.parametrize("qdq", [False, True], ids=["float", "qdq"])
def test_a_channel_split_of_a_conv_output_becomes_one_conv_per_part(tmp_path, qdq):
    """Conv -> [Q -> DQ] -> view -> Split(8, 8, 32): three convs (each with its quantizer pair), no Split and no
    view (nor its shape arithmetic) left, the outputs equal (float graph: to the bit) at two batch sizes; the new
    convs keep the old conv's module path."""
    model = _onnx(QKV(), tmp_path)
    model = _as_qdq(model) if qdq else model
    xs = [np.random.default_rng(b).standard_normal((b, 16, 7, 7)).astype(np.float32) for b in (1, 3)]
    before = [_run(model, x) for x in xs]
    ops = [n.op_type for n in model.graph.node]
    assert split_conv_outputs(model) == 1
    onnx.checker.check_model(model)
    ops, was = [n.op_type for n in model.graph.node], ops
    assert "Split" not in ops and ops.count("Reshape") == was.count("Reshape") - 1 and ops.count("Conv") == 3
    assert ops.count("Shape") == was.count("Shape") - 1  # the view's shape arithmetic went with it
    assert ops.count("QuantizeLinear") == (3 if qdq else 0) and ops.count("DequantizeLinear") == (6 if qdq else 0)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert [c.name for c in convs] == [f"/conv/Conv_part{i}" for i in range(3)]
    widths = [numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == i)).shape[0]
              for c in convs for i in c.input[2:]]
    assert widths == [8, 8, 32]
    for x, ref in zip(xs, before):  # ONNX Runtime fuses the QDQ forms into other kernels: equal to float rounding
        assert all(np.abs(a - b).max() <= (1e-6 * np.abs(b).max() if qdq else 0) for a, b in zip(_run(model, x), ref))
    assert len({t.name for t in model.graph.initializer}) == len(model.graph.initializer)


def test_a_split_that_is_not_of_a_conv_output_alone_is_left(tmp_path):
    """A view that changes the shape between conv and split, or a conv output read elsewhere too: unchanged."""
    reshaped = _onnx(QKV(view=lambda t, b: t.view(b, 48, 49, 1)), tmp_path)
    assert split_conv_outputs(reshaped) == 0 and "Split" in [n.op_type for n in reshaped.graph.node]
    shared = _onnx(QKV(), tmp_path)
    conv = next(n for n in shared.graph.node if n.op_type == "Conv")
    shared.graph.output.append(helper.make_tensor_value_info(conv.output[0], onnx.TensorProto.FLOAT, None))
    assert split_conv_outputs(shared) == 0


def test_efficientvit_irs_compute_each_heads_qkv_without_a_split(tmp_path):
    """timm EfficientViT-M0 (64 px) through the OpenVINO exports: each of its 24 heads' q/k/v split is one conv per
    part in the FP32-in-bf16 and the INT8 IR (the details say so), no VariadicSplit of a conv's output is left, and
    each IR passes its agreement check."""
    import openvino as ov

    out = tmp_path / "run"
    res = cli("compress", "--recipe", "int8_ptq", "--model", "timm:efficientvit_m0", "--out", str(out),
              "--set", "model.input_size=64", "--set", "model.num_classes=10", "--set", "quantize.placement=all",
              "--set", "export=[export/openvino-int8.yaml,export/openvino-bf16.yaml]", "--set", "calibration.num=8",
              "--set", "validate.eval.num=16", "--set", "validate.devices=[]", "--set", "budget=null")
    rep = json.loads((out / "report.json").read_text())
    assert res.returncode == 0, [c for c in rep["checks"] if not c["ok"]]
    rows = {r["name"]: r for r in rep["results"]}
    for name in ("openvino-int8", "openvino-bf16"):
        e = rows[name]["export"]
        assert e["conv_splits"] == 24 and any("24 channel splits of a conv's output" in d for d in e["details"])
        model = ov.Core().read_model(str(out / rows[name]["file"]))
        split_of_conv = [op for op in model.get_ops() if op.get_type_name() == "VariadicSplit" and any(
            s.get_node().get_type_name() in ("Convolution", "Add", "FakeQuantize")
            for s in (i.get_source_output() for i in op.inputs()[:1]))]
        assert split_of_conv == []
    assert {c["name"].split(":")[0] for c in rep["checks"] if c["ok"]} >= {"openvino-int8", "openvino-bf16"}
