"""Every shipped recipe runs end to end: those no other test runs through `edgevit compress` are run here with small
calibration and evaluation sets, few reconstruction steps and no device timing (this checks that the stages and
exporters chain, not what they reach); a recipe added to recipes/ is run here unless COVERED names the test that
runs it."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import ROOT
from edgevit.cli import STATUS_EXIT
from edgevit.pipeline import run
from edgevit.recipe import load_recipe

RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
# recipe -> the test that runs it end to end (with its own assertions on what it reaches)
COVERED = {
    "coreml_mobile": "test_coreml.py::test_coreml_recipe_end_to_end",
    "fp32_export": "test_cli.py::default_run",
    "hybrid_full": "test_pays.py::test_hybrid_full_recipe_chains_every_stage_within_its_budget",
    "hybrid_w8a8": "test_hf.py::test_hybrid_w8a8_on_an_hf_mobilevit_quantizes_its_attention",
    "int8_ptq": "test_quant_int8.py::test_int8_recipe_end_to_end",
    "int8_ptq_vit": "test_report.py::int8_run",
    "openvino_int8": "test_openvino.py::ov_run",
    "sparse24_int8": "test_prune.py::test_sparse24_recipe_end_to_end",
    "tensorrt_jetson": "test_tensorrt.py::test_jetson_recipe_writes_onnx_and_trtexec_lines",
    "tome_fp32": "test_sweep.py::test_sweep_runs_each_value_and_tabulates_them",
    "tome_int8": "test_tokens.py::test_merge_then_quantize_recipe_end_to_end",
    "w4a4_adalog": "test_quant_vit.py::test_w4a4_adalog_recipe_end_to_end",
    "w8a8_adalog": "test_hf.py::test_w8a8_adalog_quantizes_the_softmax_and_gelu_of_an_hf_vit",
}
RUN_HERE = [p for p in RECIPES if p.stem not in COVERED]
# stages that hold randomness or search (block pruning, AdaRound, token pruning): run twice, the artifacts must be
# the same bytes (seeded runs; with no device, placement is not timed)
TWICE = {"block_prune_int8", "hybrid_w4a8_recon", "evit_int8"}
# with 16 calibration and 24 evaluation images the budget and agreement checks may miss by an image, and speed is
# not timed; nothing else may fail
TOLERATED = ("agrees with the simulation", "agree with FP32", "not slower")


def _small(recipe) -> list[str]:
    """Overrides that shrink what the recipe spends, naming only the sections it has."""
    sets = ["validate.devices=[]"]
    if recipe.validation.eval is not None:
        sets.append("validate.eval.num=24")
    if recipe.calibration is not None:
        sets.append("calibration.num=16")
    if recipe.prune is not None:
        sets.append("prune.images=16")
        if recipe.prune.reconstruct is not None:
            sets.append("prune.reconstruct.iters=2")
    if recipe.quantize is not None:
        sets.append("quantize.search_images=16")
        if recipe.quantize.reconstruct is not None:
            sets += ["quantize.reconstruct.iters=2", "quantize.reconstruct.images=16"]
    return sets


def _run(path: Path, out: Path) -> tuple[int, dict]:
    recipe = load_recipe(path)
    result = run(load_recipe(path, _small(recipe)), out)
    return STATUS_EXIT[result.report["status"]], json.loads((out / "report.json").read_text())


def test_every_recipe_is_run_end_to_end_somewhere():
    """Each COVERED entry names a recipe that exists and a test (or fixture) that runs it through compress."""
    assert set(COVERED) <= {p.stem for p in RECIPES}
    for name, where in COVERED.items():
        file, func = where.split("::")
        src = (ROOT / "tests" / file).read_text()
        body = re.search(rf"\ndef {func}\(.*?(?=\n(?:def |@|class )|\Z)", src, re.S)
        assert body and name in body.group(0) and ("compress" in body.group(0) or "_compress" in body.group(0)), where


@pytest.mark.parametrize("path", RUN_HERE, ids=[p.stem for p in RUN_HERE])
def test_shipped_recipe_runs_end_to_end(path: Path, tmp_path):
    recipe = load_recipe(path)
    out = tmp_path / "run"
    code, rep = _run(path, out)
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    failed = [c for c in rep["checks"] if not c["ok"]]
    assert all(c.get("kind") == "budget" or any(t in c["name"] for t in TOLERATED) for c in failed), failed
    assert (code == 1) == bool(failed)
    written = [r for r in rep["results"] if r.get("file") and not r.get("reference")]
    assert len(written) == len(recipe.export), [r["name"] for r in written]  # every artifact the recipe asks for
    assert all((out / r["file"]).exists() for r in written)
    if path.stem in TWICE:
        again = tmp_path / "again"
        assert _run(path, again)[0] == code
        # every artifact's files: ONNX files and CoreML packages (a folder)
        files = sorted(f.relative_to(out) for r in written for p in [out / r["file"]]
                       for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())
        assert any(f.suffix == ".onnx" for f in files)
        for f in files:
            assert (out / f).read_bytes() == (again / f).read_bytes(), f
