"""The OpenVINO graph form of timm's qkv projection: separate q, k and v projections with the attention's scale
folded into q's (``split_qkv_projections``), the same values in ONNX Runtime, quantized projections left alone, and
the fallback to the graph as exported where only that one can be fixed to one batch in OpenVINO."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper
from timm.models.vision_transformer import Attention

from edgevit.exporters.onnx import simplify
from edgevit.exporters.qkv_splits import split_qkv_projections

UNBIND = [2, 0, 3, 1, 4]


class Block(torch.nn.Module):
    """timm's attention on (B, N, C) tokens, as its ViTs and MobileViTs call it."""

    def __init__(self, bias: bool):
        super().__init__()
        self.attn = Attention(32, num_heads=4, qkv_bias=bias)

    def forward(self, x):
        return self.attn(x)


def _onnx(module, tmp_path) -> onnx.ModelProto:
    torch.manual_seed(0)
    module = module.eval()
    with torch.no_grad():  # a bias of zero would hide a bias sliced or scaled wrongly
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    path = tmp_path / "attn.onnx"
    torch.onnx.export(module, (torch.randn(1, 10, 32),), str(path), input_names=["input"], opset_version=17,
                      dynamic_axes={"input": {0: "batch"}}, dynamo=False)
    return simplify(onnx.load(str(path)))[0]  # as the exporter does: the views' shapes become constants


def _run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def _perms(model) -> list:
    return [list(helper.get_attribute_value(a)) for n in model.graph.node if n.op_type == "Transpose"
            for a in n.attribute if a.name == "perm"]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_a_qkv_projection_becomes_three_with_the_scale_in_q(tmp_path, bias):
    """One qkv projection, unbound by the 5-D transpose, becomes q, k and v projections each transposed to
    (B, heads, N, head_dim); the two scale multiplies are gone (folded into q's weights and bias); the outputs
    agree to float rounding at two batch sizes; the new nodes keep the projection's module path."""
    model = _onnx(Block(bias), tmp_path)
    xs = [np.random.default_rng(b).standard_normal((b, 10, 32)).astype(np.float32) for b in (1, 3)]
    before = [_run(model, x) for x in xs]
    was = [n.op_type for n in model.graph.node]
    assert UNBIND in _perms(model) and was.count("Mul") >= 2
    qkv = next(n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm"))  # the first projection
    assert split_qkv_projections(model) == 1
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert UNBIND not in _perms(model) and _perms(model).count([0, 2, 1, 3]) == 3 + 1  # q, k, v and the output
    assert "Split" not in ops and "Squeeze" not in ops and ops.count("Mul") == was.count("Mul") - 2
    projections = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and n.name.startswith(qkv + "_")]
    assert [n.name for n in projections] == [f"{qkv}_{t}" for t in "qkv"]
    widths = [numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == n.input[1])).shape
              for n in projections]
    assert all(sorted(w) == [32, 32] for w in widths)  # 4 heads x 8 of the 96 outputs each
    for x, ref in zip(xs, before):
        assert np.abs(_run(model, x) - ref).max() <= 1e-5 * np.abs(ref).max()
    assert len({t.name for t in model.graph.initializer}) == len(model.graph.initializer)


def test_a_quantized_or_shared_projection_is_left(tmp_path):
    """A qkv projection whose weight is dequantized (a quantized region), or whose output is read elsewhere too,
    is left as it is."""
    quantized = _onnx(Block(True), tmp_path)
    g = quantized.graph
    mm = next(n for n in g.node if n.op_type in ("MatMul", "Gemm"))
    w = next(t for t in g.initializer if t.name == mm.input[1])
    wf = numpy_helper.to_array(w)
    scale = np.abs(wf).max(0) / 127
    g.initializer.remove(w)
    g.initializer.extend([numpy_helper.from_array(np.round(wf / scale).astype(np.int8), "w_q"),
                          numpy_helper.from_array(scale.astype(np.float32), "w_s")])
    mm.input[1] = "w_dq"
    g.node.insert(list(g.node).index(mm), helper.make_node("DequantizeLinear", ["w_q", "w_s"], ["w_dq"], axis=1))
    onnx.checker.check_model(quantized)
    assert split_qkv_projections(quantized) == 0 and UNBIND in _perms(quantized)
    shared = _onnx(Block(True), tmp_path)
    mm = next(n for n in shared.graph.node if n.op_type in ("MatMul", "Gemm"))
    shared.graph.output.append(helper.make_tensor_value_info(mm.output[0], onnx.TensorProto.FLOAT, None))
    assert split_qkv_projections(shared) == 0 and UNBIND in _perms(shared)


def test_the_graph_as_exported_ships_where_only_it_can_be_fixed_to_one_batch(tmp_path, monkeypatch):
    """The OpenVINO export converts the split graph and fixes it to batch 1 where OpenVINO computes that form right;
    where it computes it wrongly and the graph as exported right (OpenVINO 2026.4 on the built-in hybrid's 32 px
    attention in bf16 on a CPU with AMX: 24.1 dB), the graph as exported ships fixed to batch 1 and the facts say why.
    OpenVINO's wrong result is replayed for the split graph: this small attention is computed right."""
    ov = pytest.importorskip("openvino")
    from edgevit.runtimes import openvino as ovmod

    graph = tmp_path / "graph.onnx"
    onnx.save(_onnx(Block(True), tmp_path), str(graph))
    facts: dict = {}
    _, unsplit = ovmod._openvino_form(graph, facts, int8=False)
    assert facts["qkv_splits"] == 1 and unsplit is not None and UNBIND in _perms(onnx.load(str(unsplit)))
    cfg = ovmod.OpenVINOExport(precision="fp32")
    x = np.random.default_rng(0).standard_normal((8, 10, 32)).astype(np.float32)

    def unbinds(ir) -> int:
        return sum(op.get_type_name() == "Transpose" and len(op.get_output_partial_shape(0)) == 5
                   for op in ir.get_ops())

    ir, batch = ovmod._fixed_form(graph, unsplit, ov.convert_model, cfg, x, facts)
    assert batch["batch"] == 1 and facts["qkv_splits"] == 1 and unbinds(ir) == 0 and "qkv_splits_left" not in facts
    real = ovmod.fixed_batch

    def fixed_batch(model, batch, hint, onnx_graph, images):
        out, f = real(model, batch, hint, onnx_graph, images)
        if onnx_graph == graph:
            return model, f | {"batch": None, "sqnr_db_vs_onnx": {"fixed": 24.1, "dynamic": 43.3}}
        return out, f

    monkeypatch.setattr(ovmod, "fixed_batch", fixed_batch)
    ir, batch = ovmod._fixed_form(graph, unsplit, ov.convert_model, cfg, x, facts)
    assert batch["batch"] == 1 and ir.input(0).get_partial_shape()[0].get_length() == 1 and unbinds(ir) == 1
    assert facts["qkv_splits"] == 0 and facts["qkv_splits_left"].startswith("1 qkv projection(s) left as exported")
    assert "24.1 dB from its ONNX graph (43.3 dB dynamic)" in facts["qkv_splits_left"]
