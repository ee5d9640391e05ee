"""``hf:PATH``: a local Hugging Face image-classification folder (``config.json``, weights,
``preprocessor_config.json``), read with ``transformers`` and nothing downloaded.

A family with a converter (one module per family, registered with :func:`converter` on the config's
``model_type``) becomes the equivalent timm model, weights copied, so that every stage applies
(softmax/GELU quantizers, token merging, pruning); the conversion is checked against the
``transformers`` model on random inputs at every load. Any other image classifier runs as it is,
wrapped to return its logits: Linear/Conv quantization applies, and the model's notes say what does not.
"""
from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from edgevit.errors import BadInput
from edgevit.paths import user_path

log = logging.getLogger("edgevit")

#: model_type -> function(transformers model, its config) -> (timm module, description)
CONVERTERS: dict[str, Callable] = {}
PARITY_TOLERANCE = 1e-4  # max abs logit difference of a conversion, relative to the logits' scale
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}  # PIL's codes in preprocessor_config.json


def converter(*model_types: str):
    """Decorator: ``@converter("vit")`` makes ``fn(hf_model, config) -> (timm module, description)`` the
    conversion of that ``model_type``."""
    def wrap(fn: Callable) -> Callable:
        for t in model_types:
            CONVERTERS[t] = fn
        return fn
    return wrap


class HFClassifier(nn.Module):
    """A ``transformers`` image classifier as a module that maps pixels to logits (no converter)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.num_classes = int(model.config.num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def folder(spec: str) -> Path:
    """The folder an ``hf:PATH`` source names, or one line saying why it cannot be used."""
    path = user_path(spec[len("hf:"):])
    if not path.is_dir():
        hub_like = not path.is_absolute() and len(path.parts) == 2 and not str(path).startswith(".")
        hint = (f" ({spec[3:]!r} looks like a Hub id: edgevit does not download models; fetch it yourself, e.g. "
                f"`hf download {spec[3:]} --local-dir DIR`, and pass hf:DIR)") if hub_like else ""
        raise BadInput(f"model source {spec!r}: no such local folder{hint}")
    if not (path / "config.json").is_file():
        raise BadInput(f"model source {spec!r}: {path} has no config.json (expected a folder written by "
                       "save_pretrained)")
    return path


def _weights(path: Path, trust: bool) -> bool:
    """Whether the folder's weights are safetensors; pickled weights only when trusted."""
    if any(path.glob("*.safetensors")):
        return True
    pickled = [p.name for p in path.glob("*.bin")]
    if not pickled:
        raise BadInput(f"model source hf:{path}: no weights (model.safetensors or pytorch_model.bin) in the folder")
    if not trust:
        raise BadInput(f"model source hf:{path}: its weights are pickled ({pickled[0]}), and loading them could run "
                       "arbitrary code; re-save with safe_serialization=True, or, if you trust its origin, pass "
                       "--trust-checkpoint (model.trust_checkpoint: true)")
    return False


def preprocessing(path: Path, default_size: int = 224) -> dict:
    """input_size, crop_pct, resize mode, mean, std, interpolation and a channel flip from ``preprocessor_config.json``
    (transformers' defaults where a key is missing: no normalization unless ``do_normalize``)."""
    file = path / "preprocessor_config.json"
    p = json.loads(file.read_text()) if file.is_file() else {}
    size = p.get("size", default_size)
    exact = isinstance(size, dict) and "height" in size  # resized to height x width, the aspect not kept
    if isinstance(size, dict):
        side = size.get("shortest_edge") or size.get("height") or default_size
        if size.get("height") and size.get("width") and size["height"] != size["width"]:
            raise BadInput(f"{file}: size {size} is not square; set model.input_size to run it square")
    else:
        side = int(size)
    crop = p.get("crop_size") if p.get("do_center_crop") else None
    crop = (crop.get("height") or crop.get("shortest_edge")) if isinstance(crop, dict) else crop
    if p.get("image_processor_type", "").startswith("Levit") and crop:
        side = int(256 / 224 * side)  # LeViT's processor resizes the short side to 256/224 of its size
    normalize = p.get("do_normalize", False)
    return {"input_size": int(crop or side), "crop_pct": min(1.0, (crop or side) / side),
            "mean": tuple(p.get("image_mean", (0.5, 0.5, 0.5))) if normalize else (0.0, 0.0, 0.0),
            "std": tuple(p.get("image_std", (0.5, 0.5, 0.5))) if normalize else (1.0, 1.0, 1.0),
            "interpolation": _RESAMPLE.get(p.get("resample", 2), "bilinear"),
            "resize": "exact" if exact else "short_side",
            "flip_channels": bool(p.get("do_flip_channel_order", False)), "found": file.is_file()}


def _flip_first_conv(model: nn.Module) -> None:
    """Fold an RGB -> BGR flip of the input into the first convolution's weights (MobileViT's processor
    flips the channels; the artifact then takes RGB like every other)."""
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels == 3)
    with torch.no_grad():
        conv.weight.copy_(conv.weight.flip(1))


def load_hf(spec: str, trust: bool) -> tuple[nn.Module, dict]:
    """The model of an ``hf:PATH`` source and what ModelInfo needs (preprocessing, labels, arch, notes)."""
    path = folder(spec)
    try:
        import transformers
    except ImportError as e:
        raise BadInput(f"model source {spec!r} needs transformers: pip install 'edgevit[hf]'") from e
    safe = _weights(path, trust)
    transformers.utils.logging.disable_progress_bar()  # edgevit's own progress and log lines only
    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
        hf = transformers.AutoModelForImageClassification.from_pretrained(
            path, local_files_only=True, use_safetensors=safe, attn_implementation="eager")
    except (ValueError, OSError, KeyError) as e:
        raise BadInput(f"model source {spec!r}: transformers cannot load it as an image classifier: "
                       f"{str(e).splitlines()[0]}") from e
    hf.eval()
    size = getattr(config, "image_size", 224)
    pre = preprocessing(path, int(size if isinstance(size, int) else size[0]))
    notes = [] if pre["found"] else [f"no preprocessor_config.json: input {pre['input_size']} px (the config's "
                                     "image_size), no normalization (set model.mean / model.std)"]
    arch = f"transformers {type(hf).__name__}"
    model, how = _convert(hf, config, pre["input_size"])
    if how:
        arch += f" -> {how}"
    else:
        notes.append(f"model_type {config.model_type!r} has no converter ({', '.join(sorted(CONVERTERS))} have): "
                     "Linear/Conv weights and inputs are quantized, but softmax/GELU quantizers, token merging "
                     "and attention-head pruning do not apply")
    if pre["flip_channels"]:
        _flip_first_conv(model)
        notes.append("the processor's RGB->BGR flip is folded into the first convolution: artifacts take RGB")
    id2label = getattr(config, "id2label", None) or {}
    labels = [str(id2label.get(i, id2label.get(str(i), f"class_{i}"))) for i in range(len(id2label))]
    return model.eval(), {"arch": arch, "labels": labels, "notes": notes, **pre}


def _convert(hf: nn.Module, config, size: int) -> tuple[nn.Module, str | None]:
    """The timm equivalent of ``hf`` when its family has a converter and it computes the same logits."""
    fn = CONVERTERS.get(config.model_type)
    if fn is None:
        return HFClassifier(hf), None
    try:
        model, how = fn(hf, config)
    except (ValueError, AttributeError, RuntimeError) as e:  # a config the converter does not cover
        log.warning("%s does not convert to its timm equivalent (%s): running the transformers model as it is",
                    type(hf).__name__, e)
        return HFClassifier(hf), None
    model.eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = hf(pixel_values=x).logits, model(x)
    err = float((want - got).abs().max()) / max(1.0, float(want.abs().max()))
    if got.shape != want.shape or not err <= PARITY_TOLERANCE:
        log.warning("converting %s to %s changed its logits (relative max difference %.2e): running the "
                    "transformers model as it is", type(hf).__name__, how, err)
        return HFClassifier(hf), None
    log.info("%s converted to %s (logits within %.1e of transformers' on random inputs)", type(hf).__name__, how, err)
    return model, how


for _m in ("vit", "mobilevit", "levit"):  # mobilevit.py holds MobileViTV2 too
    importlib.import_module(f"{__name__}.{_m}")
