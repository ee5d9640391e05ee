"""CoreML export: the built-in hybrid converts in each weight-compression variant and the saved package
is checked as far as Linux allows (classifier spec, labels, metadata, compressed-weight ops, size);
pruned weights are stored sparse; the folded preprocessing equals the model's own."""
from __future__ import annotations

import copy
import json
import sys

import numpy as np
import pytest
import torch

from conftest import CALIB_DIR, cli
from edgevit.data import Preprocess, open_image_set
from edgevit.errors import BadInput
from edgevit.exporters.coreml import _Normalized, export_coreml, unavailable
from edgevit.models import load_model
from edgevit.prune import PruneConfig, prune
from edgevit.recipe import ModelConfig, build_recipe

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))


@pytest.fixture(scope="module")
def hybrid():
    return load_model(ModelConfig(source="builtin:hybrid-cifar10"))


def test_hybrid_converts_in_every_variant(hybrid, tmp_path):
    model, info = hybrid
    facts = {c: export_coreml(model, info, tmp_path / f"{c}.mlpackage", c, recipe="test")
             for c in ("none", "w8", "palettize4", "palettize6")}
    for c, f in facts.items():
        assert f["input"] == {"name": "image", "type": "imageType", "width": 32, "height": 32}, c
        assert f["predicted_label"] == "classLabel" and "classLabel_probs" in f["outputs"]
        assert f["labels"] == info.labels
        assert f["metadata"]["mean"] == "[0.4914, 0.4822, 0.4465]" and f["metadata"]["compression"] == c
        # the preprocessing an app needs beside the mean/std, and where the model came from
        assert (f["metadata"]["crop_pct"], f["metadata"]["interpolation"]) == (str(info.crop_pct), info.interpolation)
        assert f["metadata"]["model_source"] == "builtin:hybrid-cifar10"
        assert not (tmp_path / f".tmp-{c}.mlpackage").exists()
    assert facts["none"]["compressed_ops"] == {}
    assert facts["w8"]["compressed_ops"].get("constexpr_affine_dequantize", 0) >= 50
    for c in ("palettize4", "palettize6"):
        assert facts[c]["compressed_ops"].get("constexpr_lut_to_dense", 0) >= 50, c
    # equal constants are stored once whatever their size (coremltools alone merges those of >= 100 elements:
    # the program of the FP16 package was 144 KB, now 115 KB), and coremltools' own threshold is left as it was
    from coremltools.converters.mil.mil.passes.defs.cleanup.const_deduplication import const_deduplication

    for c in facts:
        assert _repeated_numeric_constants(tmp_path / f"{c}.mlpackage") == 0, c
    assert const_deduplication._const_threshold == 100
    # measured: 2.06 MB FP16, 1.17 MB int8, 0.67 MB 4-bit
    assert facts["palettize4"]["size_bytes"] < facts["palettize6"]["size_bytes"] < facts["w8"]["size_bytes"] \
        < 0.7 * facts["none"]["size_bytes"]


def test_the_program_is_checked_once_per_pass_pipeline_and_comes_out_the_same(hybrid, tmp_path, monkeypatch):
    """coremltools' consistency check of the whole program runs after each pass pipeline instead of after each
    of its ~120 passes: it still runs, and the package is the same bytes as with the check after every pass
    (its manifest too: the items are named by content, not by random UUIDs). The program is written with
    protobuf's deterministic serialization: coremltools' own order of map entries changes between processes."""
    import contextlib

    from coremltools.converters.mil.mil import Program

    import edgevit.exporters.coreml as coreml_mod

    model, info = hybrid
    calls = []
    check = Program.validate
    monkeypatch.setattr(Program, "validate", lambda self, **kw: calls.append(kw) or check(self, **kw))
    export_coreml(model, info, tmp_path / "once.mlpackage", "w8", recipe="test")
    once = len(calls)
    assert 3 <= once <= 8 and {"check_essential_scope": True} in calls  # frontend, main, backend pipelines
    monkeypatch.setattr(coreml_mod, "_validated_once_per_pipeline", contextlib.nullcontext)
    export_coreml(model, info, tmp_path / "each.mlpackage", "w8", recipe="test")
    assert len(calls) - once > 100
    assert _package_files(tmp_path / "once.mlpackage") == _package_files(tmp_path / "each.mlpackage")
    from coremltools.proto import Model_pb2

    program = (tmp_path / "once.mlpackage" / "Data" / "com.apple.CoreML" / "model.mlmodel").read_bytes()
    spec = Model_pb2.Model.FromString(program)
    assert len(spec.description.metadata.userDefined) > 3 and len(spec.mlProgram.functions) == 1
    assert program == spec.SerializeToString(deterministic=True)
    manifest = json.loads((tmp_path / "once.mlpackage" / "Manifest.json").read_text())
    items = manifest["itemInfoEntries"]
    assert items[manifest["rootModelIdentifier"]]["path"] == "com.apple.CoreML/model.mlmodel" and len(items) == 2
    export_coreml(model, info, tmp_path / "fp32.mlpackage", "none", precision="fp32", recipe="test")
    other = json.loads((tmp_path / "fp32.mlpackage" / "Manifest.json").read_text())  # other bytes: other ids
    assert not set(other["itemInfoEntries"]) & set(items)


def _package_files(package) -> dict[str, bytes]:
    """Every file of an .mlpackage by its path inside it."""
    return {p.relative_to(package).as_posix(): p.read_bytes() for p in sorted(package.rglob("*")) if p.is_file()}


def test_merged_hybrid_converts_when_a_merge_takes_every_a_token(tmp_path):
    """ToMe r=4 on the built-in hybrid merges MobileViT's last stages down to one token per patch, where a
    bipartite step merges every A token (no unmerged block left): that graph converts to CoreML (the
    converter failed there on an empty (B, 0, N) slice), and the two-token step is the size-weighted mean."""
    from edgevit.tokens import apply_tokens
    from edgevit.tokens.config import TokenConfig
    from edgevit.tokens.merge import bipartite_matching

    model, info = load_model(ModelConfig(source="builtin:hybrid-cifar10"))
    apply_tokens(model, TokenConfig(method="tome", r=4))
    facts = export_coreml(model.eval(), info, tmp_path / "merged.mlpackage", "none", recipe="test")
    assert facts["predicted_label"] == "classLabel" and (tmp_path / "merged.mlpackage").exists()
    # the two-token step itself: A token 0 merges into B token 1, the result is their size-weighted mean
    x = torch.randn(3, 2, 8)
    red = bipartite_matching(x, r=4)
    merged, size = red.merge(x, None)
    assert merged.shape == (3, 1, 8) and torch.equal(size, torch.full((3, 1, 1), 2.0))
    assert torch.allclose(merged[:, 0], x.mean(dim=1), atol=1e-6)


@pytest.mark.parametrize("name, layers", [("vit-cifar10", 24), ("hybrid-cifar10", 60)])
def test_pruned_weights_are_stored_sparse(tmp_path, name, layers):
    """Every 2:4-pruned layer is stored sparse, the hybrid's small convs (< 512 weights) too."""
    model, info = load_model(ModelConfig(source=f"builtin:{name}"))
    x, _ = open_image_set(CALIB_DIR, num=32, seed=0).load(Preprocess(info.input_size, info.mean, info.std))
    sparse = copy.deepcopy(model)
    rep = prune(sparse, PruneConfig(nm={"criterion": "magnitude"}), torch.from_numpy(x))
    f = export_coreml(sparse, info, tmp_path / "sparse.mlpackage", "sparse")
    assert f["compressed_ops"].get("constexpr_sparse_to_dense") == len(rep["layers"]) == layers
    dense = export_coreml(model, info, tmp_path / "dense.mlpackage", "sparse")
    assert dense["compressed_ops"] == {}
    assert f["size_bytes"] < 0.8 * dense["size_bytes"]


def test_int8_weights_with_the_zeros_stored_sparse(tmp_path):
    """w8-sparse (joint compression, iOS18): every 2:4-pruned layer of the hybrid is stored as int8 values
    under a bit mask, and the package is smaller than the same model's dense int8 one."""
    model, info = load_model(ModelConfig(source="builtin:hybrid-cifar10"))
    x, _ = open_image_set(CALIB_DIR, num=32, seed=0).load(Preprocess(info.input_size, info.mean, info.std))
    rep = prune(model, PruneConfig(nm={"criterion": "magnitude"}), torch.from_numpy(x))
    joint = export_coreml(model, info, tmp_path / "joint.mlpackage", "w8-sparse", target="iOS18")
    assert joint["compressed_ops"].get("constexpr_sparse_blockwise_shift_scale") == len(rep["layers"]) == 60
    w8 = export_coreml(model, info, tmp_path / "w8.mlpackage", "w8", target="iOS18")
    assert "constexpr_sparse_blockwise_shift_scale" not in w8["compressed_ops"]
    assert joint["size_bytes"] < 0.8 * w8["size_bytes"]


def test_equal_int8_sparse_weights_are_stored_once(hybrid, tmp_path):
    """Two layers with equal weights (a random-weight timm EfficientFormerV2 zero-initializes the norm after its
    MLPs' last convs) in w8-sparse: coremltools' deduplication left the second copy's mask in use and stopped the
    conversion; now the two layers read one stored copy, and coremltools' own deduplication step is left as it was."""
    from coremltools.converters.mil.mil.passes.defs.cleanup.const_deduplication import const_deduplication

    _, info = hybrid

    class TwoEqual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 32, 3, padding=1)
            # conv + batch norm with a zero scale, as there: the weights become equal when the norm is folded in,
            # after coremltools merged the equal constants
            self.a, self.b = (torch.nn.Sequential(torch.nn.Conv2d(32, 32, 1), torch.nn.BatchNorm2d(32)) for _ in "ab")
            torch.nn.init.zeros_(self.a[1].weight)
            torch.nn.init.zeros_(self.b[1].weight)
            self.head = torch.nn.Linear(32, 10)

        def forward(self, x):
            x = torch.relu(self.stem(x))
            x = x + self.a(x)
            return self.head((x + self.b(torch.relu(x))).mean((2, 3)))

    torch.manual_seed(0)
    f = export_coreml(TwoEqual().eval(), info, tmp_path / "twice.mlpackage", "w8-sparse", target="iOS18")
    assert f["compressed_ops"].get("constexpr_sparse_blockwise_shift_scale") == 1, f["compressed_ops"]
    assert f["compressed_layers"].get("constexpr_sparse_blockwise_shift_scale") == 2, f["compressed_layers"]
    # the check of the stored form counts the layers that read such weights, not the ops
    from edgevit.runtimes.coreml import CoreML

    row = {"name": "coreml-w8-sparse", "export": f | {"expected": {"input_size": 32, "labels": info.labels,
                                                                     "sparse_layers": 2}}}
    stored = next(c for c in CoreML().checks(row) if "weights stored" in c["name"])
    assert stored["ok"] and stored["detail"].startswith("2 layers read weights stored by"), stored
    assert const_deduplication.remove_duplicate_ops is const_deduplication.__dict__["remove_duplicate_ops"]
    assert const_deduplication.remove_duplicate_ops.__module__.startswith("coremltools")


def test_folded_preprocessing_equals_the_models(hybrid):
    """The package takes 0-255 RGB pixels; the folded per-channel scale/shift must give the model exactly
    the input edgevit's own preprocessing gives it."""
    model, info = hybrid
    x, _ = open_image_set(CALIB_DIR, num=4, seed=0).load(Preprocess(info.input_size, info.mean, info.std))
    pixels = (x * np.array(info.std).reshape(1, 3, 1, 1) + np.array(info.mean).reshape(1, 3, 1, 1)) * 255
    with torch.no_grad():
        a = _Normalized(model, info.mean, info.std)(torch.from_numpy(pixels.astype(np.float32)))
        b = model(torch.from_numpy(x))
    assert (a - b).abs().max() < 1e-4


def test_clear_errors(monkeypatch):
    import edgevit.exporters.coreml as cm

    monkeypatch.setitem(sys.modules, "coremltools", None)  # as if not installed
    assert "pip install 'edgevit[coreml]'" in cm.unavailable()
    with pytest.raises(BadInput, match="export.0.compression: a CoreML int8 artifact .* set compression: w8"):
        build_recipe({"name": "x", "calibration": {"path": str(CALIB_DIR)}, "quantize": {},
                      "export": [{"format": "coreml", "precision": "int8"}]})
    with pytest.raises(BadInput, match="export.0.precision: int8 needs a quantize: section"):
        build_recipe({"name": "x", "export": [{"format": "coreml", "precision": "int8", "compression": "w8"}]})
    with pytest.raises(BadInput, match="export.0.lowering: exact cannot target CoreML"):
        build_recipe({"name": "x", "calibration": {"path": str(CALIB_DIR)}, "quantize": {},
                      "export": [{"format": "coreml", "precision": "int8", "compression": "w8", "lowering": "exact"}]})
    with pytest.raises(BadInput, match="export.0.deployment_target: compression w8-sparse .* needs iOS18"):
        build_recipe({"name": "x", "export": [{"format": "coreml", "compression": "w8-sparse"}]})
    with pytest.raises(BadInput, match="export.0.compression: only for format: coreml"):
        build_recipe({"name": "x", "export": [{"format": "onnx", "compression": "w8"}]})


def _repeated_numeric_constants(package) -> int:
    """How many ``const`` ops of the program hold a numeric tensor another ``const`` op already holds."""
    import coremltools as ct

    spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()
    ops = [op for fn in spec.mlProgram.functions.values() for block in fn.block_specializations.values()
           for op in block.operations if op.type == "const"]
    numeric = [op for op in ops if op.outputs[0].type.tensorType.dataType not in (
        ct.proto.MIL_pb2.DataType.Value("STRING"), ct.proto.MIL_pb2.DataType.Value("BOOL"))]
    keys = [(op.outputs[0].type.SerializeToString(), op.attributes["val"].SerializeToString()) for op in numeric]
    return len(keys) - len(set(keys))


def test_w8a8_package_quantizes_activations_with_edgevits_scales(hybrid, tmp_path):
    """W8A8: the quantize stage's model lowered for CoreML (symmetric int8 per tensor); traced with torch's
    quantize ops it predicts what the simulation predicts; a float model is refused before converting."""
    from edgevit.quant import QuantConfig, apply_plan, quantize
    from edgevit.quant.lowering import lower_plan
    from edgevit.quant.sites import act_sites, quantize_ops

    model, info = hybrid
    x, _ = open_image_set(CALIB_DIR, num=64, seed=0).load(Preprocess(info.input_size, info.mean, info.std))
    x = torch.from_numpy(x)
    _, plan = quantize(model, QuantConfig(), [x])
    lowered = lower_plan(plan, "coreml")
    assert all(e.qparams.symmetric and e.qparams.axis is None for e in lowered.activations.values())
    qm = apply_plan(model, lowered)
    with torch.no_grad():
        sim = qm(x)
        with quantize_ops():
            ops = qm(x)
    # the product's deployed-vs-simulation check asks >= 99 % (all 64 here); torch's quantize op multiplies by
    # 1/scale where the simulation divides, so a value on a rounding boundary moves a code (measured: 0.076)
    assert (sim.argmax(1) == ops.argmax(1)).float().mean() >= 0.99 and (sim - ops).abs().max() < 0.15
    assert len(act_sites(qm, quantized=True)) > 50  # the package's quantize ops: test_coreml_recipe_end_to_end
    with pytest.raises(ValueError, match="needs a quantized model"):
        export_coreml(model, info, tmp_path / "float.mlpackage", "w8", "int8")
    assert not (tmp_path / "float.mlpackage").exists()


def test_layernorm_kept_in_fp32_only_where_fp16_would_overflow(tmp_path):
    """The LayerNorm policy measures ranges: the built-in ViT stays FP16; a ViT whose residual stream is
    scaled past FP16's range keeps its LayerNorms in FP32 - in CoreML (layer_norm ops in fp32) and in
    the FP16 ONNX (LayerNormalization between Casts, FP32 scale)."""
    import onnx

    from edgevit.exporters.fp16 import layernorm_policy
    from edgevit.exporters.onnx import export_onnx
    from edgevit.recipe import ExportConfig

    model, info = load_model(ModelConfig(source="builtin:vit-cifar10"))
    x, _ = open_image_set(CALIB_DIR, num=16, seed=0).load(Preprocess(info.input_size, info.mean, info.std))
    x = torch.from_numpy(x)
    assert not layernorm_policy(model, x)["keep_fp32"]
    assert layernorm_policy(model, None)["keep_fp32"]  # nothing measured: FP32 to be safe
    assert not layernorm_policy(model, None, "fp16")["keep_fp32"]
    hot = copy.deepcopy(model)
    with torch.no_grad():
        hot.patch_embed.proj.weight.mul_(300.0)  # residual stream ~1e3: squared deviations overflow FP16
        hot.patch_embed.proj.bias.mul_(300.0)
    pol = layernorm_policy(hot, x)
    assert pol["keep_fp32"] and "blocks.0.norm1" in pol["overflowing"] and "exceed FP16" in pol["reason"]
    kept = export_coreml(hot, info, tmp_path / "kept.mlpackage", "none", "fp16", layernorm_fp32=True)
    plain = export_coreml(hot, info, tmp_path / "plain.mlpackage", "none", "fp16")
    assert kept["layer_norm_dtypes"] == {"float32": 13} and plain["layer_norm_dtypes"] == {"float16": 13}
    path = tmp_path / "hot-fp16.onnx"
    export_onnx(hot, info, ExportConfig(precision="fp16"), path, "test", layernorm_fp32=True)
    g = onnx.load(str(path)).graph
    init = {t.name: t.data_type for t in g.initializer}
    norms = [n for n in g.node if n.op_type == "LayerNormalization"]
    assert len(norms) == 13 and all(init[n.input[1]] == onnx.TensorProto.FLOAT for n in norms)
    assert sum(t == onnx.TensorProto.FLOAT16 for t in init.values()) > 50  # the rest is FP16


def test_export_cli_writes_a_coreml_classifier(tmp_path):

    res = cli("export", "--model", "builtin:hybrid-cifar10", "--to", "coreml", "--compression", "w8",
              "--precision", "fp16", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    pkg = tmp_path / "hybrid-cifar10-fp16-w8.mlpackage"
    assert pkg.is_dir() and "needs macOS" in res.stderr and "constexpr_affine_dequantize" in res.stderr
    from edgevit.exporters.coreml import inspect_package

    assert inspect_package(pkg)["metadata"]["compression"] == "w8"
    res = cli("export", "--model", "builtin:hybrid-cifar10", "--compression", "w8", "--out", str(tmp_path))
    assert res.returncode == 2 and "--compression: only with --to coreml" in res.stderr


def test_coreml_recipe_end_to_end(tmp_path):
    """recipes/coreml_mobile.yaml (FP32 ONNX and the W8A8 package, to keep the test short): the report
    has a row per artifact, the W8A8 check passes and the CoreML row says what was not measured."""
    import json

    out = tmp_path / "run"
    res = cli("compress", "--recipe", "recipes/coreml_mobile.yaml", "--out", str(out),
              "--set", "export=[export/onnx-fp32.yaml, export/coreml-w8a8.yaml]", "--set", "calibration.num=64",
              "--set", "validate.eval.num=100", "--set", "budget.max_accuracy_drop=5")
    # 64 calibration and 100 evaluation images: one image is a point, so the recipe's 1-point budget would
    # judge noise (test_budget tests the budget itself); the 5 points match the assertion below
    assert res.returncode == 0, res.stderr
    rep = json.loads((out / "report.json").read_text())
    assert rep["status"] == "ok", [c for c in rep["checks"] if not c["ok"]]
    rows = {r["name"]: r for r in rep["results"]}
    w8a8 = rows["coreml-w8a8"]
    assert w8a8["simulated_by"] == "pytorch-int8-sim-coreml" and "needs macOS" in w8a8["not_measured"]
    assert rows["pytorch-int8-sim-coreml"]["accuracy"]["top1"] > rows["pytorch-fp32"]["accuracy"]["top1"] - 0.05
    names = [c["name"] for c in rep["checks"] if c["ok"]]
    assert "coreml-w8a8: activations quantized (W8A8)" in names and "coreml-w8a8: weights stored w8" in names
    assert rep["fp16_layernorm"]["auto"]["keep_fp32"] is False  # measured on the calibration images
    md = (out / "report.md").read_text()
    assert "activations int8" in md and "Checked here:" in md and "FP16 LayerNorm (auto): FP16" in md


def test_w8a8_sites_that_compute_the_same_tensor_need_one_quantize_op(tmp_path):
    """An untrained LeViT's class and distillation heads have equal BatchNorms on the same pooled tokens, so their
    two input quantizers compute one tensor and coremltools merges them into one quantize op: the check counts
    what the traced graph holds once equal computations are merged (it failed with 95 ops for 96 sites), and
    still fails a program with fewer quantize ops than that."""
    import json

    from edgevit.runtimes import runtime

    out = tmp_path / "run"
    res = cli("compress", "--recipe", "int8_ptq", "--out", str(out), "--model", "timm:levit_128s",
              "--set", "model.input_size=64", "--set", "model.num_classes=10", "--set", "calibration.num=16",
              "--set", "validate.eval.num=20", "--set", "budget=null", "--set", "export=[export/coreml-w8a8.yaml]")
    assert res.returncode == 0, res.stderr
    rep = json.loads((out / "report.json").read_text())
    row = next(r for r in rep["results"] if r["name"] == "coreml-w8a8")
    e = row["export"]
    sites, traced = e["expected"]["activation_sites"], e["traced_quantize_ops"]
    assert traced["all"] == sites and traced["distinct"] == sites - 1 == e["activation_quantize_ops"]
    check = next(c for c in rep["checks"] if c["name"] == "coreml-w8a8: activations quantized (W8A8)")
    assert check["ok"] and "1 compute what another site computes" in check["detail"], check
    row["export"] = e | {"activation_quantize_ops": traced["distinct"] - 1}
    short = next(c for c in runtime("coreml").checks(row) if "activations quantized" in c["name"])
    assert not short["ok"]
