"""Template tests run over every registered runtime (onnxruntime, tensorrt, coreml, openvino, ...): what a
runtime module declares is consistent, its presets load, its device runner is self-contained, and an FP32
export of the built-in hybrid goes through the pipeline and, where the runtime runs here, matches PyTorch.
A new runtime module is covered by these tests without editing them."""
from __future__ import annotations

import ast
import json
import sys

import pytest
import yaml

from conftest import ROOT
from edgevit.recipe import ExportConfig, build_recipe
from edgevit.runtimes import RUNTIMES, for_format, for_suffix, formats
from edgevit.runtimes.base import DEVICE_RUNNERS

NAMES = sorted(RUNTIMES)


def test_the_shipped_runtimes_are_registered():
    assert {"onnxruntime", "tensorrt", "coreml", "openvino"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_declarations_are_consistent(name):
    rt = RUNTIMES[name]
    assert for_format(rt.format) is rt and for_suffix(rt.suffix) is rt
    assert formats()[rt.format] is rt.config
    cfg = ExportConfig(format=rt.format)
    assert type(cfg) is rt.config and cfg.format == rt.format
    assert rt.label and rt.short and rt.file_noun and rt.suffix.startswith(".")
    assert rt.lowering is not None and rt.lowering_for(cfg) is not None  # every runtime takes INT8 plans
    assert set(rt.platforms) <= {"linux", "darwin", "win32"}


@pytest.mark.parametrize("name", NAMES)
def test_presets_of_each_runtime_load(name):
    rt = RUNTIMES[name]
    presets = [p for p in (ROOT / "export").glob("*.yaml") if yaml.safe_load(p.read_text()).get("format") == rt.format]
    assert presets, f"no export preset for {name}"
    for p in presets:
        data = yaml.safe_load(p.read_text())
        cfg = ExportConfig(**data)
        assert type(cfg) is rt.config and cfg.name == p.stem


@pytest.mark.parametrize("name", NAMES)
def test_device_runner_is_self_contained(name):
    """The file copied to a device imports only the standard library, numpy and its runtime."""
    rt = RUNTIMES[name]
    path = DEVICE_RUNNERS / rt.device_runner
    tree = ast.parse(path.read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "edgevit" not in imported and "torch" not in imported
    assert imported - set(sys.stdlib_module_names) - {"numpy", "PIL", "cuda"} <= {name, "coremltools"}
    assert any(isinstance(n, ast.ClassDef) and n.name == "Runner" for n in tree.body)


@pytest.mark.parametrize("name", NAMES)
def test_local_device_profiles_take_only_local_runtimes(name):
    rt = RUNTIMES[name]
    data = {"name": "x", "validate": {"devices": [{"name": "d", "kind": "local", "runtime": name}]}}
    if rt.local_device:
        assert build_recipe(data).validation.devices[0].runtime == name
    else:
        with pytest.raises(Exception, match="use kind: ssh"):
            build_recipe(data)


@pytest.mark.parametrize("name", NAMES)
def test_fp32_export_through_the_pipeline(name, tmp_path):
    """The same recipe for every runtime: the FP32 artifact is written with the model's metadata, checked,
    and where the runtime runs here it matches PyTorch within the parity tolerance."""
    from edgevit.pipeline import run

    rt = RUNTIMES[name]
    cfg = ExportConfig(format=rt.format, precision="fp32", name=f"{name}-fp32")
    why = rt.unavailable(cfg)
    if why:
        pytest.skip(f"{rt.label} cannot export here: {why}")
    recipe = build_recipe({"name": f"t-{name}", "export": [cfg.model_dump()], "validate": {"devices": []}})
    res = run(recipe, tmp_path / "run")
    row = next(r for r in res.report["results"] if r["runtime"] == name)
    path = tmp_path / "run" / row["file"]
    assert path.exists() and all(f.exists() for f in rt.files(path))
    meta = rt.read_metadata(path)
    assert json.loads(meta["labels"])[0] == "airplane" and json.loads(meta["input_size"]) == [3, 32, 32]
    assert res.ok, [c for c in res.report["checks"] if not c["ok"]]
    if rt.can_run_here():
        assert row["parity"]["max_abs_diff"] < 1e-3
        assert any(c["name"] == f"{name}-fp32: {rt.file_kind} matches PyTorch" for c in res.report["checks"])
    else:
        assert row["parity"] is None and row.get("not_measured")
