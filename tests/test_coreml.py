"""CoreML export: the built-in hybrid converts in each weight-compression variant and the saved package
is checked as far as Linux allows (classifier spec, labels, metadata, compressed-weight ops, size);
pruned weights are stored sparse; the folded preprocessing equals the model's own."""
from __future__ import annotations

import copy
import sys

import numpy as np
import pytest
import torch

from conftest import CALIB_DIR
from edgevit.data import Preprocess, open_image_set
from edgevit.errors import BadInput
from edgevit.export.coreml import _Normalized, export_coreml, unavailable
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
             for c in ("none", "w8", "palettize4")}
    for c, f in facts.items():
        assert f["input"] == {"name": "image", "type": "imageType", "width": 32, "height": 32}, c
        assert f["predicted_label"] == "classLabel" and "classLabel_probs" in f["outputs"]
        assert f["labels"] == info.labels
        assert f["metadata"]["mean"] == "[0.4914, 0.4822, 0.4465]" and f["metadata"]["compression"] == c
        assert not (tmp_path / f".tmp-{c}.mlpackage").exists()
    assert facts["none"]["compressed_ops"] == {}
    assert facts["w8"]["compressed_ops"].get("constexpr_affine_dequantize", 0) >= 50
    assert facts["palettize4"]["compressed_ops"].get("constexpr_lut_to_dense", 0) >= 50
    # measured: 2.06 MB FP16, 1.17 MB int8, 0.67 MB 4-bit
    assert facts["palettize4"]["size_bytes"] < facts["w8"]["size_bytes"] < 0.7 * facts["none"]["size_bytes"]


def test_pruned_weights_are_stored_sparse(tmp_path):
    model, info = load_model(ModelConfig(source="builtin:vit-cifar10"))
    x, _ = open_image_set(CALIB_DIR, num=32, seed=0).load(Preprocess(info.input_size, info.mean, info.std))
    sparse = copy.deepcopy(model)
    rep = prune(sparse, PruneConfig(nm={"criterion": "magnitude"}), torch.from_numpy(x))
    f = export_coreml(sparse, info, tmp_path / "sparse.mlpackage", "sparse")
    assert f["compressed_ops"].get("constexpr_sparse_to_dense") == len(rep["layers"]) == 24
    dense = export_coreml(model, info, tmp_path / "dense.mlpackage", "sparse")
    assert dense["compressed_ops"] == {}
    assert f["size_bytes"] < 0.8 * dense["size_bytes"]


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
    import edgevit.export.coreml as cm

    monkeypatch.setitem(sys.modules, "coremltools", None)  # as if not installed
    assert "pip install 'edgevit[coreml]'" in cm.unavailable()
    with pytest.raises(BadInput, match="export.0.precision: a CoreML artifact is fp16 or fp32"):
        build_recipe({"name": "x", "calibration": {"path": str(CALIB_DIR)}, "quantize": {},
                      "export": [{"format": "coreml", "precision": "int8"}]})
    with pytest.raises(BadInput, match="export.0.compression: only for format: coreml"):
        build_recipe({"name": "x", "export": [{"format": "onnx", "compression": "w8"}]})
