"""--sweep: the one-recipe sweep plan: one run per value of a recipe key, validated before anything runs, and one
table comparing them."""
from __future__ import annotations

import json

from conftest import cli, fast

FAST = fast(calib_num=None)


def test_sweep_runs_each_value_and_tabulates_them(tmp_path):
    """tome_fp32 over r=2 and r=8: a finished run per value, each with the original model's ONNX as its
    speed yardstick; the table has both values, and more merging means fewer FLOPs. r=8 pays in time, at batch 1
    or in throughput (it is timed against the unreduced model before it is applied); r=2 may or may not, here."""
    out = tmp_path / "sweep"
    res = cli("compress", "--recipe", "recipes/tome_fp32.yaml", "--sweep", "tokens.r=2,8", "--out", str(out), *FAST)
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["name"] == "tome_fp32-sweep" and [r["settings"] for r in summary["runs"]] == [
        {"tokens.r": "2"}, {"tokens.r": "8"}]
    for v in summary["runs"]:
        folder = out / "runs" / v["folder"]
        assert v["status"] == "complete" and v["run_status"] == "ok" and (folder / "report.json").is_file()
        rows = {r["name"]: r for r in v["rows"]}
        assert rows["onnx-fp32-original"]["reference"] and rows["onnx-fp32-original"]["speed_vs_reference"] == 1.0
        assert rows["onnx-fp32"]["throughput_vs_reference"] > 0 and 0 < rows["onnx-fp32"]["top1"] <= 1
        assert v["artifact"] == "onnx-fp32" and v["speed_vs_fp32"] == rows["onnx-fp32"]["speed_vs_reference"]
        assert f"r: {v['settings']['tokens.r']}" in (folder / "recipe.lock.yaml").read_text()
    r2, r8 = summary["runs"]
    assert r8["flops_ratio"] < (r2["flops_ratio"] or 1.0) <= 1  # None: r=2 did not pay in time here
    timing = json.loads((out / "runs" / r8["folder"] / "report.json").read_text())["tokens"]["timing"]
    # the recipe judges the saving at batch 1 or in throughput (tokens.time_at: either): one of them paid
    paid = [k for k in ("batch1", "throughput") if timing["time_saving"][k] >= 0.03]
    assert paid and all(timing["reduced_ms"][k] < timing["unreduced_ms"][k] for k in paid), timing
    md = (out / "sweep.md").read_text()
    assert "| tome_fp32 | `tokens.r=2` | local-ort-cpu | ok |" in md and "| tome_fp32 | `tokens.r=8` | local-ort-cpu | ok |" in md


def test_a_bad_sweep_value_stops_before_any_run(tmp_path):
    out = tmp_path / "sweep"
    res = cli("compress", "--recipe", "recipes/tome_fp32.yaml", "--sweep", "tokens.r=4,banana", "--out", str(out))
    assert res.returncode == 2  # a bad input, as the README's exit codes say
    assert "tokens.r=banana" in res.stdout + res.stderr
    assert not out.exists() and not list(tmp_path.iterdir())
