"""Model sources: ``builtin:NAME``, ``timm:NAME`` (+ checkpoint), ``hf:FOLDER`` (``edgevit.models.hf``) and
``file:path.py:function``."""
from __future__ import annotations

import importlib.util
import logging
import inspect
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from edgevit.errors import BadInput
from edgevit.models.builtin import BUILTINS
from edgevit.paths import user_path

log = logging.getLogger("edgevit")


@dataclass
class ModelInfo:
    """What the rest of the pipeline needs to know about a model besides its weights."""

    source: str
    arch: str
    num_classes: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    labels: list[str]
    crop_pct: float = 1.0
    interpolation: str = "bilinear"
    card: dict = field(default_factory=dict)
    random_weights: bool = False  # a timm architecture without a checkpoint: top-1 means nothing
    notes: list[str] = field(default_factory=list)  # what the source changed or what does not apply to it
    resize: str = "short_side"  # or "exact": both sides to input_size / crop_pct (Hugging Face height x width)

    def preprocessing(self) -> dict:
        """The preprocessing as plain data (for metadata and reports)."""
        return {"input_size": self.input_size, "mean": list(self.mean), "std": list(self.std),
                "crop_pct": self.crop_pct, "interpolation": self.interpolation, "resize": self.resize}


# --------------------------------------------------------------------------- checkpoints

def read_checkpoint(path: Path, trust: bool = False) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file, safely (``weights_only=True`` unless trusted)."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"checkpoint not found: {path} (check model.checkpoint / --checkpoint)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise BadInput(f"checkpoint {path} is not a valid safetensors file: {e}") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if found:
            raise BadInput(
                f"checkpoint {path} contains pickled Python objects ({found.group(1)}), and loading it could run "
                "arbitrary code; re-save it as a plain state_dict or .safetensors, or, if you trust "
                "its origin, pass --trust-checkpoint (model.trust_checkpoint: true)") from e
        raise BadInput(f"checkpoint {path} is not a readable PyTorch or safetensors file "
                       "(expected a state_dict saved with torch.save, or .safetensors)") from e
    except Exception as e:  # a file that is not a torch.save archive fails inside the unpickler in many ways
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BadInput(f"checkpoint {path} is not a readable PyTorch file: {first} (expected a state_dict saved "
                       "with torch.save, or .safetensors)") from e
    return _unwrap_state_dict(obj, path)


def _unwrap_state_dict(obj, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model_ema", "model", "module"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BadInput(f"checkpoint {path} holds no state dict (expected a mapping of parameter names "
                       "to tensors, optionally under 'state_dict' or 'model')")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def load_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path | str) -> None:
    """Load a state dict strictly, turning a mismatch into one line that names the first mismatching tensor."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k, v in own.items() if k in state and state[k].shape != v.shape]
    if wrong:
        k = wrong[0]
        more = f" (and {len(wrong) - 1} more tensors)" if len(wrong) > 1 else ""
        raise BadInput(f"checkpoint {path} does not fit the model: {k} is {tuple(state[k].shape)} in the checkpoint "
                       f"and {tuple(own[k].shape)} in the model{more}; {_likely_argument(k)}")
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise BadInput(f"checkpoint {path} does not fit the model: " + "; ".join(parts)
                       + " (is model.source the architecture it was trained with?)")
    model.load_state_dict(state, strict=True)


_SIZE_DEPENDENT = ("pos_embed", "position", "attention_bias", "rel_pos", "relative_position")


def _likely_argument(key: str) -> str:
    """The recipe setting that most likely explains a shape mismatch at tensor ``key``."""
    if any(t in key for t in _SIZE_DEPENDENT):
        return ("this tensor depends on the input size: was it trained at another resolution? set "
                "model.kwargs.img_size (e.g. --set model.kwargs.img_size=64)")
    if key.split(".")[0] in ("head", "classifier", "fc", "head_dist") or ".head." in key:
        return "the classifier has another number of classes: set model.num_classes"
    return ("is model.source the architecture it was trained with (model.kwargs passes other constructor "
            "arguments, e.g. img_size)?")


# --------------------------------------------------------------------------- sources

def _builtin(name: str) -> tuple[nn.Module, ModelInfo]:
    if name not in BUILTINS:
        raise BadInput(f"unknown built-in model {name!r} (available: {', '.join(sorted(BUILTINS))})")
    spec = BUILTINS[name]
    if not spec.weights_path.is_file():
        raise BadInput(f"built-in weights missing: {spec.weights_path} "
                       "(train them with benchmarks/train_reference.py)")
    model = spec.build()
    from safetensors.torch import load_file

    load_state(model, load_file(str(spec.weights_path)), spec.weights_path)
    info = ModelInfo(source=f"builtin:{name}", arch=spec.arch, num_classes=len(spec.labels),
                     input_size=spec.input_size, mean=spec.mean, std=spec.std,
                     labels=list(spec.labels), card=spec.card())
    return model, info


def _classifier_rows(state: dict[str, torch.Tensor], classifier: str | tuple | list | None) -> int | None:
    names = [classifier] if isinstance(classifier, str) else list(classifier or [])
    for name in names:
        w = state.get(f"{name}.weight")
        if w is not None and w.dim() >= 1:
            return int(w.shape[0])
    return None


def _timm(name: str, state: dict | None, num_classes: int | None, input_size: int | None = None,
          kwargs: dict | None = None) -> tuple[nn.Module, dict]:
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise BadInput(f"unknown timm model {name!r}" + (f" (similar: {', '.join(close)})" if close else ""))
    cfg = timm.models.get_pretrained_cfg(name)
    cfg = cfg.to_dict() if cfg is not None else {}
    if num_classes is None and state is not None:
        num_classes = _classifier_rows(state, cfg.get("classifier", "head"))
    args = ({"num_classes": num_classes} if num_classes else {}) | dict(kwargs or {})
    try:  # architectures whose layers depend on the input size (LeViT, EfficientViT-MSRA) are built for it
        sized = {"img_size": input_size} if input_size and "img_size" not in args else {}
        model = timm.create_model(name, pretrained=False, **args, **sized)
    except TypeError as e:
        if kwargs:  # the user's own arguments: say which one the architecture does not take
            raise BadInput(f"timm.create_model({name!r}) does not accept model.kwargs {sorted(kwargs)}: {e}") from e
        model = timm.create_model(name, pretrained=False, **args)  # takes any size, has no img_size argument
    return model, dict(model.pretrained_cfg or cfg)


def source_path(source: str) -> tuple[Path, str] | None:
    """(path, function) of an ``hf:FOLDER`` or ``file:path.py:function`` source; None for the others."""
    if source.startswith("hf:"):
        return user_path(source[len("hf:"):]), ""
    if source.startswith("file:"):
        body = source[len("file:"):]
        file, _, func = body.rpartition(":") if ":" in body else (body, "", "")
        return user_path(file), func
    return None


def _python_file(spec: str) -> nn.Module:
    path, func = source_path(spec)
    if not func:
        raise BadInput(f"model source {spec!r}: expected file:path/to/model.py:function_name")
    if not path.is_file():
        raise BadInput(f"model source {spec!r}: file not found: {path}")
    mod_spec = importlib.util.spec_from_file_location(f"edgevit_user_{path.stem}", path)
    if mod_spec is None or mod_spec.loader is None:
        raise BadInput(f"model source {spec!r}: {path} is not a Python file (expected file:path/to/model.py:function)")
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except Exception as e:
        raise BadInput(f"model source {spec!r}: importing {path} failed: {type(e).__name__}: {e}") from e
    fn = getattr(module, func, None)
    if fn is None or not callable(fn):
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                 and inspect.getmodule(v) is module]
        raise BadInput(f"model source {spec!r}: {path} has no function {func!r} (found: {', '.join(names)})")
    try:
        model = fn()
    except Exception as e:  # the user's code: name it, and exit as bad input rather than as edgevit's failure
        raise BadInput(f"model source {spec!r}: {func}() raised {type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise BadInput(f"model source {spec!r}: {func}() returned {type(model).__name__}, not a torch nn.Module")
    return model


def _hf(source: str, cfg, state) -> tuple[nn.Module, ModelInfo]:
    from edgevit.models.hf import load_hf

    if state is not None:
        raise BadInput("model.checkpoint is not used with hf: sources (the folder holds the weights)")
    model, d = load_hf(source, cfg.trust_checkpoint)
    num_classes = _count_outputs(model)
    labels = d["labels"] if len(d["labels"]) == num_classes else _default_labels(num_classes)
    for note in d["notes"]:
        log.warning("%s: %s", source, note)
    return model, ModelInfo(source=source, arch=d["arch"], num_classes=num_classes, input_size=d["input_size"],
                            mean=d["mean"], std=d["std"], labels=labels, crop_pct=d["crop_pct"],
                            interpolation=d["interpolation"], notes=d["notes"], resize=d["resize"])


def placeholder_labels(labels: list[str]) -> bool:
    """Whether ``labels`` only number the outputs: edgevit's ``class_3`` (``_default_labels``) or the
    ``LABEL_3`` that ``transformers`` writes into a config without ``id2label``."""
    return all(re.fullmatch(r"(class|LABEL)_\d+", n) for n in labels)


def _default_labels(n: int) -> list[str]:
    if n == 1000:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return [info.index_to_description(i).split(",")[0] for i in range(n)]
    return [f"class_{i}" for i in range(n)]


def load_model(cfg) -> tuple[nn.Module, ModelInfo]:
    """Build the model a ``ModelConfig`` names, load its weights safely, and describe its inputs.

    Preprocessing comes from the recipe when given, else from the model (built-in card or timm
    config). Returns the model in eval mode on the CPU.
    """
    source = cfg.source
    state = read_checkpoint(cfg.checkpoint, cfg.trust_checkpoint) if cfg.checkpoint else None
    tcfg: dict = {}  # a timm configuration: the model's own preprocessing
    if source.startswith("builtin:"):
        if state is not None:
            raise BadInput("model.checkpoint is not used with builtin: models (use timm:NAME or file:...)")
        model, info = _builtin(source[len("builtin:"):])
    elif source.startswith("hf:"):
        model, info = _hf(source, cfg, state)
    else:
        if source.startswith("timm:"):
            model, tcfg = _timm(source[len("timm:"):], state, cfg.num_classes, cfg.input_size, cfg.kwargs)
            arch = source[len("timm:"):]
        else:
            model = _python_file(source)
            tcfg = _own_config(model)
            # the architecture, not the file's path: it is written into artifacts an app ships
            arch = str(tcfg.get("architecture") or type(model).__name__)
        if state is not None:
            try:
                load_state(model, state, cfg.checkpoint)
            except BadInput as first:
                if not (source.startswith("timm:") and cfg.input_size) or "img_size" in cfg.kwargs:
                    raise
                # a checkpoint trained at the architecture's own size, run at another (e.g. a ViT with
                # position embeddings for 224 px): the model as timm builds it by default
                model, tcfg = _timm(source[len("timm:"):], state, cfg.num_classes, kwargs=cfg.kwargs)
                try:
                    load_state(model, state, cfg.checkpoint)
                except BadInput:
                    raise first from None
        elif source.startswith("timm:"):
            log.warning("%s has no checkpoint: random weights (fine for latency and export checks, "
                        "meaningless for accuracy; pass --checkpoint)", source)
        else:
            log.warning("%s: no checkpoint given; the weights are what %s() sets (random unless it loads them; "
                        "pass --checkpoint for a state dict)", source, source_path(source)[1])
        if source.startswith("timm:") or tcfg:
            model = _inference_form(model.eval())
        num_classes = _count_outputs(model)
        size = tcfg.get("input_size", (3, 224, 224))[-1]
        info = ModelInfo(source=source, arch=arch, num_classes=num_classes, input_size=int(size),
                         mean=tuple(tcfg.get("mean", (0.485, 0.456, 0.406))),
                         std=tuple(tcfg.get("std", (0.229, 0.224, 0.225))),
                         labels=_default_labels(num_classes),
                         crop_pct=float(tcfg.get("crop_pct", 0.875)),
                         interpolation=str(tcfg.get("interpolation", "bilinear")),
                         random_weights=state is None and source.startswith("timm:"))
    # a Python file's model states no size unless it carries timm's configuration
    own_size = None if source.startswith("file:") and not tcfg else info.input_size
    if cfg.input_size:
        info.input_size = cfg.input_size
    if cfg.crop_pct:
        info.crop_pct = cfg.crop_pct
    if cfg.mean:
        info.mean = tuple(cfg.mean)
    if cfg.std:
        info.std = tuple(cfg.std)
    if cfg.labels:
        if len(cfg.labels) != info.num_classes:
            raise BadInput(f"model.labels has {len(cfg.labels)} names but the model has {info.num_classes} outputs")
        info.labels = list(cfg.labels)
    _check_runs(model.eval(), info.input_size, own_size, cfg)
    return model, info


def _check_runs(model: nn.Module, size: int, own_size: int | None, cfg) -> None:
    """One forward pass on a blank image of the run's input size, so that a model that cannot take that size
    is refused at load in one line naming the setting, not minutes later inside a stage."""
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    except Exception as e:  # whatever the architecture raises: the user's fix is the same
        msg = (str(e).splitlines() or [""])[0][:200]
        setting = "model.kwargs.img_size" if "img_size" in (cfg.kwargs or {}) else \
            "model.input_size" if cfg.input_size else None
        hint = (f"; its own input size is {own_size} px" if own_size not in (None, size) else "") + (
            f"; change {setting} to a size the architecture supports" if setting else "")
        raise BadInput(f"model {cfg.source} does not run on a {size} px input ({type(e).__name__}: {msg})"
                       + hint) from e


def _own_config(model: nn.Module) -> dict:
    """The preprocessing a model built in a user's Python file states itself: timm's ``pretrained_cfg`` (a timm
    model created or subclassed there keeps it), else nothing (ImageNet's at 224 px then apply)."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    return dict(cfg) if isinstance(cfg, dict) and "input_size" in cfg else {}


def _inference_form(model: nn.Module) -> nn.Module:
    """Fold train-time branches (FastViT, MobileOne, RepViT: ``reparameterize()``) into single convs,
    the form that is quantized and exported; other models come back unchanged."""
    if not any(hasattr(m, "reparameterize") for m in model.modules()):
        return model
    from timm.utils.model import reparameterize_model

    log.info("re-parameterized %s into its inference form", type(model).__name__)
    return reparameterize_model(model, inplace=True)


def _count_outputs(model: nn.Module) -> int:
    n = getattr(model, "num_classes", None)
    if isinstance(n, int) and n > 0:
        return n
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(head, nn.Linear):
        return head.out_features
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if last:
        return last[-1].out_features
    raise BadInput("cannot tell how many classes the model predicts; set model.num_classes and model.labels")
