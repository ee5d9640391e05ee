"""Model sources: built-in, timm + checkpoint (safe loading), a user's Python file."""
from __future__ import annotations

import argparse

import pytest
import torch
from safetensors.torch import save_file

from edgevit.errors import BadInput
from edgevit.models import BUILTINS, load_model
from edgevit.recipe import ModelConfig

TIMM_SMALL = "timm:vit_tiny_patch16_224"


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_builtin_loads_with_card(name):
    model, info = load_model(ModelConfig(source=f"builtin:{name}"))
    assert info.num_classes == 10 and info.input_size == BUILTINS[name].input_size and info.labels[0] == "airplane"
    assert info.card["test_top1"] > 0.5 and "train_reference.py" in info.card["command"]
    assert info.card["input_size"] == info.input_size
    with torch.no_grad():
        assert model(torch.zeros(2, 3, info.input_size, info.input_size)).shape == (2, 10)


def _timm_state(num_classes: int) -> dict:
    import timm

    return timm.create_model(TIMM_SMALL[5:], pretrained=False, num_classes=num_classes).state_dict()


def test_timm_model_is_built_for_the_input_size(tmp_path):
    """model.input_size builds a timm architecture whose layers depend on it (LeViT's attention biases) at
    that size, and its checkpoint trained at that size loads; one that takes any size (MobileViT) is built
    as usual."""
    levit, info = load_model(ModelConfig(source="timm:levit_128s", input_size=64, num_classes=10))
    assert info.input_size == 64
    with torch.no_grad():
        assert levit(torch.zeros(1, 3, 64, 64)).shape == (1, 10)
    save_file({k: v.contiguous() for k, v in levit.state_dict().items()}, str(tmp_path / "levit64.safetensors"))
    again, _ = load_model(ModelConfig(source="timm:levit_128s", input_size=64,
                                      checkpoint=tmp_path / "levit64.safetensors"))
    with torch.no_grad():
        x = torch.randn(2, 3, 64, 64)
        torch.testing.assert_close(again(x), levit(x))
    default, _ = load_model(ModelConfig(source="timm:levit_128s", num_classes=10))
    with pytest.raises(RuntimeError):
        with torch.no_grad():
            default(torch.zeros(1, 3, 64, 64))
    mvit, info = load_model(ModelConfig(source="timm:mobilevit_xxs", input_size=64, num_classes=10))
    with torch.no_grad():
        assert info.input_size == 64 and mvit(torch.zeros(1, 3, 64, 64)).shape == (1, 10)


def test_timm_checkpoint_infers_num_classes(tmp_path):
    state = _timm_state(7)
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pth")
    model, info = load_model(ModelConfig(source=TIMM_SMALL, checkpoint=tmp_path / "ckpt.pth"))
    assert info.num_classes == 7 and len(info.labels) == 7 and info.input_size == 224
    assert torch.equal(model.state_dict()["head.weight"], state["head.weight"])


def test_timm_safetensors_and_recipe_preprocessing(tmp_path):
    save_file(_timm_state(5), str(tmp_path / "w.safetensors"))
    _, info = load_model(ModelConfig(source=TIMM_SMALL, checkpoint=tmp_path / "w.safetensors",
                                     mean=[0.1, 0.2, 0.3], std=[0.3, 0.2, 0.1], input_size=224,
                                     labels=list("abcde")))
    assert info.mean == (0.1, 0.2, 0.3) and info.input_size == 224 and info.labels == list("abcde")


def test_pickled_checkpoint_refused_unless_trusted(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"model": _timm_state(4), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(BadInput) as e:
        load_model(ModelConfig(source=TIMM_SMALL, checkpoint=path))
    assert "--trust-checkpoint" in str(e.value)
    _, info = load_model(ModelConfig(source=TIMM_SMALL, checkpoint=path, trust_checkpoint=True))
    assert info.num_classes == 4


def test_missing_corrupt_and_mismatched_checkpoints(tmp_path):
    with pytest.raises(BadInput, match="not found"):
        load_model(ModelConfig(source=TIMM_SMALL, checkpoint=tmp_path / "nope.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(BadInput, match="not a readable"):
        load_model(ModelConfig(source=TIMM_SMALL, checkpoint=tmp_path / "junk.pth"))
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    with pytest.raises(BadInput, match="does not fit the model"):
        load_model(ModelConfig(source=TIMM_SMALL, checkpoint=tmp_path / "other.pth", num_classes=3))


def test_unknown_models():
    with pytest.raises(BadInput, match="unknown built-in"):
        load_model(ModelConfig(source="builtin:nope"))
    with pytest.raises(BadInput, match="unknown timm model"):
        load_model(ModelConfig(source="timm:not_a_real_model_xyz"))


def test_python_file_source(tmp_path):
    (tmp_path / "net.py").write_text(
        "import torch.nn as nn\n"
        "def build():\n    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 6))\n"
        "def not_a_model():\n    return 3\n"
        "def broken():\n    open('/nonexistent/weights.pt')\n")
    model, info = load_model(ModelConfig(source=f"file:{tmp_path / 'net.py'}:build", input_size=16))
    assert info.num_classes == 6 and info.input_size == 16 and info.arch == "Sequential"
    with pytest.raises(BadInput, match="not a torch nn.Module"):
        load_model(ModelConfig(source=f"file:{tmp_path / 'net.py'}:not_a_model"))
    with pytest.raises(BadInput, match="has no function"):
        load_model(ModelConfig(source=f"file:{tmp_path / 'net.py'}:missing"))
    with pytest.raises(BadInput, match=r"broken\(\) raised FileNotFoundError: .*weights.pt"):
        load_model(ModelConfig(source=f"file:{tmp_path / 'net.py'}:broken"))


def test_a_timm_model_built_in_a_python_file_keeps_its_own_preprocessing(tmp_path, caplog):
    """A user's file that builds a timm model: the run takes the model's own size, mean, std and crop (timm's
    ``pretrained_cfg``: MobileViT is 256 px with mean 0 and std 1, not ImageNet's 224 px defaults), folds
    train-time branches as a ``timm:`` source would, and does not claim the weights are random."""
    (tmp_path / "mine.py").write_text(
        "import timm\n"
        "def mobilevit():\n    return timm.create_model('mobilevit_xxs', num_classes=5)\n"
        "def fastvit():\n    return timm.create_model('fastvit_t8', num_classes=5)\n"
        "def levit():\n    return timm.create_model('levit_128s', num_classes=5)\n")
    _, info = load_model(ModelConfig(source=f"file:{tmp_path / 'mine.py'}:mobilevit"))
    assert (info.input_size, info.mean, info.std, info.crop_pct) == (256, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 0.9)
    assert info.num_classes == 5 and not info.random_weights and info.arch == "mobilevit_xxs"
    assert "random unless it loads them" in caplog.text
    _, info = load_model(ModelConfig(source=f"file:{tmp_path / 'mine.py'}:mobilevit", input_size=64, mean=[0.5] * 3))
    assert (info.input_size, info.mean, info.std) == (64, (0.5, 0.5, 0.5), (1.0, 1.0, 1.0))  # the recipe wins
    model, _ = load_model(ModelConfig(source=f"file:{tmp_path / 'mine.py'}:fastvit"))
    folding = [m for m in model.modules() if hasattr(m, "reparameterize")]
    assert folding and all(getattr(m, "reparam_conv", None) is not None for m in folding)
    with pytest.raises(BadInput, match="its own input size is 224 px"):  # LeViT's attention biases fix its size
        load_model(ModelConfig(source=f"file:{tmp_path / 'mine.py'}:levit", input_size=64))


def test_timm_kwargs_build_the_model_the_checkpoint_was_trained_as(tmp_path):
    """model.kwargs reach timm.create_model (input_size follows img_size); a checkpoint trained at another
    size is one error line naming the first mismatching tensor, both shapes and the setting to change."""
    levit, _ = load_model(ModelConfig(source="timm:levit_128s", kwargs={"img_size": 64, "num_classes": 10}))
    ckpt = tmp_path / "levit64.safetensors"
    save_file({k: v.contiguous() for k, v in levit.state_dict().items()}, str(ckpt))
    again, info = load_model(ModelConfig(source="timm:levit_128s", checkpoint=ckpt, kwargs={"img_size": 64}))
    assert info.input_size == 64 and info.num_classes == 10
    with torch.no_grad():
        x = torch.randn(2, 3, 64, 64)
        torch.testing.assert_close(again(x), levit(x))
    with pytest.raises(BadInput) as e:
        load_model(ModelConfig(source="timm:levit_128s", checkpoint=ckpt))
    msg = str(e.value)
    assert "\n" not in msg and "stages.0.blocks.0.attn.attention_biases is (4, 16) in the checkpoint and (4, 196)" in msg
    assert "model.kwargs.img_size" in msg
    with pytest.raises(BadInput, match=r"does not accept model.kwargs \['img_sz'\]"):
        load_model(ModelConfig(source="timm:levit_128s", checkpoint=ckpt, kwargs={"img_sz": 64}))
    with pytest.raises(ValueError, match="apply to timm: sources only"):
        ModelConfig(source="builtin:hybrid-cifar10", kwargs={"img_size": 64})


def test_a_model_that_cannot_take_the_input_size_is_refused_at_load(tmp_path):
    """One forward pass at load: timm's EfficientFormer accepts img_size but keeps attention biases for 224 px, so
    at 64 px it fails; the error names the size, the model's own size and the setting (not a stage's traceback)."""
    with pytest.raises(BadInput) as e:
        load_model(ModelConfig(source="timm:efficientformer_l1", kwargs={"img_size": 64}))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("model timm:efficientformer_l1 does not run on a 64 px input (RuntimeError:")
    assert msg.endswith("its own input size is 224 px; change model.kwargs.img_size to a size the architecture supports")
    (tmp_path / "net.py").write_text(
        "import torch.nn as nn\n"
        "def build():\n    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 14 * 14, 6))\n")
    _, info = load_model(ModelConfig(source=f"file:{tmp_path / 'net.py'}:build", input_size=16))
    assert info.input_size == 16
    with pytest.raises(BadInput, match=r"does not run on a 32 px input \(RuntimeError: .*\); change model.input_size "
                                       r"to a size the architecture supports$"):
        load_model(ModelConfig(source=f"file:{tmp_path / 'net.py'}:build", input_size=32))
