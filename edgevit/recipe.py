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
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, ValidationError,
                      field_validator, model_validator)

from edgevit.errors import BadInput, one_line
from edgevit.prune.config import PruneConfig
from edgevit.tokens.config import TokenConfig
from edgevit.quant.config import QuantConfig
from edgevit.runtimes import RUNTIMES, ExportBase, formats, runtime
from edgevit.runtimes.onnxruntime import OnnxExport
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
            if e.precision != "int8":
                continue
            if self.quantize is None:
                raise ValueError(f"export.{i}.precision: int8 needs a quantize: section")
            bits = {"quantize.weights.bits": self.quantize.weights.bits,
                    "quantize.activations.bits": self.quantize.activations.bits}
            for key, b in bits.items():
                problem = e.sub8bit_problem(key, b, i) if b != 8 else None
                if problem:
                    raise ValueError(problem)
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
    export_formats = formats()
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if cls is None:  # an export entry: the tag after its index names its format's config class
            cls = export_formats.get(part)
            if cls is None:
                return None
            continue
        fields = {f.alias or n: f for n, f in cls.model_fields.items()} | cls.model_fields
        field = fields.get(part)
        if field is None:
            return None
        if part == "export" and cls is Recipe:
            cls = None  # resolved by the tag that follows
            continue
        ann = field.annotation
        for arg in getattr(ann, "__args__", ()) + (ann,):
            inner = getattr(arg, "__args__", (arg,))[0] if getattr(arg, "__origin__", None) is list else arg
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                cls = inner
                break
        else:
            return None
    return cls


def _strip_tags(loc: tuple) -> tuple:
    """A location without the format tags pydantic puts after an export entry's index."""
    tags = formats()
    return tuple(p for i, p in enumerate(loc) if not (p in tags and i > 0 and isinstance(loc[i - 1], int)))


def _other_format(key: str, fmt: str) -> str | None:
    """The export formats whose config has ``key`` (for 'only for format: X')."""
    having = [f for f, cls in formats().items() if f != fmt and key in cls.model_fields]
    return ", ".join(having) or None


def _format_error(err: ValidationError, path: Path | None, origins: dict[str, str],
                  root: type[BaseModel] = Recipe) -> str:
    errors = err.errors()
    e = errors[0]
    tagged = tuple(e["loc"])
    loc = _strip_tags(tagged)
    dotted = ".".join(str(p) for p in loc)
    origin = str(path) if path else "<recipe>"
    for i in range(len(loc), 0, -1):
        key = ".".join(str(p) for p in loc[:i])
        if key in origins:
            origin = origins[key]
            break
    more = f" [and {len(errors) - 1} more problem(s)]" if len(errors) > 1 else ""
    if e["type"] == "value_error":
        msg = e["msg"].removeprefix("Value error, ")
        if not loc:
            return one_line(f"{origin}: {msg}")
        key, sep, rest = msg.partition(": ")
        if sep and key.isidentifier():  # "compression: ..." raised by the section's own validator
            return one_line(f"{origin}: {dotted}.{key}: {rest}{more}")
        return one_line(f"{origin}: {dotted}: {msg}{more}")
    if e["type"] == "union_tag_invalid":
        return one_line(f"{origin}: {dotted}.format: unknown format {e['ctx']['tag']!r} "
                        f"(known: {e['ctx']['expected_tags']}){more}")
    if e["type"] == "extra_forbidden":
        owner = _model_at(tagged, root)
        allowed = sorted((f.alias or n) for n, f in owner.model_fields.items()) if owner else []
        fmt = next((p for p in tagged if p in formats()), None) if loc and loc[0] == "export" else None
        elsewhere = _other_format(str(loc[-1]), fmt) if fmt else None
        if elsewhere:
            msg = f"only for format: {elsewhere} (format {fmt} takes: {', '.join(allowed)})"
        else:
            msg = f"unknown key '{loc[-1]}'" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
    elif e["type"] == "missing":
        msg = "required key is missing"
    else:
        got = e.get("input")
        shown = json.dumps(got, default=str) if not isinstance(got, dict) else "a mapping"
        msg = f"{e['msg']} (got {shown[:80]})"
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
