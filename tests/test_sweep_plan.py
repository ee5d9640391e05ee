"""Sweep plans (`edgevit sweep plan.yaml`): validation that names the file and key, --dry-run, the local executor
with a run that fails on bad input beside runs that finish, one leaderboard, and a restart that skips what is done."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import CALIB_DIR, cli
from edgevit.errors import BadInput
from edgevit.sweeps.plan import expand, load_plan, parse_sweep, runs_folder

# tiny runs: what is checked here is the sweep, not what the recipes reach
SMALL = [f"calibration.path={CALIB_DIR}", "calibration.num=16", "validate.eval.num=24", "quantize.placement=all",
         "validate.devices.0.iters=3", "validate.devices.0.warmup=1", "validate.devices.0.throughput_batch=2",
         "validate.devices.0.threads=1"]


def write_plan(path, **kw) -> str:
    plan = {"name": "zoo", "recipes": ["recipes/int8_ptq.yaml"], "models": ["builtin:hybrid-cifar10"],
            "overrides": SMALL} | kw
    path.write_text(yaml.safe_dump(plan))
    return str(path)


def test_sweep_spec_keeps_bracketed_lists_whole():
    assert parse_sweep("tokens.r=4,8, 12") == ("tokens.r", ["4", "8", "12"])
    assert parse_sweep("tokens.r=[8,8,8],[4,4,4]") == ("tokens.r", ["[8,8,8]", "[4,4,4]"])
    for bad in ("tokens.r", "tokens.r=", "tokens.r=4,,8", "=4,8", "tokens.r=[4,8", "tokens.r=4,4"):
        with pytest.raises(BadInput, match="--sweep"):
            parse_sweep(bad)


@pytest.mark.parametrize("change, message", [
    ({"recipies": ["x"]}, r"plan.yaml: recipies: unknown key 'recipies' \(allowed: .*recipes"),
    ({"recipes": []}, r"plan.yaml: recipes: "),
    ({"set": {"quantize.activations.percentile": []}}, r"plan.yaml: set.quantize.activations.percentile: give at"),
    ({"name": "a b"}, r"plan.yaml: name: "),
    ({"max_retries": -1}, r"plan.yaml: max_retries: "),
])
def test_a_bad_plan_names_file_and_key(tmp_path, change, message):
    with pytest.raises(BadInput, match=message):
        load_plan(write_plan(tmp_path / "plan.yaml", **change))


def test_the_plan_expands_to_every_combination_each_with_its_identity(tmp_path):
    """2 recipes x 2 models x 2x2 grid x 1 device = 16 runs; a changed checkpoint changes the identity of
    the runs that use it and of no other; an invalid value is a run with its error, not a crash."""
    ckpt = tmp_path / "ckpt.safetensors"
    from safetensors.torch import save_file
    import torch

    save_file({"w": torch.zeros(2)}, str(ckpt))
    path = write_plan(tmp_path / "plan.yaml", recipes=["int8_ptq", "hybrid_w8a8"],
                      models=["builtin:hybrid-cifar10", {"source": "builtin:vit-cifar10", "checkpoint": "ckpt.safetensors"}],
                      set={"quantize.activations.percentile": [99.99, 99.999], "seed": [0, 1]},
                      devices=["devices/local-ort-cpu.yaml"])
    plan, plan_file = load_plan(path)
    runs = expand(plan, plan_file)
    assert len(runs) == 16 and len({r.id for r in runs}) == 16 and len({r.folder for r in runs}) == 16
    assert all(r.error is None for r in runs)
    assert runs[0].recipe.quantize.activations.percentile == 99.99 and runs[1].recipe.seed == 1
    assert str(runs[4].recipe.model.checkpoint) == str(ckpt.resolve())  # beside the plan file
    ckpt.write_bytes(ckpt.read_bytes() + b" ")
    again = expand(plan, plan_file)
    changed = [a.id != b.id for a, b in zip(runs, again)]
    assert changed == [r.recipe.model.checkpoint is not None for r in runs]
    plan.set["seed"] = [0, "banana"]
    bad = [r for r in expand(plan, plan_file) if r.error]
    assert len(bad) == 8 and all("seed=banana" in r.error and "\n" not in r.error for r in bad)
    with pytest.raises(BadInput, match="seed=banana"):
        expand(plan, plan_file, strict=True)


def test_runs_dir_is_found_beside_the_plan_and_defaults_to_out_runs(tmp_path):
    """A plan's shared ``runs_dir``: relative to the plan file (the driver and every node must see one path),
    absolute as given; without it the runs go to OUT/runs."""
    out = tmp_path / "out"
    plan, plan_file = load_plan(write_plan(tmp_path / "plan.yaml", runs_dir="shared/zoo"))
    assert runs_folder(plan, plan_file, out) == tmp_path / "shared" / "zoo"
    plan, plan_file = load_plan(write_plan(tmp_path / "plan.yaml", runs_dir="/mnt/nfs/zoo"))
    assert runs_folder(plan, plan_file, out) == Path("/mnt/nfs/zoo")
    plan, plan_file = load_plan(write_plan(tmp_path / "plan.yaml"))
    assert runs_folder(plan, plan_file, out) == out / "runs"


def test_dry_run_lists_the_runs_and_flags_the_invalid_one(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEVIT_SWEEP_HISTORY", str(tmp_path / "history.json"))  # empty: no estimates
    path = write_plan(tmp_path / "plan.yaml", set={"quantize.activations.percentile": [99.99, 120]})
    res = cli("sweep", path, "--dry-run", "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    assert len(lines) == 2 and "INVALID" not in lines[0] and "INVALID" in lines[1] and "percentile" in lines[1]
    assert not (tmp_path / "out").exists()


def test_local_sweep_records_a_bad_run_finishes_the_others_and_resumes(tmp_path, monkeypatch):
    """Two models through int8_ptq plus a run with a bad value: the bad one is failed with its one-line error,
    the others complete with a leaderboard row each; rerunning the same command skips the finished runs. The
    finished runs' durations go to the history, and --dry-run then shows them."""
    monkeypatch.setenv("EDGEVIT_SWEEP_HISTORY", str(tmp_path / "history.json"))
    path = write_plan(tmp_path / "plan.yaml", models=["builtin:hybrid-cifar10", "builtin:vit-cifar10"],
                      set={"quantize.activations.bits": [8, 9]})
    out = tmp_path / "out"
    res = cli("sweep", path, "--out", str(out))
    assert res.returncode == 1, res.stderr[-2000:]  # a run failed
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["progress"] == {"total": 4, "complete": 2, "running": 0, "failed": 2, "pending": 0}
    done = [r for r in sweep["runs"] if r["status"] == "complete"]
    failed = [r for r in sweep["runs"] if r["status"] == "failed"]
    assert {r["model"] for r in done} == {"hybrid-cifar10", "vit-cifar10"}
    assert all("quantize.activations.bits" in r["error"] and "\n" not in r["error"] for r in failed)
    for r in done:
        assert (out / "runs" / r["folder"] / "report.json").is_file() and not (out / "runs" / r["folder"]).name.startswith(".")
        assert r["artifact"] == "onnx-int8" and 0 < r["top1"] <= 1 and r["size_vs_fp32"] < 0.5
        assert r["speed_vs_fp32"] > 0 and r["node"] == "local" and r["budget"] in ("within", "over", "no budget")
        assert "validate" in {t["step"] for t in r["timed"]} and all(t["node"] == "local" for t in r["timed"])
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(r["folder"] for r in done)
    assert sweep["order"]["rule"] == "plan" and sweep["order"]["estimated"] == 0  # one at a time: plan order
    history = json.loads((tmp_path / "history.json").read_text())["runs"]
    assert {k: v["seconds"] for k, v in history.items()} == {r["id"]: [r["elapsed_s"]] for r in done}
    dry = cli("sweep", path, "--dry-run").stdout.splitlines()
    assert [r["status"] == "complete" and f"~{r['elapsed_s']:.0f} s (as before)" in ln
            for r, ln in zip(sweep["runs"], dry)] == [r["status"] == "complete" for r in sweep["runs"]]
    assert dry[-1].startswith(f"expected: {sum(r['elapsed_s'] for r in done) / 60:.1f} min of runs for the 2 of 4")
    md = (out / "sweep.md").read_text()
    assert "## hybrid-cifar10" in md and "## vit-cifar10" in md and "## Failed runs" in md
    html = (out / "sweep.html").read_text()
    assert html.count("data:image/png;base64,") == len(sweep["plots"]) == 1
    stamp = {r["folder"]: (out / "runs" / r["folder"] / "report.json").stat().st_mtime_ns for r in done}
    again = cli("sweep", path, "--out", str(out))
    assert again.returncode == 1
    resumed = json.loads((out / "sweep.json").read_text())
    assert [r["status"] for r in resumed["runs"]] == [r["status"] for r in sweep["runs"]]
    assert all(r.get("resumed") for r in resumed["runs"] if r["status"] == "complete")
    assert stamp == {f: (out / "runs" / f / "report.json").stat().st_mtime_ns for f in stamp}
    other = cli("sweep", write_plan(tmp_path / "other.yaml", name="other"), "--out", str(out))
    assert other.returncode == 2 and "holds the sweep 'zoo'" in other.stderr and "--overwrite" in other.stderr


def test_a_run_that_lands_as_ctrl_c_arrives_is_recorded_complete_and_an_old_one_is_not(tmp_path, monkeypatch):
    """Ctrl-C reaching the driver just after a run's folder is in place, before the executor says so (a Ray worker
    writing to a shared runs_dir can finish in that window): sweep.json says that run is complete, with its
    report's figures, and the next one pending; the restart skips it. A run --overwrite was redoing when
    interrupted stays pending even though the shared runs_dir still holds its old folder."""
    from edgevit.sweeps import executors
    from edgevit.sweeps.driver import run_plan

    monkeypatch.setenv("EDGEVIT_SWEEP_HISTORY", "off")
    real = executors.execute_run

    def lands_then_ctrl_c(recipe, dest, node):
        real(recipe, dest, node)
        raise KeyboardInterrupt

    plan, plan_file = load_plan(write_plan(tmp_path / "plan.yaml", set={"seed": [0, 1]}, runs_dir="shared"))
    out, shared = tmp_path / "out", tmp_path / "shared"
    monkeypatch.setattr(executors, "execute_run", lands_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        run_plan(plan, out, plan_file)
    sweep = json.loads((out / "sweep.json").read_text())
    first, second = sweep["runs"]
    assert [first["status"], second["status"]] == ["complete", "pending"]
    report = json.loads((shared / first["folder"] / "report.json").read_text())
    assert first["run_status"] == report["status"] and first["artifact"] == "onnx-int8" and 0 < first["top1"] <= 1
    assert sorted(p.name for p in shared.iterdir()) == [first["folder"]]
    assert sweep["progress"] | {"total": 2} == {"total": 2, "complete": 1, "running": 0, "failed": 0, "pending": 1}

    def ctrl_c(recipe, dest, node):
        raise KeyboardInterrupt

    monkeypatch.setattr(executors, "execute_run", ctrl_c)
    with pytest.raises(KeyboardInterrupt):  # redoing both: the first's old folder is not this sweep's result
        run_plan(plan, out, plan_file, overwrite=True)
    assert [r["status"] for r in json.loads((out / "sweep.json").read_text())["runs"]] == ["pending", "pending"]
    with pytest.raises(KeyboardInterrupt):  # restarted: the finished run is skipped, the other is started
        run_plan(plan, out, plan_file)
    again = json.loads((out / "sweep.json").read_text())["runs"]
    assert [(r["status"], r.get("resumed")) for r in again] == [("complete", True), ("pending", None)]
