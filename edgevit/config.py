"""The recipe schema: one pydantic class per section (model, data, devices, validation, the recipe
itself); export entries are the config classes the runtimes register (edgevit.runtimes), picked by
``format``. Loading, composition and error messages are in ``edgevit.recipe``."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, field_validator, model_validator

from edgevit.prune.config import PruneConfig
from edgevit.quant.config import QuantConfig
from edgevit.quant.lowering import WEIGHT_BITS_IN_INT8
from edgevit.runtimes import RUNTIMES, ExportBase, formats, runtime
from edgevit.runtimes.onnxruntime import OnnxExport
from edgevit.tokens.config import TokenConfig

MODEL_PREFIXES = ("builtin:", "timm:", "file:", "hf:")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ModelConfig(_Strict):
    """Where the model comes from and how its inputs are prepared."""

    source: str = Field("builtin:hybrid-cifar10", description="builtin:NAME, timm:NAME, hf:FOLDER (a local Hugging Face "
                                                               "image classifier) or file:path.py:function")
    checkpoint: Path | None = Field(None, description="state dict (.pt/.pth/.bin/.safetensors)")
    trust_checkpoint: bool = Field(False, description="allow pickled checkpoints (can run code)")
    num_classes: int | None = Field(None, gt=0, description="default: inferred from the checkpoint")
    input_size: int | None = Field(None, gt=0, description="square input side in pixels")
    crop_pct: float | None = Field(None, gt=0, le=1)
    mean: list[float] | None = Field(None, min_length=3, max_length=3, description="0-1 scale, RGB")
    std: list[float] | None = Field(None, min_length=3, max_length=3, description="0-1 scale, RGB")
    labels: list[str] | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict,
                                   description="timm.create_model arguments, e.g. {img_size: 64} for a LeViT "
                                               "trained at 64 px (input_size defaults to img_size)")

    @field_validator("source")
    @classmethod
    def _known_prefix(cls, v: str) -> str:
        if not v.startswith(MODEL_PREFIXES):
            raise ValueError(f"must start with one of {', '.join(MODEL_PREFIXES)} (got {v!r})")
        return v

    @model_validator(mode="after")
    def _kwargs_for_timm(self):
        if self.kwargs and not self.source.startswith("timm:"):
            raise ValueError(f"kwargs are passed to timm.create_model and apply to timm: sources only (source is "
                             f"{self.source!r})")
        size = self.kwargs.get("img_size")
        if size is not None and self.input_size is None:
            side = size if isinstance(size, int) else size[0] if isinstance(size, (list, tuple)) and size else None
            if not isinstance(side, int) or side <= 0:
                raise ValueError(f"kwargs.img_size must be a positive int or [h, w] (got {size!r})")
            self.input_size = side
        return self

    @field_validator("mean", "std")
    @classmethod
    def _zero_one_scale(cls, v, info):
        if v is None:
            return v
        if info.field_name == "std" and min(v) <= 0:
            raise ValueError("std values must be > 0")
        if max(abs(x) for x in v) > 1:
            raise ValueError(f"{info.field_name} is on the 0-1 scale (got {v}); values on the 0-255 scale "
                             "must be divided by 255")
        return v


class DataConfig(_Strict):
    """An image set: an ImageFolder (class sub-folders) or a flat folder of unlabeled images."""

    name: str | None = None
    path: Path
    num: int | None = Field(None, gt=0, description="use at most this many images (a seeded sample)")
    seed: int = 0
    batch_size: int = Field(64, gt=0)


def _export_tag(v: Any) -> str | None:
    """The export entry's format (``onnx`` when not given)."""
    if isinstance(v, dict):
        return v.get("format", "onnx")
    return getattr(v, "format", "onnx")


#: one exported artifact: the config class of its ``format``'s runtime (edgevit.runtimes)
ExportEntry = Annotated[Union[tuple(Annotated[cls, Tag(fmt)] for fmt, cls in formats().items())],
                        Discriminator(_export_tag)]


def ExportConfig(**fields) -> ExportBase:  # noqa: N802 - reads like the config class it returns
    """The config of one export entry: an instance of its format's class (``format`` defaults to onnx)."""
    return TypeAdapter(ExportEntry).validate_python(fields)


class SshConfig(_Strict):
    """How to reach a device over SSH (OpenSSH client; host keys checked strictly, key auth only)."""

    host: str = Field(pattern=r"^[A-Za-z0-9._:-]+$", description="host name or IP address")
    port: int = Field(22, ge=1, le=65535)
    user: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    key_file: str = Field(description="private key for this device (ssh -i)")
    known_hosts: str = Field(description="known_hosts file holding the device's host key (checked strictly)")
    connect_timeout_s: int = Field(10, gt=0)
    timeout_s: int = Field(600, gt=0, description="limit for each copy and for the benchmark run")


class DeviceConfig(_Strict):
    """Where latency (and, on a remote device, accuracy) is measured."""

    name: str = Field("local-ort-cpu", pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Literal["local", "ssh"] = Field("local", description="local: this machine; ssh: a device reached over SSH")
    runtime: str = Field("onnxruntime", description="what runs the artifacts on the device: onnxruntime (.onnx), "
                         "coreml (.mlpackage, macOS), tensorrt (.engine), openvino (.xml), ...")
    options: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="settings of the device's runtime (openvino: device: CPU|GPU|NPU)")
    providers: list[str] = ["CPUExecutionProvider"]
    threads: int = Field(2, gt=0)
    compute_units: Literal["all", "cpu_only", "cpu_and_gpu", "cpu_and_ne"] = Field(
        "all", description="coreml only: where CoreML may run the model (cpu_and_ne: CPU + Neural Engine)")
    ssh: SshConfig | None = None
    work_dir: str = Field("/tmp", pattern=r"^[A-Za-z0-9_./~-]+$", description="ssh: where a temporary folder is "
                          "made for each benchmark (removed afterwards)")
    python: str = Field("python3", pattern=r"^[A-Za-z0-9_./~-]+$", description="ssh: the device's Python (needs "
                        "numpy and the runtime)")
    warmup: int = Field(10, ge=0)
    iters: int = Field(50, gt=0)
    throughput_batch: int = Field(32, gt=0)
    eval_images: int = Field(200, ge=0, description="ssh: evaluation images sent to the device for top-1 there")

    @field_validator("runtime")
    @classmethod
    def _known_runtime(cls, v: str) -> str:
        runtime(v)  # raises ValueError naming the known ones
        return v

    @model_validator(mode="after")
    def _where(self) -> "DeviceConfig":
        if self.kind == "ssh" and self.ssh is None:
            raise ValueError("ssh: a device of kind ssh needs an ssh: section (host, user, key_file, known_hosts)")
        if self.kind == "local" and self.ssh is not None:
            raise ValueError("ssh: only for kind: ssh")
        local = sorted(n for n, rt in RUNTIMES.items() if rt.local_device)
        if self.kind == "local" and self.runtime not in local:
            raise ValueError(f"runtime: a local device measures with {' or '.join(local)} (and TensorRT engines "
                             f"built here); for {self.runtime} on another machine use kind: ssh")
        return self


class ValidateConfig(_Strict):
    """How artifacts are checked against the FP32 PyTorch model."""

    eval: DataConfig | None = None
    devices: list[DeviceConfig] = Field(default_factory=list)
    parity_images: int = Field(32, gt=0, description="images used for the max-abs-diff check")
    parity_tolerance: float = Field(1e-3, gt=0, description="max abs logit diff allowed for FP32 ONNX")


class BudgetConfig(_Strict):
    """What the whole run may cost in accuracy, on ``validate.eval`` against the original FP32 model (before
    pruning, token reduction and quantization). A deployed artifact outside it fails its check; the run's
    status is ``over_budget`` (exit 1) and the report says which stage spent what."""

    max_accuracy_drop: float | None = Field(None, ge=0, le=100, description="top-1 points a deployed artifact "
                                            "may lose against the original FP32 model (labeled eval images)")
    max_agreement_loss: float | None = Field(None, ge=0, le=100, description="points of top-1 agreement with the "
                                             "original FP32 model it may lose (eval images without labels)")

    @model_validator(mode="after")
    def _one_limit(self) -> "BudgetConfig":
        if self.max_accuracy_drop is None and self.max_agreement_loss is None:
            raise ValueError("budget: give max_accuracy_drop (top-1 points) or max_agreement_loss (agreement points)")
        return self


class Recipe(_Strict):
    """A whole run: model -> stages -> artifacts -> validation -> report."""

    name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", max_length=100,
                      description="names the default run folder runs/<name>: letters, digits, _ . -, not starting "
                      "with a dot (no '..', no hidden folder)")
    description: str = ""
    seed: int = 0
    model: ModelConfig = Field(default_factory=ModelConfig)
    calibration: DataConfig | None = None
    prune: PruneConfig | None = Field(None, description="one-shot pruning before quantization (needs calibration)")
    tokens: TokenConfig | None = Field(None, description="training-free token merging (ToMe) or pruning (EViT), "
                                       "after pruning and before quantization")
    quantize: QuantConfig | None = Field(None, description="post-training quantization (needs calibration)")
    export: list[ExportEntry] = Field(default_factory=lambda: [OnnxExport()])
    validation: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    budget: BudgetConfig | None = Field(None, description="the accuracy the whole run may spend (needs validate.eval)")

    @model_validator(mode="after")
    def _stages_fit_targets(self) -> "Recipe":
        if self.quantize is not None and self.calibration is None:
            raise ValueError("quantize: needs a calibration: section (images to calibrate on)")
        if self.prune is not None and self.calibration is None:
            raise ValueError("prune: needs a calibration: section (images whose activations guide the pruning)")
        if self.quantize is not None and self.quantize.max_accuracy_drop is not None and self.validation.eval is None:
            raise ValueError("quantize.max_accuracy_drop: needs validate.eval (the images the drop is measured on, "
                             "e.g. eval: calibration/builtin-val.yaml)")
        if self.budget is not None and self.validation.eval is None:
            raise ValueError("budget: needs validate.eval (the images the accuracy is measured on, e.g. "
                             "eval: calibration/builtin-val.yaml)")
        for i, e in enumerate(self.export):
            if e.precision != "int8":
                continue
            if self.quantize is None:
                raise ValueError(f"export.{i}.precision: int8 needs a quantize: section")
            w = self.quantize.weights
            bits = {"quantize.weights.bits": WEIGHT_BITS_IN_INT8 if w.overflow_fix == "on" and w.bits == 8 else w.bits,
                    "quantize.activations.bits": self.quantize.activations.bits}
            for key, b in bits.items():
                problem = e.sub8bit_problem(key, b, i) if b != 8 else None
                if problem:
                    raise ValueError(problem)
        return self
