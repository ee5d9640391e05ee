"""Sweep plans: a matrix of recipes x models x ``--set`` grid x device profiles, expanded into runs.

    name: zoo
    recipes: [recipes/int8_ptq.yaml, recipes/hybrid_w8a8.yaml]
    models: [builtin:hybrid-cifar10, {source: timm:levit_128s, checkpoint: ckpt.safetensors, kwargs: {img_size: 64}}]
    set: {quantize.activations.percentile: [99.99, 99.999]}   # a grid: every combination
    devices: [devices/local-ort-cpu.yaml]

Relative paths (recipes, checkpoints, device profiles) are looked up beside the plan file first. Each run is
validated as a recipe; its identity is a hash of the resolved recipe, the model spec and the checkpoint's
sha256, so a restarted sweep knows which runs it has already finished.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edgevit.config import ModelConfig
from edgevit.errors import BadInput, one_line
from edgevit.paths import user_path
from edgevit.recipe import Recipe, find_recipe, load_recipe, load_section, recipe_to_yaml


class Plan(BaseModel):
    """A sweep file (``edgevit sweep plan.yaml``)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][\w.-]*$")
    recipes: list[str] = Field(min_length=1, description="recipe files or shipped recipe names")
    models: list[str | ModelConfig] = Field(default_factory=list,
                                            description="model sources or model sections; empty: each recipe's own")
    set: dict[str, list[Any]] = Field(default_factory=dict,
                                      description="recipe key -> values; every combination is one run")
    overrides: list[str] = Field(default_factory=list, description="KEY=VALUE applied to every run")
    devices: list[str] = Field(default_factory=list,
                               description="device profiles, one run per device; empty: each recipe's own")
    max_retries: int = Field(2, ge=0, description="retries of a run whose worker died (not of a failed run)")
    order: Literal["longest-first", "plan"] = Field(
        "longest-first", description="the order a parallel executor (ray) starts the runs in: the longest first, by "
        "the durations of this machine's earlier sweeps (runs never seen first), or the plan's")
    runs_dir: str | None = Field(None, description="where the run folders go instead of OUT/runs: a folder every Ray "
                                 "node and this machine see at the same path (NFS, a mounted bucket); each worker "
                                 "writes its run there directly, atomically, and sends nothing back")


@dataclass
class RunSpec:
    """One run of a sweep: what it is made of, its validated recipe (None with ``error``) and its identity."""

    index: int
    recipe_arg: str
    model: dict | None
    settings: dict[str, str]
    device: str | None
    overrides: list[str]
    recipe: Recipe | None = None
    error: str | None = None
    id: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def folder(self) -> str:
        """The run's folder under ``OUT/runs/``: readable, and unique through the identity's prefix."""
        parts = [self.labels["recipe"], self.labels["model"], *(f"{k}={v}" for k, v in self.settings.items()),
                 self.labels["device"]]
        return f"{_slug('.'.join(parts))[:90]}.{self.id[:8]}"

    def describe(self) -> dict:
        """The run's settings as sweep.json records them."""
        return {"id": self.id, "folder": self.folder, "recipe": self.labels["recipe"], "model": self.labels["model"],
                "settings": self.settings, "device": self.labels["device"], "overrides": self.overrides}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text).strip("_") or "run"


def _as_override(value: Any) -> str:
    """A plan value as the text of a ``--set`` (JSON is YAML, so numbers, lists and strings keep their type)."""
    return value if isinstance(value, str) else json.dumps(value)


def load_plan(path: str | Path) -> tuple[Plan, Path]:
    """Read and validate a plan file; BadInput names the file and the key."""
    plan = load_section(path, Plan, "sweep plan")
    for key, values in plan.set.items():
        if not values:
            raise BadInput(f"{path}: set.{key}: give at least one value")
    return plan, Path(path).resolve()


def runs_folder(plan: Plan, plan_file: Path | None, out_dir: Path) -> Path:
    """Where the plan's run folders go: its ``runs_dir`` (relative to the plan file) or ``OUT/runs``."""
    if plan.runs_dir is None:
        return out_dir / "runs"
    path = user_path(plan.runs_dir)
    return path if path.is_absolute() or plan_file is None else (plan_file.parent / path).resolve()


def _beside(value: str, plan_file: Path | None) -> str:
    """``value`` as an absolute path when it names a file beside the plan, else as given."""
    if plan_file is not None and not Path(value).is_absolute() and (plan_file.parent / value).exists():
        return str((plan_file.parent / value).resolve())
    return value


def _model_section(entry: str | ModelConfig, plan_file: Path | None) -> dict:
    section = {"source": entry} if isinstance(entry, str) else entry.model_dump(exclude_unset=True, mode="json")
    if section.get("checkpoint"):
        section["checkpoint"] = _beside(str(section["checkpoint"]), plan_file)
    return section


def _model_label(section: dict | None, recipe: Recipe | None) -> str:
    source = (section or {}).get("source") or (recipe.model.source if recipe else "recipe-model")
    name = source.split(":", 1)[-1].rstrip("/").rsplit("/", 1)[-1]
    kwargs = (section or {}).get("kwargs") or {}
    return name + "".join(f"-{k}{v}" for k, v in sorted(kwargs.items()))


def expand(plan: Plan, plan_file: Path | None = None, strict: bool = False) -> list[RunSpec]:
    """Every run of the plan (recipes x models x grid x devices, in that order), each validated. A run whose
    recipe does not validate carries its one-line ``error`` (``strict``: raise it instead, naming the run)."""
    models = [_model_section(m, plan_file) for m in plan.models] or [None]
    devices = [_beside(d, plan_file) for d in plan.devices] or [None]
    keys = list(plan.set)
    grid = [dict(zip(keys, combo)) for combo in itertools.product(*(plan.set[k] for k in keys))]
    runs = []
    for recipe_arg, model, settings, device in itertools.product(plan.recipes, models, grid, devices):
        recipe_arg = _beside(recipe_arg, plan_file)
        texts = {k: _as_override(v) for k, v in settings.items()}
        overrides = list(plan.overrides)
        overrides += [f"model={json.dumps(model)}"] if model else []
        overrides += [f"validate.devices={json.dumps([device])}"] if device else []
        overrides += [f"{k}={v}" for k, v in texts.items()]
        spec = RunSpec(len(runs), recipe_arg, model, texts, device, overrides)
        try:
            spec.recipe = load_recipe(recipe_arg, overrides)
        except BadInput as e:
            what = ", ".join(f"{k}={v}" for k, v in texts.items())
            spec.error = one_line(f"{Path(recipe_arg).stem}" + (f" with {what}" if what else "") + f": {e}")
            if strict:
                raise BadInput(spec.error) from e
        spec.labels = {"recipe": spec.recipe.name if spec.recipe else Path(recipe_arg).stem,
                       "model": _model_label(model, spec.recipe),
                       "device": Path(device).stem if device else _recipe_devices(spec.recipe)}
        spec.id = run_identity(spec)
        runs.append(spec)
    return runs


def _recipe_devices(recipe: Recipe | None) -> str:
    if recipe is None:
        return "n/a"
    return "+".join(d.name for d in recipe.validation.devices) or "no-device"


def run_identity(spec: RunSpec) -> str:
    """sha256 of the resolved recipe (model spec included) and the checkpoint's bytes (of the raw settings when the
    recipe does not validate): the same run gets the same identity in a restarted sweep."""
    h = hashlib.sha256()
    if spec.recipe is None:
        h.update(json.dumps([spec.recipe_arg, spec.model, spec.settings, spec.device, spec.overrides]).encode())
        return h.hexdigest()
    h.update(recipe_to_yaml(spec.recipe).encode())  # the resolved recipe holds the model spec
    ckpt = spec.recipe.model.checkpoint
    if ckpt is not None and Path(ckpt).is_file():
        h.update(file_sha256(Path(ckpt)).encode())
    return h.hexdigest()


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (cached per path, size and modification time)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def parse_sweep(spec: str) -> tuple[str, list[str]]:
    """``KEY=V1,V2,...`` -> (KEY, [V1, V2, ...]); commas inside brackets belong to one value, so a
    per-block list sweeps as ``tokens.r=[8,8,8,8,8,0],[8,8,8,7,7,0]``."""
    key, sep, rest = spec.partition("=")
    values, depth, start = [], 0, 0
    for i, ch in enumerate(rest):
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            values.append(rest[start:i].strip())
            start = i + 1
    values.append(rest[start:].strip())
    if not sep or not re.fullmatch(r"[A-Za-z_][\w.]*", key.strip()) or depth != 0 or not all(values):
        raise BadInput(f"--sweep {spec!r}: expected KEY=VALUE1,VALUE2,... (e.g. tokens.r=4,8,12)")
    if len(set(values)) != len(values):
        raise BadInput(f"--sweep {spec!r}: a value is listed twice")
    return key.strip(), values


def one_recipe_plan(recipe: str | Path, key: str, values: list[str], overrides: list[str]) -> Plan:
    """The plan that ``compress --sweep KEY=V1,V2`` stands for: one recipe, one key, its values."""
    return Plan(name=f"{find_recipe(recipe).stem}-sweep", recipes=[str(recipe)], set={key: list(values)},
                overrides=list(overrides))
