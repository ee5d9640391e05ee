"""The accuracy budget of a whole run: a deployed artifact that lost more than the recipe allows fails, the run
ends ``over_budget`` (exit 1) and says which stage spent what."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import CALIB_DIR, ROOT, cli
from edgevit.config import BudgetConfig
from edgevit.errors import BadInput
from edgevit.recipe import load_recipe
from edgevit.stages.context import EvalSet
from edgevit.validate.checks import budget_checks, check_budget_measurable


def _row(name, runtime, top1, agreement=None, **kw):
    acc = None if top1 is None and agreement is None else {"top1": top1, "top1_agreement": agreement}
    return {"name": name, "runtime": runtime, "precision": kw.pop("precision", "fp32"), "accuracy": acc, **kw}


def test_budget_checks_name_the_stage_that_spent_it():
    """Top-1 against the original FP32 model, step by step: pruning, token reduction, quantization, export;
    an INT8 artifact that does not run here is judged on its simulation, a weight-compressed one is not judged
    (nothing measured it here); the before-fallback diagnostic and the speed yardstick are not deployed."""
    rows = [_row("pytorch-fp32", "torch", 0.777), _row("pytorch-pruned", "torch", 0.596),
            _row("pytorch-tokens", "torch", 0.493), _row("pytorch-int8-sim", "torch", 0.490, precision="int8-sim"),
            _row("onnx-fp32", "onnxruntime", 0.493, simulated_by="pytorch-tokens"),
            _row("onnx-int8", "onnxruntime", 0.489, precision="int8", simulated_by="pytorch-int8-sim"),
            _row("coreml-w8a8", "coreml", None, precision="int8", simulated_by="pytorch-int8-sim"),
            _row("onnx-int8-before-fallback", "onnxruntime", 0.1, precision="int8"),
            _row("coreml-palettize4", "coreml", None, simulated_by="pytorch-tokens"),
            _row("original-fp32", "onnxruntime", 0.777, reference=True)]
    checks = {c.name.split(":")[0]: c for c in budget_checks(rows, BudgetConfig(max_accuracy_drop=1.0), False)}
    assert set(checks) == {"onnx-fp32", "onnx-int8", "coreml-w8a8"} and not any(c.ok for c in checks.values())
    assert "quantization" not in checks["onnx-fp32"].detail  # a float artifact: pruning and merging only
    d = checks["onnx-int8"].detail
    assert "-28.80 points (budget 1)" in d and "pruning -18.10" in d and "token reduction -10.30" in d
    assert "quantization -0.30" in d and "ONNX Runtime export -0.10" in d
    assert "measured on pytorch-int8-sim" in checks["coreml-w8a8"].detail
    assert all(c.kind == "budget" for c in checks.values())
    wide = budget_checks(rows, BudgetConfig(max_accuracy_drop=30.0), False)
    assert all(c.ok for c in wide)
    assert budget_checks(rows, BudgetConfig(max_accuracy_drop=1.0), random_weights=True) == []


def test_budget_without_labels_uses_agreement():
    """Without labels top-1 cannot be measured: the agreement budget judges, and a top-1 budget alone fails
    naming the key to set."""
    rows = [_row("pytorch-fp32", "torch", None, 1.0),
            _row("onnx-int8", "onnxruntime", None, 0.985, precision="int8")]
    [c] = budget_checks(rows, BudgetConfig(max_agreement_loss=2.0), False)
    assert c.ok and "top-1 agreement with FP32 98.50 %" in c.detail
    [c] = budget_checks(rows, BudgetConfig(max_agreement_loss=1.0), False)
    assert not c.ok
    [c] = budget_checks(rows, BudgetConfig(max_accuracy_drop=1.0), False)
    assert not c.ok and "budget.max_agreement_loss" in c.detail


def test_a_top1_budget_without_labels_is_refused_before_the_run(tmp_path):
    """Unlabeled evaluation images cannot measure a top-1 budget: the run is refused in seconds, exit 2, one line
    naming both budget keys, nothing written; an agreement budget beside it measures the run instead."""
    flat, out = tmp_path / "flat", tmp_path / "runs" / "run"
    flat.mkdir()
    for f in sorted(CALIB_DIR.rglob("*.jpg"))[:16]:  # images without class folders
        shutil.copy(f, flat / f"{f.parent.name}-{f.name}")
    r = cli("compress", "--recipe", "int8_ptq", "--eval", str(flat), "--out", str(out))
    assert r.returncode == 2, r.stderr[-2000:]
    [line] = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert "budget.max_accuracy_drop" in line and "budget.max_agreement_loss" in line and str(flat) in line
    assert not out.exists() and list((tmp_path / "runs").iterdir()) == []
    x = np.zeros((2, 3, 32, 32), np.float32)
    unlabeled = EvalSet(x, None, 2, {"path": "imgs", "label_mapping": "3 class folders do not match the model's "
                                      "10 labels: top-1 not computed"})
    recipe = _recipe("budget.max_accuracy_drop=1.0")
    with pytest.raises(BadInput, match="3 class folders do not match"):
        check_budget_measurable(recipe, unlabeled, random_weights=False)
    check_budget_measurable(recipe, unlabeled, random_weights=True)  # random weights: the budget does not judge
    check_budget_measurable(_recipe("budget.max_accuracy_drop=1.0", "budget.max_agreement_loss=2.0"), unlabeled,
                            random_weights=False)
    check_budget_measurable(recipe, EvalSet(x, np.zeros(2, np.int64), 2, {}), random_weights=False)


def _recipe(*sets):
    return load_recipe(str(ROOT / "recipes" / "int8_ptq.yaml"), [
        f"calibration.path={CALIB_DIR}", "calibration.num=64", "validate.eval.num=200", "validate.devices=[]",
        "export=[export/onnx-fp32.yaml,export/onnx-int8.yaml]", "quantize.placement=all", *sets])


def test_budget_settings_are_checked():
    with pytest.raises(BadInput, match="budget"):
        _recipe("budget={}")
    with pytest.raises(BadInput, match="budget: needs validate.eval"):
        _recipe("budget.max_accuracy_drop=1.0", "validate.eval=null")
    assert _recipe("budget.max_accuracy_drop=0.5").budget.max_accuracy_drop == 0.5


def test_pruned_hybrid_over_budget_exits_1_naming_pruning(tmp_path):
    """The issue's case: 2:4 on the built-in hybrid costs many points; with a 1-point budget the run ends over
    budget, exit 1, its status line and report naming pruning; the same run without pruning is within."""
    args = ["compress", "--recipe", "int8_ptq", "--set", f"calibration.path={CALIB_DIR}", "--set", "calibration.num=32",
            "--set", "validate.eval.num=200", "--set", "validate.devices=[]", "--set", "quantize.placement=all",
            "--set", "export=[export/onnx-fp32.yaml,export/onnx-int8.yaml]", "--set", "budget.max_accuracy_drop=1.0"]
    over = cli(*args, "--set", "prune={nm: {n: 2, m: 4, criterion: magnitude}}", "--out", str(tmp_path / "over"))
    assert over.returncode == 1, over.stderr[-2000:]
    line = next(ln for ln in over.stderr.splitlines() if ln.startswith("status:"))
    assert line.startswith("status: OVER THE ACCURACY BUDGET") and "pruning -" in line
    report = (tmp_path / "over" / "report.md").read_text()
    assert "## Accuracy budget" in report and "**NO**" in report
    within = cli(*args, "--set", "budget.max_accuracy_drop=3.0", "--out", str(tmp_path / "within"))
    assert within.returncode == 0, within.stderr[-2000:]
    assert "| onnx-int8 | yes |" in (tmp_path / "within" / "report.md").read_text()


def test_every_shipped_compression_recipe_states_a_budget():
    """A recipe that prunes, merges tokens or quantizes says how much accuracy it may spend."""
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        r = load_recipe(str(path))
        if r.prune or r.tokens or r.quantize:
            assert r.budget is not None and r.validation.eval is not None, path.name
