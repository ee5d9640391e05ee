"""Recipes: the pydantic schema, YAML loading, composition by reference, overrides and the lock file.

A recipe is one YAML file. Sections may name other YAML files instead of holding their content:
``calibration: calibration/builtin.yaml``, ``export: [export/onnx-fp32.yaml]``,
``validate: {eval: calibration/builtin-val.yaml, devices: [devices/local-ort-cpu.yaml]}``, and
``base: other_recipe.yaml`` inherits a whole recipe and overrides parts of it. Relative paths are
looked up beside the file that names them, then in its parent folder, then in the working
directory, then among the files shipped with the package (``export/onnx-int8.yaml`` works from any
folder). Every error names the file, the key and what
is allowed, and is raised as :class:`BadInput`.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgevit.errors import BadInput, one_line
from edgevit.prune.config import PruneConfig
from edgevit.tokens.config import TokenConfig
from edgevit.quant.config import QuantConfig
from edgevit.shipped import root as shipped_root

SHIPPED_ROOT = shipped_root()
SHIPPED_RECIPES = SHIPPED_ROOT / "recipes"
MODEL_PREFIXES = ("builtin:", "timm:", "file:")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ModelConfig(_Strict):
    """Where the model comes from and how its inputs are prepared."""

    source: str = Field("builtin:hybrid-cifar10", description="builtin:NAME, timm:NAME or file:path.py:function")
    checkpoint: Path | None = Field(None, description="state dict (.pt/.pth/.bin/.safetensors)")
    trust_checkpoint: bool = Field(False, description="allow pickled checkpoints (can run code)")
    num_classes: int | None = Field(None, gt=0, description="default: inferred from the checkpoint")
    input_size: int | None = Field(None, gt=0, description="square input side in pixels")
    crop_pct: float | None = Field(None, gt=0, le=1)
    mean: list[float] | None = Field(None, min_length=3, max_length=3, description="0-1 scale, RGB")
    std: list[float] | None = Field(None, min_length=3, max_length=3, description="0-1 scale, RGB")
    labels: list[str] | None = None

    @field_validator("source")
    @classmethod
    def _known_prefix(cls, v: str) -> str:
        if not v.startswith(MODEL_PREFIXES):
            raise ValueError(f"must start with one of {', '.join(MODEL_PREFIXES)} (got {v!r})")
        return v

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


class ExportConfig(_Strict):
    """One exported artifact."""

    name: str | None = None
    format: Literal["onnx", "coreml", "tensorrt"] = Field(
        "onnx", description="onnx (.onnx), coreml (.mlpackage, an image classifier for Xcode) or tensorrt (.engine "
        "built on this machine's NVIDIA GPU from the ONNX export, which is kept beside it)")
    sparse: bool = Field(False, description="tensorrt only: let TensorRT use 2:4 sparse kernels for weights that "
                         "follow the pattern (kSPARSE_WEIGHTS); the report lists the layers that took them")
    precision: Literal["fp32", "fp16", "int8"] = Field("fp32", description="int8: real QDQ from the quantize stage "
                                                       "(coreml: W8A8, quantize/dequantize ops with compression: w8)")
    compression: Literal["none", "w8", "palettize4", "palettize6", "sparse"] = Field(
        "none", description="coreml only: weight compression of the converted program: w8 (int8 per channel), "
        "palettize4/6 (k-means look-up tables), sparse (the pruning stage's zeros stored sparse)")
    deployment_target: Literal["iOS16", "iOS17", "iOS18"] = Field("iOS17", description="coreml only: minimum "
                                                                  "deployment target")
    target: Literal["onnxruntime", "tensorrt"] = Field(
        "onnxruntime", description="the runtime the ONNX is for: int8 QDQ graphs are lowered for it (tensorrt: "
        "signed int8, zero point 0 everywhere); with tensorrt the report gives the trtexec line that builds the engine "
        "on the device (an FP16 engine from an fp32 ONNX)")
    lowering: Literal["uniform", "exact", "float"] = Field(
        "uniform", description="int8 only: how quantizers no integer kernel runs are written: uniform (log/tan "
        "sites become the uniform 8-bit grid over their range), exact (a float decomposition that reproduces "
        "the simulation, also for 4/6-bit plans; not for TensorRT) or float (log/tan sites left unquantized)")
    fp16_layernorm: Literal["auto", "fp32", "fp16"] = Field(
        "auto", description="FP16 artifacts (onnx fp16, coreml, tensorrt): auto keeps LayerNorm in FP32 when its "
        "inputs, measured on the calibration (else eval) images, overflow FP16's range (or when there are no images "
        "to measure); fp32 always; fp16 never")
    opset: int = Field(17, ge=17, le=21)
    simplify: bool = True
    dynamic_batch: bool = True


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
    runtime: Literal["onnxruntime", "coreml", "tensorrt"] = Field(
        "onnxruntime", description="what runs the artifacts on the device: onnxruntime (.onnx), coreml (.mlpackage, "
        "macOS), tensorrt (.engine)")
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

    @model_validator(mode="after")
    def _where(self) -> "DeviceConfig":
        if self.kind == "ssh" and self.ssh is None:
            raise ValueError("ssh: a device of kind ssh needs an ssh: section (host, user, key_file, known_hosts)")
        if self.kind == "local" and self.ssh is not None:
            raise ValueError("ssh: only for kind: ssh")
        if self.kind == "local" and self.runtime != "onnxruntime":
            raise ValueError(f"runtime: a local device measures with ONNX Runtime (and TensorRT engines built here); "
                             f"for {self.runtime} on another machine use kind: ssh")
        return self


class ValidateConfig(_Strict):
    """How artifacts are checked against the FP32 PyTorch model."""

    eval: DataConfig | None = None
    devices: list[DeviceConfig] = Field(default_factory=list)
    parity_images: int = Field(32, gt=0, description="images used for the max-abs-diff check")
    parity_tolerance: float = Field(1e-3, gt=0, description="max abs logit diff allowed for FP32 ONNX")


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
    export: list[ExportConfig] = Field(default_factory=lambda: [ExportConfig()])
    validation: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")

    @model_validator(mode="after")
    def _stages_fit_targets(self) -> "Recipe":
        if self.quantize is not None and self.calibration is None:
            raise ValueError("quantize: needs a calibration: section (images to calibrate on)")
        if self.prune is not None and self.calibration is None:
            raise ValueError("prune: needs a calibration: section (images whose activations guide the pruning)")
        if self.quantize is not None and self.quantize.max_accuracy_drop is not None and self.validation.eval is None:
            raise ValueError("quantize.max_accuracy_drop: needs validate.eval (the images the drop is measured on, "
                             "e.g. eval: calibration/builtin-val.yaml)")
        for i, e in enumerate(self.export):
            if e.format == "coreml" and e.precision == "int8" and e.compression != "w8":
                raise ValueError(f"export.{i}.compression: a CoreML int8 artifact (W8A8: the quantize stage's "
                                 "activation scales as quantize/dequantize ops) stores int8 weights; set "
                                 "compression: w8")
            if e.format == "tensorrt" and e.precision == "int8" and e.target != "tensorrt":
                raise ValueError(f"export.{i}.target: a TensorRT engine needs the tensorrt lowering (target: tensorrt)")
            if e.sparse and e.format != "tensorrt":
                raise ValueError(f"export.{i}.sparse: only for format: tensorrt")
            if e.format != "coreml" and e.compression != "none":
                raise ValueError(f"export.{i}.compression: only for format: coreml (ONNX compression comes "
                                 "from the quantize and prune stages)")
            if e.precision != "int8":
                continue
            if self.quantize is None:
                raise ValueError(f"export.{i}.precision: int8 needs a quantize: section")
            if (e.target == "tensorrt" or e.format == "coreml") and e.lowering == "exact":
                runtime = "CoreML" if e.format == "coreml" else "TensorRT"
                raise ValueError(f"export.{i}.lowering: exact cannot target {runtime}, whose kernels take only "
                                 "uniform int8 quantize/dequantize; use lowering: uniform or float")
            bits = {"quantize.weights.bits": self.quantize.weights.bits,
                    "quantize.activations.bits": self.quantize.activations.bits}
            for key, b in bits.items():
                if b != 8 and e.format == "coreml":
                    raise ValueError(f"{key}: {b}-bit activations or weights cannot go into a CoreML int8 "
                                     f"artifact (8-bit quantize ops only); quantize with 8 bits, or export.{i}: "
                                     "compression: palettize4 for 4-bit weights")
                if b != 8 and e.lowering != "exact":
                    raise ValueError(f"{key}: {b}-bit can be simulated, but ONNX Runtime and TensorRT run 8-bit "
                                     f"integer kernels only; set export.{i}.lowering: exact to export a graph "
                                     "that reproduces the simulation, or quantize with 8 bits")
        return self


# --------------------------------------------------------------------------- loading

# Sections that may be a reference to another YAML file, and which keys inside hold paths.
_PATH_KEYS = {("model", "checkpoint"), ("calibration", "path"), ("validate", "eval", "path")}


def find_recipe(arg: str | Path) -> Path:
    """A recipe path as given, or the name of a shipped recipe (``int8_ptq`` -> recipes/int8_ptq.yaml)."""
    p = Path(arg)
    if p.is_file():
        return p
    for cand in (SHIPPED_RECIPES / p.name, SHIPPED_RECIPES / f"{p.name}.yaml"):
        if cand.is_file() and p.parent in (Path("."), Path("recipes")):
            return cand
    shipped = ", ".join(sorted(x.stem for x in SHIPPED_RECIPES.glob("*.yaml")))
    raise BadInput(f"recipe file not found: {arg} (shipped recipes: {shipped}; see `edgevit recipes`)")


def _read_yaml(path: Path, what: str) -> Any:
    try:
        text = path.read_text()
    except OSError as e:
        raise BadInput(f"{path}: cannot read {what}: {e.strerror}") from e
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise BadInput(f"{path}: malformed YAML{where}: {problem}") from e


def _resolve_path(value: str, base_file: Path | None, key: str, origin: str) -> Path:
    p = Path(value).expanduser()
    if p.is_absolute():
        candidates = [p]
    else:
        candidates = []
        if base_file is not None:
            candidates += [base_file.parent / p, base_file.parent.parent / p]
        candidates += [Path.cwd() / p, SHIPPED_ROOT / p]
    for c in candidates:
        if c.exists():
            return c.resolve()
    tried = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise BadInput(f"{origin}: {key}: path does not exist: {value} (looked in: {tried})")


def _load_reference(value: Any, base_file: Path | None, key: str, origin: str,
                    origins: dict[str, str]) -> Any:
    """Replace a string reference to a YAML file by that file's mapping (paths made absolute)."""
    if not isinstance(value, str):
        return value
    ref = _resolve_path(value, base_file, key, origin)
    if not ref.is_file() or ref.suffix not in (".yaml", ".yml"):
        raise BadInput(f"{origin}: {key}: expected a mapping or a .yaml file, got {value!r}")
    data = _read_yaml(ref, f"'{key}' reference")
    if not isinstance(data, dict):
        raise BadInput(f"{ref}: expected a mapping at the top level (referenced by {key} in {origin})")
    if "path" in data and isinstance(data["path"], str):
        data["path"] = str(_resolve_path(data["path"], ref, "path", str(ref)))
    origins[key] = str(ref)
    return data


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _load_raw(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    data = _read_yaml(path, "recipe")
    if data is None:
        raise BadInput(f"{path}: the recipe is empty (expected a mapping with at least 'name')")
    if not isinstance(data, dict):
        raise BadInput(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    if "base" in data:
        base_ref = data.pop("base")
        if not isinstance(base_ref, str):
            raise BadInput(f"{path}: base: expected the path of another recipe, got {base_ref!r}")
        base_path = _resolve_path(base_ref, path, "base", str(path))
        if base_path in seen:
            raise BadInput(f"{path}: base: circular reference to {base_path}")
        data = _deep_merge(_load_raw(base_path, seen + (path.resolve(),)), data)
    return data


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise BadInput(f"--set {item!r}: expected key=value, e.g. --set validate.devices.0.threads=1")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise BadInput(f"--set {item!r}: empty key")
    return parts, value


def _apply_override(data: dict, parts: list[str], value: Any, item: str) -> None:
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise BadInput(f"--set {item}: '{part}' is not an index of {'.'.join(parts[:i])} "
                               f"(it has {len(node)} entries)")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise BadInput(f"--set {item}: {'.'.join(parts[:i])} is not a mapping")
        if last:
            node[part] = value
        else:
            if not isinstance(node.get(part), (dict, list)):
                node[part] = {}
            node = node[part]


def _normalize(data: dict, path: Path | None, origins: dict[str, str]) -> dict:
    """Expand shorthands and load the sections given as references to other YAML files."""
    origin = str(path) if path else "<recipe>"

    def ref(value: Any, key: str) -> Any:
        return _load_reference(value, path, key, origin, origins)

    def ref_list(value: Any, key: str) -> Any:
        items = [value] if isinstance(value, (str, dict)) else value
        return [ref(v, f"{key}.{i}") for i, v in enumerate(items)] if isinstance(items, list) else value

    data = dict(data)
    if isinstance(data.get("model"), str):
        data["model"] = {"source": data["model"]}
    if "calibration" in data:
        data["calibration"] = ref(data["calibration"], "calibration")
    if "export" in data:
        data["export"] = ref_list(data["export"], "export")
    if isinstance(data.get("validate"), dict):
        val = dict(data["validate"])
        if "eval" in val:
            val["eval"] = ref(val["eval"], "validate.eval")
        if "devices" in val:
            val["devices"] = ref_list(val["devices"], "validate.devices")
        data["validate"] = val
    return data


def _resolve_paths(data: dict, path: Path | None, origins: dict[str, str]) -> None:
    for keys in _PATH_KEYS:
        node = data
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(keys[-1]), str):
            dotted = ".".join(keys)
            section = ".".join(keys[:-1])
            origin = origins.get(section, str(path) if path else "<recipe>")
            base = Path(origins[section]) if section in origins else path
            node[keys[-1]] = str(_resolve_path(node[keys[-1]], base, dotted, origin))


def _model_at(loc: tuple, root: type[BaseModel]) -> type[BaseModel] | None:
    """The pydantic class that owns the last key of a validation-error location."""
    cls: Any = root
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = {f.alias or n: f for n, f in cls.model_fields.items()} | cls.model_fields
        field = fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        for arg in getattr(ann, "__args__", ()) + (ann,):
            inner = getattr(arg, "__args__", (arg,))[0] if getattr(arg, "__origin__", None) is list else arg
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                cls = inner
                break
        else:
            return None
    return cls


def _format_error(err: ValidationError, path: Path | None, origins: dict[str, str],
                  root: type[BaseModel] = Recipe) -> str:
    errors = err.errors()
    e = errors[0]
    loc = tuple(e["loc"])
    dotted = ".".join(str(p) for p in loc)
    origin = str(path) if path else "<recipe>"
    for i in range(len(loc), 0, -1):
        key = ".".join(str(p) for p in loc[:i])
        if key in origins:
            origin = origins[key]
            break
    if e["type"] == "value_error" and not loc:
        return one_line(f"{origin}: {e['msg'].removeprefix('Value error, ')}")
    if e["type"] == "extra_forbidden":
        owner = _model_at(loc, root)
        allowed = sorted((f.alias or n) for n, f in owner.model_fields.items()) if owner else []
        msg = f"unknown key '{loc[-1]}'" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
    elif e["type"] == "missing":
        msg = "required key is missing"
    else:
        got = e.get("input")
        shown = json.dumps(got, default=str) if not isinstance(got, dict) else "a mapping"
        msg = f"{e['msg']} (got {shown[:80]})"
    more = f" [and {len(errors) - 1} more problem(s)]" if len(errors) > 1 else ""
    return one_line(f"{origin}: {dotted or '<top>'}: {msg}{more}")


def build_recipe(data: dict, path: Path | None = None, overrides: list[str] = ()) -> Recipe:
    """Validate a raw recipe mapping (references loaded, ``--set`` overrides applied)."""
    origins: dict[str, str] = {}
    data = _normalize(copy.deepcopy(data), path, origins)
    for item in overrides:
        parts, value = _parse_override(item)
        _apply_override(data, parts, value, item)
    data = _normalize(data, path, origins)  # overrides may name new reference files
    _resolve_paths(data, path, origins)
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise BadInput(_format_error(e, path, origins)) from e


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Load, compose and validate a recipe file; raise BadInput with one clear line on any problem."""
    p = find_recipe(path)
    return build_recipe(_load_raw(p), p, overrides)


def recipe_to_yaml(recipe: Recipe) -> str:
    """The fully resolved recipe as YAML (what ``recipe.lock.yaml`` holds)."""
    return yaml.safe_dump(recipe.model_dump(mode="json", by_alias=True), sort_keys=False)


def recipe_schema() -> dict:
    """JSON schema of a recipe (after references are loaded)."""
    return Recipe.model_json_schema(by_alias=True)


def shipped_recipes() -> list[tuple[str, str, Path]]:
    """(name, description, path) of each recipe in the project's recipes/ folder."""
    out = []
    for p in sorted(SHIPPED_RECIPES.glob("*.yaml")):
        data = _read_yaml(p, "recipe") or {}
        out.append((data.get("name", p.stem), str(data.get("description", "")).strip(), p))
    return out


def load_section(path: str | Path, cls: type[BaseModel], what: str) -> BaseModel:
    """Load one referenced YAML file (a device profile, an export preset, ...) on its own."""
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"{what} file not found: {p}")
    data = _read_yaml(p, what)
    if not isinstance(data, dict):
        raise BadInput(f"{p}: expected a mapping at the top level")
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise BadInput(_format_error(e, p, {}, cls)) from e
