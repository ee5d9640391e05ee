"""``edgevit init`` writes a starter recipe that ``edgevit compress`` then runs: for a timm model with a checkpoint
trained at another size, a Hugging Face folder and a user's Python file."""
from __future__ import annotations

import json

import pytest
import yaml
from safetensors.torch import save_file

from conftest import CALIB_DIR, EVAL_DIR, cli, fast
from edgevit.models import load_model
from edgevit.recipe import ModelConfig, load_recipe

FAST = fast(eval_num=40, calib_num=32, devices=False) + ["--set", "quantize.placement=all"]


def _compress(recipe, out):
    res = cli("compress", "--recipe", str(recipe), "--out", str(out), *FAST)
    assert res.returncode in (0, 1), res.stderr[-2000:]
    assert "error:" not in res.stderr
    rep = json.loads((out / "report.json").read_text())
    # these models have random weights: only accuracy-like checks may fail, never the artifacts themselves
    failed = [c["name"] for c in rep["checks"] if not c["ok"]]
    assert all("agrees with the simulation" in n or "budget" in n for n in failed), failed
    return rep


def test_init_for_a_timm_checkpoint_trained_at_another_size(tmp_path):
    levit, _ = load_model(ModelConfig(source="timm:levit_128s", kwargs={"img_size": 64, "num_classes": 10}))
    ckpt = tmp_path / "levit64.safetensors"
    save_file({k: v.contiguous() for k, v in levit.state_dict().items()}, str(ckpt))
    recipe = tmp_path / "levit.yaml"
    res = cli("init", "--model", "timm:levit_128s", "--checkpoint", str(ckpt), "--kwargs", "{img_size: 64}",
              "--calib", str(CALIB_DIR), "--eval", str(EVAL_DIR), "--target", "onnxruntime", "--target",
              "tensorrt", "--out", str(recipe))
    assert res.returncode == 0, res.stderr
    text = recipe.read_text()
    data = yaml.safe_load(text)
    assert data["model"]["kwargs"] == {"img_size": 64} and data["model"]["input_size"] == 64
    assert data["budget"] == {"max_accuracy_drop": 1.0}  # labeled eval images: top-1 points
    # LeViT's labels are placeholders (class_0 ...): the eval folders name the classes, in ImageFolder's order
    assert data["model"]["labels"] == sorted(d.name for d in EVAL_DIR.iterdir() if d.is_dir())
    assert "export/onnx-int8-tensorrt.yaml" in data["export"] and "# tensorrt:" in text
    rec = load_recipe(recipe)
    assert rec.calibration.path == CALIB_DIR.resolve() and rec.validation.eval.path == EVAL_DIR.resolve()
    rep = _compress(recipe, tmp_path / "run")
    assert {"onnx-fp32", "onnx-int8", "onnx-int8-tensorrt"} <= {r["name"] for r in rep["results"]}
    assert rep["data"]["eval"]["label_mapping"] == "by class name" and rep["model"]["labels"][0] == "airplane"
    again = cli("init", "--model", "timm:levit_128s", "--out", str(recipe))
    assert again.returncode == 2 and "--force" in again.stderr and recipe.read_text() == text


def test_init_for_an_hf_folder_and_a_python_file(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(image_size=32, patch_size=4, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=128, num_labels=10)
    transformers.ViTForImageClassification(cfg).save_pretrained(tmp_path / "vit")
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "vit")
    recipe = tmp_path / "vit.yaml"
    res = cli("init", "--model", f"hf:{tmp_path / 'vit'}", "--target", "openvino", "--out", str(recipe))
    assert res.returncode == 0, res.stderr
    data = yaml.safe_load(recipe.read_text())
    assert data["model"]["mean"] == [0.5, 0.5, 0.5] and data["calibration"] == "calibration/builtin.yaml"
    assert data["export"] == ["export/openvino-fp32.yaml", "export/openvino-int8.yaml"]
    assert "gelu: adalog" in recipe.read_text()  # the ViT quantizers are offered where attention is adapted
    rep = _compress(recipe, tmp_path / "run-vit")
    assert {"openvino-fp32", "openvino-int8"} <= {r["name"] for r in rep["results"]}

    (tmp_path / "net.py").write_text(
        "import torch.nn as nn\n"
        "def build():\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))\n")
    recipe = tmp_path / "net.yaml"
    res = cli("init", "--model", f"file:{tmp_path / 'net.py'}:build", "--calib", str(CALIB_DIR), "--out",
              str(recipe), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    text = recipe.read_text()
    data = yaml.safe_load(text)
    assert data["budget"] == {"max_agreement_loss": 2.0}  # the calibration images stand in, without labels
    assert "adalog" not in text and "convolutional" in text.splitlines()[0] and "labels" not in data["model"]
    _compress(recipe, tmp_path / "run-net")
    five = tmp_path / "five"  # as many class folders as the model has outputs, or no labels are written
    for d in sorted(EVAL_DIR.iterdir())[:5]:
        (five / d.name).mkdir(parents=True)
        (five / d.name / "a.png").write_bytes(next(d.iterdir()).read_bytes())
    for images, labels in ((EVAL_DIR, sorted(d.name for d in EVAL_DIR.iterdir())), (five, None)):
        res = cli("init", "--model", f"file:{tmp_path / 'net.py'}:build", "--eval", str(images), "--out",
                  str(recipe), "--force", cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        assert yaml.safe_load(recipe.read_text())["model"].get("labels") == labels


def test_init_refuses_bad_arguments(tmp_path):
    res = cli("init", "--model", "builtin:hybrid-cifar10", "--kwargs", "[1, 2]", "--out", str(tmp_path / "r.yaml"))
    assert res.returncode == 2 and "--kwargs" in res.stderr
    res = cli("init", "--model", "timm:levit_128s", "--kwargs", "{img_sz: 64}", "--out", str(tmp_path / "r.yaml"))
    assert res.returncode == 2 and "img_sz" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "r.yaml").exists() and not list(tmp_path.glob(".*"))
