"""Recipes: YAML loading, composition by reference, overrides, error messages and the lock file (the
schema is ``edgevit.config``).

A recipe is one YAML file. Sections may name other YAML files instead of holding their content:
``calibration: calibration/builtin.yaml``, ``export: [export/onnx-fp32.yaml]``,
``validate: {eval: calibration/builtin-val.yaml, devices: [devices/local-ort-cpu.yaml]}``, and
``base: other_recipe.yaml`` inherits a whole recipe and overrides parts of it. Relative paths are
looked up beside the file that names them, then in its parent folder, then in the working
directory, then among the files shipped with the package (``export/onnx-int8.yaml`` works from any
folder). Every error names the file, the key and what is allowed, and is raised as :class:`BadInput`.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from edgevit.config import (MODEL_PREFIXES, DataConfig, DeviceConfig, ExportConfig, ExportEntry, ModelConfig,
                            Recipe, SshConfig, ValidateConfig)
from edgevit.errors import BadInput, one_line
from edgevit.paths import cut, shown, user_path
from edgevit.quant.config import PLACEMENT_MODES
from edgevit.runtimes import formats
from edgevit.shipped import root as shipped_root

SHIPPED_ROOT = shipped_root()
SHIPPED_RECIPES = SHIPPED_ROOT / "recipes"
# the schema, importable from here as before the split
__all__ = ["MODEL_PREFIXES", "DataConfig", "DeviceConfig", "ExportConfig", "ExportEntry", "ModelConfig", "Recipe",
           "SshConfig", "ValidateConfig", "build_recipe", "find_recipe", "load_recipe", "load_section",
           "recipe_schema", "recipe_to_yaml", "shipped_recipes"]


# --------------------------------------------------------------------------- loading

# Sections that may be a reference to another YAML file, and which keys inside hold paths.
_PATH_KEYS = {("model", "checkpoint"), ("calibration", "path"), ("validate", "eval", "path"),
              ("quantize", "placement")}


def find_recipe(arg: str | Path) -> Path:
    """A recipe path as given, or the name of a shipped recipe (``int8_ptq`` -> recipes/int8_ptq.yaml)."""
    try:
        p = user_path(arg)
    except BadInput as e:
        raise BadInput(f"recipe {e}") from None
    if p.is_file():
        return p
    for cand in (SHIPPED_RECIPES / p.name, SHIPPED_RECIPES / f"{p.name}.yaml"):
        if cand.is_file() and p.parent in (Path("."), Path("recipes")):
            return cand
    shipped = ", ".join(sorted(x.stem for x in SHIPPED_RECIPES.glob("*.yaml")))
    raise BadInput(f"recipe file not found: {shown(str(arg))} (shipped recipes: {shipped}; see `edgevit recipes`)")


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
    try:
        p = user_path(value)
    except BadInput as e:
        raise BadInput(f"{origin}: {key}: {e}") from None
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
    tried = ", ".join(shown(str(c)) for c in dict.fromkeys(candidates))
    raise BadInput(f"{origin}: {key}: path does not exist: {shown(value)} (looked in: {tried})")


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
                if parts[i + 1].isdigit():  # an entry of a list the recipe does not give
                    where = ".".join(parts[:i + 1])
                    raise BadInput(f"--set {item}: the recipe has no {where} list, so no entry {parts[i + 1]} to "
                                   f"change; give the whole list instead, e.g. --set '{where}=[...]'")
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
        if isinstance(node, dict) and isinstance(node.get(keys[-1]), str) and node[keys[-1]] not in PLACEMENT_MODES:
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
        got_text = json.dumps(got, default=str) if not isinstance(got, dict) else "a mapping"
        msg = f"{e['msg']} (got {got_text[:80]})"
    return one_line(f"{origin}: {dotted or '<top>'}: {msg}{more}")


def build_recipe(data: dict, path: Path | None = None, overrides: list[str] = ()) -> Recipe:
    """Validate a raw recipe mapping (references loaded, ``--set`` overrides applied)."""
    origins: dict[str, str] = {}
    data = _normalize(copy.deepcopy(data), path, origins)
    written_for = _model_source(data)
    for item in overrides:
        parts, value = _parse_override(item)
        _apply_override(data, parts, value, item)
    data = _normalize(data, path, origins)  # overrides may name new reference files
    compressed = _model_source(data)
    if data.get("description") and compressed != written_for:
        # the description speaks of the recipe's own model; the report and the lock file must not pass it off
        # as a description of the model this run compressed
        data["description"] = (f"{str(data['description']).strip()} (Written for `{written_for}`; this run "
                               f"compressed `{compressed}`, given by --model or --set.)")
    _resolve_paths(data, path, origins)
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise BadInput(cut(_format_error(e, path, origins), 500)) from e  # a quoted value may be long


def _model_source(data: dict) -> Any:
    model = data.get("model")
    return model.get("source", ModelConfig.model_fields["source"].default) if isinstance(model, dict) else model


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
        raise BadInput(cut(_format_error(e, p, {}, cls), 500)) from e
