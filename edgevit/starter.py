"""``edgevit init``: a commented starter recipe for the user's own model, validated before it is written.

The model is loaded once to fill in what a recipe needs from it (preprocessing, classes, whether it has
attention the ViT quantizers reach and convolutions the hybrid search cares about); the targets pick the
export presets and local device profiles; the calibration and evaluation folders become data sections
(the shipped CIFAR-10 images where none is given, so that the recipe runs on a fresh machine).
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml
from torch import nn

from edgevit.errors import BadInput
from edgevit.paths import user_path

#: target -> (export presets, local device profile or None, comment)
TARGETS = {
    "onnxruntime": (["export/onnx-fp32.yaml", "export/onnx-int8.yaml"], "devices/local-ort-cpu.yaml",
                    "INT8 QDQ ONNX for ONNX Runtime, timed here against the FP32 file"),
    "tensorrt": (["export/onnx-int8-tensorrt.yaml"], None,
                 "QDQ ONNX lowered for TensorRT's rules (build the engine on the GPU: export/tensorrt-int8.yaml "
                 "and a device profile such as devices/jetson-orin-trt.yaml)"),
    "coreml": (["export/coreml-w8a8.yaml"], None,
               "CoreML W8A8 package (converted here; predictions need macOS: devices/mac-coreml.yaml over SSH)"),
    "openvino": (["export/openvino-fp32.yaml", "export/openvino-int8.yaml"], "devices/local-openvino-cpu.yaml",
                 "OpenVINO IRs, timed here on the CPU"),
}
SHIPPED_CALIB = "calibration/builtin.yaml"


def _describe(model: nn.Module) -> tuple[bool, bool]:
    """(has attention the ViT quantizers reach, has convolutions)."""
    from edgevit.models.families import attention_family

    attention = any(attention_family(m) is not None for m in model.modules())
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    return attention, convs > 1  # a patch embedding alone does not make a hybrid


def _folder_labels(model_labels: list[str], folders: list[str] | None) -> list[str] | None:
    """The evaluation set's class folder names when the model only has placeholder labels and as many outputs
    as there are folders; else None."""
    from edgevit.models.sources import placeholder_labels

    return list(folders) if folders and len(folders) == len(model_labels) and placeholder_labels(model_labels) \
        else None


def _name(out: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", out.stem).lstrip(".") or "my_recipe"
    return name[:100]


def starter_recipe(model: str, out: Path, checkpoint: Path | None = None, trust_checkpoint: bool = False,
                   calib: Path | None = None, eval_images: Path | None = None,
                   targets: list[str] = ("onnxruntime",), kwargs: dict | None = None) -> str:
    """The text of a commented recipe for ``model`` (validated by loading it as ``edgevit compress`` would)."""
    from edgevit.data import open_image_set
    from edgevit.models import load_model
    from edgevit.recipe import ModelConfig

    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise BadInput(f"--target {unknown[0]!r}: choose from {', '.join(TARGETS)}")
    try:
        mcfg = ModelConfig(source=model, checkpoint=checkpoint, trust_checkpoint=trust_checkpoint, kwargs=kwargs or {})
    except ValueError as e:  # pydantic's validation error, as one line
        raise BadInput(f"--model / --kwargs: {str(e).splitlines()[-1].strip()}") from e
    net, info = load_model(mcfg)
    attention, convs = _describe(net)
    evalset = open_image_set(eval_images) if eval_images else None
    labeled = bool(evalset and evalset.labeled)
    folder_names = _folder_labels(info.labels, evalset.classes if labeled else None)
    kind = "hybrid conv+attention" if attention and convs else "vision transformer" if attention else "convolutional"

    lines = [f"# Starter recipe written by `edgevit init` for {model} ({info.arch}, {kind}, {info.num_classes} classes).",
             "# Run it with: edgevit compress --recipe " + str(out), "",
             f"name: {_name(out)}",
             f"description: W8A8 post-training quantization of {model} for {', '.join(targets)}.", "seed: 0", "",
             "# preprocessing as the model states it; change it here if your images were prepared otherwise"]
    model_section = {"source": model}
    if checkpoint:
        model_section["checkpoint"] = str(user_path(checkpoint).resolve())
    if trust_checkpoint:
        model_section["trust_checkpoint"] = True
    if kwargs:
        model_section["kwargs"] = dict(kwargs)
    model_section.update(input_size=info.input_size, crop_pct=round(info.crop_pct, 6), mean=list(info.mean),
                         std=list(info.std))
    if folder_names:
        model_section["labels"] = folder_names
        lines += ["# labels: the class folders of --eval in sorted order (torchvision ImageFolder's class order);",
                  "# the artifacts name their predictions with them: check that this is your model's output order"]
    lines += _yaml({"model": model_section})
    if info.random_weights:
        lines += ["# no checkpoint: random weights, fine for timing and export checks; top-1 means nothing"]
    lines.append("")
    if calib:
        lines += ["# 256 images like the ones the model will see (labels not needed)",
                  *_yaml({"calibration": {"path": str(user_path(calib).resolve()), "num": 256}})]
    else:
        lines += ["# the shipped CIFAR-10 images, so that this runs as it is: replace them with ~256 of your own",
                  f"calibration: {SHIPPED_CALIB}"]
    lines += ["", "quantize:",
              "  weights: {bits: 8, granularity: channel, symmetric: true, method: mse}",
              "  activations: {bits: 8, symmetric: false, method: percentile, percentile: 99.999}",
              "  attention: true   # quantize Q, K, V and the softmax output of every attention edgevit adapts"]
    if attention:
        lines += ["  # for an integer accelerator: softmax: adalog, gelu: adalog (log quantizers made for ViT activations)"]
    if convs and attention:
        lines += ["  # a hybrid: a per-layer granularity/scheme search (Q-HyViT) often wins a few tenths of a point:",
                  "  # search: {granularity: [tensor, channel], symmetric: [false, true], bridges: true}"]
    exports, devices = [], []
    for t in targets:
        presets, device, comment = TARGETS[t]
        exports += [p for p in presets if p not in exports]
        devices += [device] if device and device not in devices else []
        lines += [f"# {t}: {comment}"]
    lines += [f"export: [{', '.join(exports)}]", "", "validate:"]
    if eval_images:
        lines += ["  # held-out images; with class sub-folders top-1 is measured, without only agreement with FP32",
                  f"  eval: {{path: {_quote(user_path(eval_images).resolve())}, num: 1000}}"]
    elif calib:
        lines += ["  # no --eval given: the calibration images stand in (unlabeled: agreement with FP32 only);",
                  "  # pass held-out images instead",
                  f"  eval: {{path: {_quote(user_path(calib).resolve())}, num: 1000}}"]
    else:
        lines += ["  # the shipped CIFAR-10 evaluation images: replace with held-out images of your own",
                  "  eval: calibration/builtin-val.yaml"]
        labeled = info.num_classes == 10
    lines += [f"  devices: [{', '.join(devices)}]" if devices else "  devices: []", ""]
    if labeled:
        lines += ["# what the whole run may spend: top-1 points against the FP32 model on validate.eval",
                  "budget: {max_accuracy_drop: 1.0}"]
    else:
        lines += ["# what the whole run may spend: points of top-1 agreement with the FP32 model (no labels)",
                  "budget: {max_agreement_loss: 2.0}"]
    return "\n".join(lines) + "\n"


def _quote(p: Path) -> str:
    return yaml.safe_dump(str(p), default_style='"').strip()


def _yaml(data: dict) -> list[str]:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=110).rstrip().splitlines()


def write_starter(out: Path, text: str, force: bool = False) -> None:
    """Validate ``text`` as a recipe at ``out`` and write it atomically (an existing file only with ``force``)."""
    from edgevit.recipe import load_recipe
    from edgevit.report.writers import atomic_write

    out = Path(out)
    if out.exists() and not force:
        raise BadInput(f"{out} exists: pass --force to replace it, or choose another --out")
    probe = out.with_name(f".{out.name}.check.yaml")
    try:
        probe.write_text(text)
        load_recipe(probe)
    finally:
        probe.unlink(missing_ok=True)
    atomic_write(out, text)
