"""ONNX export: opset, one LayerNormalization op, metadata, determinism, parity in ONNX Runtime."""
from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np
import onnx
import pytest
import torch

from edgevit.exporters.onnx import export_onnx, read_metadata
from edgevit.models import load_model
from edgevit.recipe import ExportConfig, ModelConfig
from edgevit.validate import OrtRunner, TorchRunner

from conftest import EVAL_DIR
from edgevit.data import Preprocess, open_image_set


@pytest.fixture(scope="module", params=["hybrid-cifar10", "vit-cifar10"])
def builtin(request):
    return load_model(ModelConfig(source=f"builtin:{request.param}"))


@pytest.fixture(scope="module")
def real_images(builtin):
    _, info = builtin
    s = open_image_set(EVAL_DIR, num=16, seed=0)
    x, _ = s.load(Preprocess(info.input_size, info.mean, info.std))
    return x


def test_fp32_export_graph_and_metadata(builtin, tmp_path):
    model, info = builtin
    path = tmp_path / "m.onnx"
    facts = export_onnx(model, info, ExportConfig(), path, recipe_name="unit")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 17
    n_ln = sum(1 for m in model.modules() if type(m).__name__ == "LayerNorm")
    assert facts["ops"].get("LayerNormalization") == n_ln > 0
    assert "ReduceMean" not in facts["ops"]
    meta = read_metadata(path)
    assert json.loads(meta["labels"]) == info.labels
    assert json.loads(meta["mean"]) == pytest.approx(list(info.mean))
    assert json.loads(meta["std"]) == pytest.approx(list(info.std))
    assert json.loads(meta["input_size"]) == [3, 32, 32]
    assert meta["recipe"] == "unit" and meta["edgevit_version"] and meta["precision"] == "fp32"
    # what an app needs to preprocess like the evaluation did, and where the model came from
    assert json.loads(meta["crop_pct"]) == info.crop_pct and meta["interpolation"] == info.interpolation
    assert meta["model_source"] == info.source and info.source.startswith("builtin:")
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_fp32_parity_in_ort_on_real_images(builtin, real_images, tmp_path):
    model, info = builtin
    path = tmp_path / "m.onnx"
    export_onnx(model, info, ExportConfig(), path, recipe_name="unit")
    ort_out, ref = OrtRunner(path, threads=1)(real_images), TorchRunner(model)(real_images)
    assert np.abs(ort_out - ref).max() < 1e-4
    assert (ort_out.argmax(1) == ref.argmax(1)).all()
    # ONNX Runtime's default (threads spinning), as a benchmark's extra baseline runs it: the same numbers
    spinning = OrtRunner(path, threads=2, spinning=True)
    assert spinning.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert np.array_equal(spinning(real_images), OrtRunner(path, threads=2)(real_images))


def test_fp16_export_is_half_size_and_close(builtin, real_images, tmp_path):
    model, info = builtin
    p32, p16 = tmp_path / "a.onnx", tmp_path / "b.onnx"
    export_onnx(model, info, ExportConfig(), p32, recipe_name="unit")
    export_onnx(model, info, ExportConfig(precision="fp16"), p16, recipe_name="unit")
    assert p16.stat().st_size < 0.6 * p32.stat().st_size
    proto = onnx.load(str(p16))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)
    ref = TorchRunner(model)(real_images)
    out = OrtRunner(p16, threads=1)(real_images)
    assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max()
    assert read_metadata(p16)["precision"] == "fp16"


def test_export_is_byte_identical(builtin, tmp_path):
    model, info = builtin
    digests = []
    for i in range(2):
        p = tmp_path / f"m{i}.onnx"
        export_onnx(model, info, ExportConfig(), p, recipe_name="unit")
        digests.append(hashlib.sha256(p.read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_compact_keeps_outputs_and_shrinks_the_file(builtin, real_images):
    from edgevit.exporters.compact import compact, short_node_name
    from edgevit.exporters.onnx import torch_to_onnx

    model, info = builtin
    raw = torch_to_onnx(model, info.input_size)
    small = compact(onnx.load_from_string(raw.SerializeToString()))
    onnx.checker.check_model(small)
    assert len(small.SerializeToString()) < len(raw.SerializeToString())
    assert not any(n.op_type == "Constant" for n in small.graph.node)
    assert not small.graph.value_info
    names = [n.name for n in small.graph.node]
    assert len(set(names)) == len(names)  # still unique, so profiles and audits stay readable
    assert [i.name for i in small.graph.input] == ["input"] and [o.name for o in small.graph.output] == ["logits"]
    import onnxruntime as ort
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(  # noqa: E731
        None, {"input": real_images})[0]
    np.testing.assert_allclose(run(small), run(raw), atol=1e-5)
    ids = compact(onnx.load_from_string(raw.SerializeToString()), numbered=True)
    assert len(ids.SerializeToString()) < len(small.SerializeToString())
    np.testing.assert_allclose(run(ids), run(raw), atol=1e-5)
    assert short_node_name("/stages/stages.2/stages.2.1/attn/MatMul") == "stages.2.1/attn/MatMul"
    assert short_node_name("/blocks/blocks.0/norm1/LayerNormalization") == "blocks.0/norm1/LayerNormalization"
    assert short_node_name("/blocks/blocks.0/attn/qkv/input_quant/QuantizeLinear_1") == "blocks.0/attn/qkv/input_quant/Q_1"
    # attributes at their default are left out (a Conv's unit strides, zero pads, group 1), the others stay
    convs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in ids.graph.node
             if n.op_type == "Conv"]
    assert not any(a.get("strides") == [1, 1] or a.get("pads") == [0, 0, 0, 0] or a.get("group") == 1 for a in convs)
    assert any(a.get("strides", [1, 1]) != [1, 1] for a in convs) and all("kernel_shape" in a for a in convs)
    assert {t.name for t in ids.graph.initializer} >= {"0", "a"}  # base-62 ids, shortest first


class _ConvGelu(torch.nn.Module):
    """conv -> GELU -> conv; with ``quantized`` the first conv's output goes through a QuantizeLinear /
    DequantizeLinear pair, as a quantized conv output does in edgevit's INT8 graphs."""

    def __init__(self, quantized: bool):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.quantized = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 4, 1), quantized

    def forward(self, x):
        y = self.a(x)
        if self.quantized:
            y = torch.fake_quantize_per_tensor_affine(y, 0.05, 128, 0, 255)
        return self.b(torch.nn.functional.gelu(y))


def _ort(proto: onnx.ModelProto, x: np.ndarray, tmp_path) -> tuple[np.ndarray, dict]:
    """ONNX Runtime's output on ``x`` and the op counts of the graph it runs after its optimizations."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    s = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    out = s.run(None, {"input": x})[0]
    return out, Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)


@pytest.mark.parametrize("quantized", [False, True], ids=["fp32", "int8"])
def test_onnx_runtime_runs_each_gelu_as_one_op(quantized, tmp_path):
    """The simplified FP32 graph keeps GELU's "* 0.5" (onnxsim would fold it into the next conv and ONNX
    Runtime would then run the GELU as four elementwise ops); in an INT8 graph, where ONNX Runtime does not
    fuse a GELU that reads a DequantizeLinear, ``fuse_erf_gelu`` writes the one op it would have fused,
    with the same outputs in ONNX Runtime and in OpenVINO."""
    from edgevit.exporters.onnx import simplify, torch_to_onnx
    from edgevit.exporters.qdq import fuse_erf_gelu

    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    proto, how = simplify(torch_to_onnx(_ConvGelu(quantized).eval(), 16))
    assert how.startswith("onnxsim")
    before, ops = _ort(proto, x, tmp_path)
    if quantized:
        assert (ops["Erf"], ops["Gelu"]) == (1, 0)  # why the rewrite exists
        original = onnx.load_from_string(proto.SerializeToString())
        assert fuse_erf_gelu(proto) == 1 and fuse_erf_gelu(proto) == 0
        gelu = [n for n in proto.graph.node if n.op_type == "Gelu"]
        assert len(gelu) == 1 and gelu[0].domain == "com.microsoft" and gelu[0].name.endswith("Gelu")  # Erf's scope
        assert not {"Erf", "Div"} & {n.op_type for n in proto.graph.node}
    out, ops = _ort(proto, x, tmp_path)
    assert (ops["Erf"], ops["Gelu"]) == (0, 1)
    np.testing.assert_allclose(out, before, atol=1e-5)
    if quantized:
        ov = pytest.importorskip("openvino")
        for m in (original, proto):
            (tmp_path / "g.onnx").write_bytes(m.SerializeToString())
            got = ov.Core().compile_model(ov.convert_model(str(tmp_path / "g.onnx")), "CPU",
                                          {"INFERENCE_PRECISION_HINT": "f32"})(x)[0]
            np.testing.assert_allclose(got, before, atol=2e-3)


def _erf_gelu_graph(half: float = 0.5, expose: str | None = None) -> onnx.ModelProto:
    """y = half * x * (1 + Erf(x / sqrt 2)) as PyTorch writes it; ``expose``: an inner tensor also made a graph
    output (another reader)."""
    from onnx import TensorProto, helper, numpy_helper

    consts = [numpy_helper.from_array(np.array(v, np.float32), n)
              for n, v in (("sqrt2", np.sqrt(2.0)), ("one", 1.0), ("half", half))]
    nodes = [helper.make_node("Div", ["x", "sqrt2"], ["d"], name="act/Div"),
             helper.make_node("Erf", ["d"], ["e"], name="act/Erf"),
             helper.make_node("Add", ["e", "one"], ["a"], name="act/Add"),
             helper.make_node("Mul", ["x", "a"], ["m"], name="act/Mul"),
             helper.make_node("Mul", ["m", "half"], ["y"], name="act/Mul_1")]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 8]) for n in ["y"] + ([expose] if expose else [])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])], outputs,
                              consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("half, expose, fused", [(0.5, None, 1), (0.4, None, 0), (0.5, "d", 0), (0.5, "a", 0),
                                                 (0.5, "m", 0)])
def test_fuse_erf_gelu_takes_only_the_exact_pattern(half, expose, fused):
    """Another factor than 0.5, or an inner tensor someone else reads, leaves the graph as it is."""
    import onnxruntime as ort

    from edgevit.exporters.qdq import fuse_erf_gelu

    model = _erf_gelu_graph(half, expose)
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    before = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert fuse_erf_gelu(model) == fused
    assert [n.op_type for n in model.graph.node] == (["Gelu"] if fused else ["Div", "Erf", "Add", "Mul", "Mul"])
    assert [n.name for n in model.graph.node][0] == ("act/Gelu" if fused else "act/Div")
    after = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for a, b in zip(after, before):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_ort_format_artifact_runs_as_its_onnx_graph(tmp_path):
    """`ort_format: true` ships the INT8 graph optimized offline as ONNX Runtime's .ort: it predicts what the
    .onnx of the same plan predicts, carries edgevit's metadata, opens faster, lists its operators for a reduced
    build beside it, leaves no intermediate file, is benchmarked by its suffix; TensorRT targets are refused."""
    import re

    from conftest import CALIB_DIR, cli, fast
    from edgevit.api import bench
    from edgevit.errors import BadInput
    from edgevit.recipe import load_recipe
    from edgevit.runtimes import for_suffix

    out = tmp_path / "run"
    sets = [f"calibration.path={CALIB_DIR}", "quantize.placement=all", "budget=null",
            "export=[export/onnx-fp32.yaml,export/onnx-int8.yaml,export/onnx-int8-ort.yaml]"]
    res = cli("compress", "--recipe", "int8_ptq", "--out", str(out), *fast(eval_num=100, devices=False),
              *[a for s in sets for a in ("--set", s)])
    assert res.returncode == 0, res.stdout[-2000:]
    rep = json.loads((out / "report.json").read_text())
    rows = {r["name"]: r for r in rep["results"]}
    ort_row, onnx_row = rows["onnx-int8-ort"], rows["onnx-int8"]
    path = out / ort_row["file"]
    assert ort_row["file"] == "onnx-int8-ort.ort" and ort_row["size_bytes"] == path.stat().st_size
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp-")]
    with pytest.raises(Exception):  # not an ONNX protobuf: only ONNX Runtime reads it
        onnx.load(str(path))
    rt = for_suffix(".ort")
    assert rt is for_suffix(".onnx") and rt.read_metadata(path) == read_metadata(out / "onnx-int8.onnx")
    meta = {k: json.loads(v) for k, v in rt.read_metadata(path).items() if k in ("input_size", "mean", "std")}
    x, _ = open_image_set(EVAL_DIR, num=64, seed=0).load(Preprocess(meta["input_size"][-1], meta["mean"], meta["std"]))
    a, b = OrtRunner(path)(x), OrtRunner(out / "onnx-int8.onnx")(x)
    assert (a.argmax(1) == b.argmax(1)).all() and np.abs(a - b).max() < 1e-4
    assert ort_row["accuracy"]["top1"] == onnx_row["accuracy"]["top1"]
    assert all(c["ok"] for c in rep["checks"] if c["name"].startswith("onnx-int8-ort:"))
    facts = ort_row["export"]["ort_format"]
    config = (out / facts["required_operators"]).read_text().splitlines()
    assert config == facts["operators"] and all(re.fullmatch(r"[\w.]+;\d+;[\w,]+", line) for line in config)
    assert any("QuantizeLinear" in line for line in config)  # the graph keeps its integer parts
    assert 0 < facts["load_ms"] < facts["onnx_load_ms"]  # measured: 31 vs 98 ms here
    assert "ORT format" in (out / "report.md").read_text()
    assert bench(path)["size_bytes"] == path.stat().st_size
    with pytest.raises(BadInput, match=r"export\.0.*ort_format"):
        load_recipe("int8_ptq", ["export=[{format: onnx, precision: int8, target: tensorrt, ort_format: true}]"])


def test_transposed_int8_weights_are_stored_transposed():
    """DequantizeLinear -> Transpose(1, 0) of an int8 weight becomes the transposed int8 weight with its channel
    axis moved, in one pass for every such pair (the MatMul and a graph output read the DequantizeLinear); a
    DequantizeLinear with a second reader keeps its Transpose. The graph computes the same outputs."""
    from onnx import TensorProto, helper, numpy_helper

    from edgevit.exporters.qdq import fold_weight_transposes

    rng = np.random.default_rng(0)
    inits, nodes = [], []
    for k, axis in enumerate((0, 1, 0)):  # weight k: (8, 6) int8, scale per channel on `axis`
        inits += [numpy_helper.from_array(rng.integers(-127, 128, (8, 6)).astype(np.int8), f"w{k}"),
                  numpy_helper.from_array(rng.uniform(0.01, 0.1, (8, 6)[axis]).astype(np.float32), f"s{k}")]
        nodes += [helper.make_node("DequantizeLinear", [f"w{k}", f"s{k}"], [f"d{k}"], name=f"dq{k}", axis=axis),
                  helper.make_node("Transpose", [f"d{k}"], [f"t{k}"], name=f"tr{k}", perm=[1, 0])]
    nodes += [helper.make_node("MatMul", ["x", "t0"], ["y0"], name="mm0"),
              helper.make_node("MatMul", ["x", "t1"], ["y1"], name="mm1"),
              helper.make_node("Relu", ["d2"], ["r2"], name="second_reader")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 6])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n, shape in (
                                  ("y0", [3, 8]), ("y1", [3, 8]), ("t1", [6, 8]), ("t2", [6, 8]), ("r2", [8, 6]))],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    x = rng.standard_normal((3, 6)).astype(np.float32)

    def outputs(m):
        import onnxruntime as ort

        opts = ort.SessionOptions()  # the graph as written: with float inputs ORT runs DQ -> MatMul as MatMulNBits
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x})))

    before = outputs(model)
    assert fold_weight_transposes(model) == 2
    onnx.checker.check_model(model)
    assert [n.name for n in model.graph.node if n.op_type == "Transpose"] == ["tr2"]
    assert {n.name: [a.i for a in n.attribute if a.name == "axis"] for n in model.graph.node
            if n.op_type == "DequantizeLinear"} == {"dq0": [1], "dq1": [0], "dq2": [0]}
    assert [o.name for o in model.graph.output] == ["y0", "y1", "d1", "t2", "r2"]
    after = outputs(model)
    for a, b in (("y0", "y0"), ("y1", "y1"), ("t1", "d1"), ("t2", "t2"), ("r2", "r2")):
        np.testing.assert_array_equal(before[a], after[b], err_msg=a)
