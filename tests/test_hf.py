"""``hf:FOLDER``: Hugging Face image classifiers from a local folder. The models are built here from small
configs and written with ``save_pretrained`` (nothing is downloaded); ViT, DeiT, MobileViT, MobileViTV2 and LeViT
become the equivalent timm models, so every stage applies; a family without a converter (Swin here) runs as it is."""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch

from conftest import CALIB_DIR, EVAL_DIR, cli
from edgevit.data import Preprocess, open_image_set
from edgevit.errors import BadInput
from edgevit.models import load_model
from edgevit.recipe import ModelConfig

transformers = pytest.importorskip("transformers")

LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SMALL = dict(image_size=32, patch_size=4, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=128, num_labels=10, id2label=dict(enumerate(LABELS)),
             label2id={n: i for i, n in enumerate(LABELS)})


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Small ViT, DeiT (with and without teacher) and MobileViT classifiers saved as transformers writes them."""
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    made = {"vit": (transformers.ViTConfig(**SMALL), transformers.ViTForImageClassification),
            "deit": (transformers.DeiTConfig(**SMALL), transformers.DeiTForImageClassificationWithTeacher),
            "deit-no-teacher": (transformers.DeiTConfig(**SMALL), transformers.DeiTForImageClassification),
            "mobilevit": (transformers.MobileViTConfig(image_size=32, num_labels=10, hidden_sizes=[32, 40, 48],
                                                       neck_hidden_sizes=[8, 8, 16, 24, 32, 40, 80],
                                                       id2label=SMALL["id2label"], label2id=SMALL["label2id"]),
                          transformers.MobileViTForImageClassification),
            "levit": (transformers.LevitConfig(image_size=64, num_labels=10, hidden_sizes=[32, 48, 64],
                                               num_attention_heads=[2, 3, 4], depths=[1, 1, 1], key_dim=[16, 16, 16],
                                               id2label=SMALL["id2label"], label2id=SMALL["label2id"]),
                      transformers.LevitForImageClassificationWithTeacher),
            "mobilevitv2": (transformers.MobileViTV2Config(image_size=64, num_labels=10, width_multiplier=0.25,
                                                           id2label=SMALL["id2label"], label2id=SMALL["label2id"]),
                            transformers.MobileViTV2ForImageClassification),
            "swin": (transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                                             window_size=4, num_labels=10), transformers.SwinForImageClassification)}
    for name, (config, cls) in made.items():
        model = cls(config).eval()
        with torch.no_grad():  # trained-looking BatchNorm statistics, so that the conversion check means something
            for m in model.modules():
                if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
                    m.running_mean.normal_(0, 0.5), m.running_var.uniform_(0.5, 2), m.weight.normal_(1, 0.2)
                if hasattr(m, "attention_biases"):
                    m.attention_biases.normal_()
        model.save_pretrained(root / name)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "vit")
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "swin")
    transformers.ViTImageProcessor(size={"height": 64, "width": 64}).save_pretrained(root / "mobilevitv2")
    transformers.DeiTImageProcessor(size={"height": 36, "width": 36}, crop_size={"height": 32, "width": 32},
                                    resample=3).save_pretrained(root / "deit")
    transformers.MobileViTImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}
                                         ).save_pretrained(root / "mobilevit")
    transformers.LevitImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}
                                     ).save_pretrained(root / "levit")
    return root


def _hf(path):
    return transformers.AutoModelForImageClassification.from_pretrained(path, local_files_only=True).eval()


def _compress(recipe: str, name: str, folders, out, *sets: str) -> dict:
    """One `edgevit compress` of an HF folder with no device timing and no budget; its report.json."""
    args = [a for kv in ("validate.devices=[]", "budget=null", *sets) for a in ("--set", kv)]
    res = cli("compress", "--recipe", recipe, "--model", f"hf:{folders / name}", "--out", str(out), *args)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads((out / "report.json").read_text())


def _images(info, n=16):
    pre = Preprocess(info.input_size, info.mean, info.std, info.crop_pct, info.interpolation)
    return torch.from_numpy(open_image_set(EVAL_DIR, num=n, seed=0).load(pre)[0])


@pytest.mark.parametrize("name, arch", [("vit", "timm VisionTransformer"), ("deit", "timm VisionTransformerDistilled"),
                                        ("deit-no-teacher", "timm VisionTransformerDistilled"),
                                        ("mobilevit", "timm ByobNet (MobileViT blocks)"),
                                        ("levit", "timm LevitDistilled"),
                                        ("mobilevitv2", "timm ByobNet (MobileViTV2 blocks)")])
def test_families_become_timm_models_with_the_same_logits(folders, name, arch):
    model, info = load_model(ModelConfig(source=f"hf:{folders / name}"))
    assert info.arch.endswith(arch) and info.num_classes == 10
    assert info.input_size == (64 if name in ("levit", "mobilevitv2") else 32)
    notes = {"deit-no-teacher": "no preprocessor_config.json", "mobilevit": "RGB->BGR flip is folded"}
    assert [n for n in info.notes if notes.get(name, "-") not in n] == []
    x = _images(info)
    with torch.no_grad():  # MobileViT's processor hands the model BGR; edgevit's artifact takes RGB
        want = _hf(folders / name)(pixel_values=x.flip(1) if name == "mobilevit" else x).logits
        got = model(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    if name == "vit":
        assert (info.input_size, info.crop_pct, info.mean, info.resize) == (32, 1.0, (0.5, 0.5, 0.5), "exact")
    if name == "deit":  # resize to 36 x 36, center crop 32, bicubic
        assert (info.input_size, info.interpolation) == (32, "bicubic") and info.crop_pct == pytest.approx(32 / 36)


@pytest.mark.parametrize("name", ["vit", "deit", "mobilevit", "levit"])
def test_preprocessing_is_the_processors(folders, name):
    """edgevit's preprocessing from preprocessor_config.json gives the pixels the transformers processor gives,
    on a non-square image (ViT/DeiT resize both sides, MobileViT the short side; MobileViT flips to BGR,
    which edgevit folds into the model)."""
    from PIL import Image

    _, info = load_model(ModelConfig(source=f"hf:{folders / name}"))
    img = Image.open(open_image_set(EVAL_DIR, num=1, seed=0).files[0]).convert("RGB").resize((48, 40))
    want = transformers.AutoImageProcessor.from_pretrained(folders / name)(img, return_tensors="np")["pixel_values"][0]
    got = Preprocess(info.input_size, info.mean, info.std, info.crop_pct, info.interpolation, info.resize)(img)
    got = got[::-1] if name == "mobilevit" else got
    assert np.abs(got - want).max() <= 2 / 255 / min(info.std) + 1e-6  # resampling rounds to a code or two


@pytest.mark.parametrize("name", ["vit", "mobilevit"])
def test_pruning_applies_to_converted_models(folders, name):
    """2:4 and block pruning reach the converted models' Linear/Conv layers as they reach timm's."""
    from edgevit.prune import PruneConfig, prune

    model, info = load_model(ModelConfig(source=f"hf:{folders / name}"))
    x = _images(info, 16)
    with torch.no_grad():
        rep = prune(model, PruneConfig(nm={"criterion": "magnitude"}, images=16), x)
        w = model.blocks[0].mlp.fc1.weight if name == "vit" else model.stages[2][1].transformer[0].mlp.fc1.weight
    assert len(rep["layers"]) >= 8
    groups = w.reshape(w.shape[0], -1, 4)
    assert bool(((groups != 0).sum(-1) <= 2).all())  # every group of 4 keeps at most 2


def test_w8a8_adalog_quantizes_the_softmax_and_gelu_of_an_hf_vit(folders, tmp_path):
    """The issue's command on an HF ViT: softmax and GELU sites on its attention and MLP (listed in the
    report), the INT8 ONNX agrees with its simulation, and the FP32 ONNX with the transformers model."""
    out = tmp_path / "run"
    rep = _compress("w8a8_adalog", "vit", folders, out, "validate.eval.num=100")
    kinds = [v["kind"] for v in rep["quantization"]["plan"]["activations"].values()]
    assert kinds.count("attn_softmax") == 2 and kinds.count("post_act") == 2
    assert rep["quantization"]["plan"]["counts"]["nonuniform_adalog"] == 4
    assert "2 post-softmax (adalog), 2 post-GELU/activation (adalog)" in (out / "report.md").read_text()
    agree = [c for c in rep["checks"] if "agrees with the simulation" in c["name"]]
    assert agree and all(c["ok"] for c in agree)
    _, info = load_model(ModelConfig(source=f"hf:{folders / 'vit'}"))
    x = _images(info, 32)
    sess = ort.InferenceSession(str(out / "onnx-fp32.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = _hf(folders / "vit")(pixel_values=x).logits.numpy()
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(got - want).max() < 1e-3  # the FP32 parity tolerance of the run's own check


def test_tome_merges_tokens_in_an_hf_vit_and_int8_ptq_runs_on_deit_and_levit(folders, tmp_path):
    tokens = _compress("tome_fp32", "vit", folders, tmp_path / "tome", "tokens.r=8", "tokens.min_time_saving=null",
                       "tokens.min_saving=null", "validate.eval.num=50")["tokens"]
    assert [s["stage"] for s in tokens["stages"]] == ["blocks"] and tokens["tokens_per_block"]["blocks"] == [65, 57]
    assert tokens["flops_ratio"] < 0.8
    for name, arch, softmax in (("deit", "VisionTransformerDistilled", 2), ("levit", "LevitDistilled", 5)):
        rep = _compress("int8_ptq", name, folders, tmp_path / name, "validate.eval.num=50", "quantize.placement=all")
        assert rep["model"]["arch"].endswith(arch) and rep["status"] == "ok"
        # one per block, and on LeViT one per downsampling attention between its three stages
        assert rep["quantization"]["plan"]["counts"]["attn_softmax"] == softmax
    # LeViT's activations (Hardswish) before each attention output and each MLP's second layer: 5 + 5
    assert rep["quantization"]["plan"]["counts"]["post_act"] == 10


def test_w8a8_adalog_reaches_mobilevitv2_separable_attention_and_conv_mlp(folders, tmp_path):
    """MobileViTV2 (9 transformer blocks): AdaLog on each separable attention's softmax and on the SiLU
    output feeding each ConvMlp's 1x1 conv, with the shift folded into that conv's bias; the INT8 ONNX
    agrees with its simulation."""
    out = tmp_path / "run"
    rep = _compress("w8a8_adalog", "mobilevitv2", folders, out, "validate.eval.num=100")
    acts = rep["quantization"]["plan"]["activations"]
    posts = [k for k, v in acts.items() if v["kind"] == "post_act"]
    assert sum(v["kind"] == "attn_softmax" for v in acts.values()) == 9 and len(posts) == 9
    assert all(k.endswith("mlp.fc2.input") for k in posts)
    assert rep["quantization"]["plan"]["counts"]["nonuniform_adalog"] == 18
    assert "9 post-softmax (adalog), 9 post-GELU/activation (adalog)" in (out / "report.md").read_text()
    agree = [c for c in rep["checks"] if "agrees with the simulation" in c["name"]]
    assert agree and all(c["ok"] for c in agree), agree


def test_a_family_without_converter_runs_as_it_is(folders, tmp_path):
    """Swin (no converter): the transformers model itself; Linear/Conv PTQ runs and the report says what does
    not apply."""
    model, info = load_model(ModelConfig(source=f"hf:{folders / 'swin'}"))
    assert info.arch == "transformers SwinForImageClassification" and info.num_classes == 10
    assert any("no converter" in n for n in info.notes)
    x = _images(info, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _hf(folders / "swin")(pixel_values=x).logits)
    out = tmp_path / "run"
    rep = _compress("int8_ptq", "swin", folders, out, f"calibration.path={CALIB_DIR}", "calibration.num=32",
                    "validate.eval.num=50", "quantize.placement=all")
    assert "Model note: model_type 'swin' has no converter" in (out / "report.md").read_text()
    counts = rep["quantization"]["plan"]["counts"]
    assert counts["linear_input"] > 0 and counts.get("attn_softmax", 0) == 0


def test_batchnorm_folds_in_transformers_conv_layers(folders):
    """An unconverted transformers model's conv + BatchNorm layers (``convolution`` / ``normalization``) fold
    like timm's, outputs unchanged."""
    from edgevit.models.hf import HFClassifier
    from edgevit.quant.fold import fold_batchnorm

    model = HFClassifier(_hf(folders / "mobilevitv2"))
    bns = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        folded = fold_batchnorm(model)
        torch.testing.assert_close(model(x), before, atol=1e-4, rtol=1e-4)
    assert bns > 20 and len(folded) == bns and not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_hybrid_w8a8_on_an_hf_mobilevit_quantizes_its_attention(folders, tmp_path):
    """The converted MobileViT goes through the hybrid recipe like timm's: softmax sites in its MobileViT blocks,
    the INT8 ONNX agrees with its simulation, the FP32 ONNX with transformers (given BGR)."""
    out = tmp_path / "run"
    rep = _compress("hybrid_w8a8", "mobilevit", folders, out, "calibration.num=64", "validate.eval.num=100",
                    "quantize.placement=all")
    kinds = [v["kind"] for v in rep["quantization"]["plan"]["activations"].values()]
    assert kinds.count("attn_softmax") == 2 + 4 + 3  # one per transformer layer
    agree = [c for c in rep["checks"] if "agrees with the simulation" in c["name"]]
    assert agree and all(c["ok"] for c in agree)
    _, info = load_model(ModelConfig(source=f"hf:{folders / 'mobilevit'}"))
    x = _images(info, 16)
    sess = ort.InferenceSession(str(out / "onnx-fp32.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = _hf(folders / "mobilevit")(pixel_values=x.flip(1)).logits.numpy()
    assert np.abs(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0] - want).max() < 1e-3


def test_folders_that_cannot_be_used_are_one_line_errors(folders, tmp_path):
    res = cli("compress", "--recipe", "int8_ptq", "--model", "hf:google/vit-base-patch16-224",
                  "--out", str(tmp_path / "x"))
    assert res.returncode == 2 and "does not download" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "x").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="no config.json"):
        load_model(ModelConfig(source=f"hf:{tmp_path / 'empty'}"))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for f in ("config.json", "preprocessor_config.json"):
        shutil.copy(folders / "vit" / f, pickled / f)
    torch.save(_hf(folders / "vit").state_dict(), pickled / "pytorch_model.bin")  # as transformers 4 wrote it
    with pytest.raises(BadInput, match="--trust-checkpoint"):
        load_model(ModelConfig(source=f"hf:{pickled}"))
    _, info = load_model(ModelConfig(source=f"hf:{pickled}", trust_checkpoint=True))
    assert info.labels == LABELS
    with pytest.raises(BadInput, match="not used with hf:"):
        load_model(ModelConfig(source=f"hf:{folders / 'vit'}", checkpoint=folders / "vit" / "model.safetensors"))


def test_export_command_names_the_artifact_after_the_folder(folders, tmp_path):
    res = cli("export", "--model", f"hf:{folders / 'vit'}", "--to", "onnx", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr[-2000:]
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "vit-fp32.onnx")).metadata_props}
    assert meta["model_source"] == f"hf:{folders / 'vit'}" and json.loads(meta["labels"]) == LABELS
    assert meta["resize"] == "exact"
