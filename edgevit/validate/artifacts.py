"""Validation of a run's artifacts on their real runtimes: accuracy against the FP32 PyTorch model,
parity with the model each came from, latency on every local device (all artifacts interleaved round
by round), and the same on each SSH device in one session there."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edgevit.devices.lease import timing_lease
from edgevit.exporters.onnx import export_onnx
from edgevit.progress import new_progress
from edgevit.runtimes import RUNTIMES
from edgevit.runtimes.onnxruntime import OnnxExport
from edgevit.validate.accuracy import accuracy_metrics, changed_predictions, collect_logits, compare_logits
from edgevit.validate.checks import STAGE_ROWS, artifact_checks, budget_checks, not_slower_checks
from edgevit.validate.latency import measure_interleaved, timed_iterations
from edgevit.validate.runners import TorchRunner

log = logging.getLogger("edgevit")
REFERENCE_NAME, REFERENCE_FILE = "onnx-fp32-original", "reference/original-fp32.onnx"
FLOAT_STAGES = tuple(name for _, name in STAGE_ROWS)  # float models made by a stage: timed like the dense one


def original_reference(model, info, recipe_name: str, stage: Path) -> dict:
    """The model before pruning/token reduction as FP32 ONNX, timed interleaved with the artifacts so that
    the report's speed column says what the stages bought on the runtime (kept under ``reference/``:
    a yardstick, not a deliverable)."""
    path = stage / REFERENCE_FILE
    path.parent.mkdir(exist_ok=True)
    facts = export_onnx(model, info, OnnxExport(precision="fp32"), path, recipe_name)
    log.info("exported %s, the original model as the speed reference", REFERENCE_FILE)
    return {"name": REFERENCE_NAME, "file": REFERENCE_FILE, "format": "onnx", "precision": "fp32",
            "runtime": "onnxruntime", "size_bytes": path.stat().st_size, "export": facts, "simulated_by": None,
            "reference": True}


def _parity(runner, origin, x: np.ndarray, tol: float, precision: str, against: str) -> dict:
    """Max abs logit difference of an artifact vs the PyTorch model it came from, on real images."""
    diff = float(np.abs(runner(x) - TorchRunner(origin)(x)).max())
    return {"images": int(len(x)), "max_abs_diff": diff, "tolerance": tol, "against": against,
            "ok": diff <= tol if precision == "fp32" else None}


def _agreement(logits: dict, name: str, origin: str | None) -> dict | None:
    """Top-1 agreement and logit SQNR of ``name`` against ``origin`` on the evaluation images."""
    if origin is None or origin not in logits or name not in logits:
        return None
    return compare_logits(logits[name], logits[origin])


def model_cost(model, x: np.ndarray) -> dict:
    """FLOPs of one forward pass on ``x`` (one image) and the non-zero Linear/Conv weights of ``model``."""
    import torch

    from edgevit.prune import sparsity_summary
    from edgevit.tokens import count_flops

    s = sparsity_summary(model)
    return {"flops": count_flops(model, torch.from_numpy(x)), "nonzero_weights": s["weights"] - s["zero_weights"]}


def validate(recipe, model, sims: dict, info, params: int, artifacts: list[dict], evalset, stage: Path,
             seed: int) -> tuple[list[dict], list[dict]]:
    """Rows for the reference, the simulated models and every artifact, measured; and the checks on them.

    INT8 artifacts are compared with the fake-quant PyTorch model they were lowered from (simulated vs
    deployed); FP32/FP16 ones with the float model.
    """
    val = recipe.validation
    devices = [d for d in val.devices if d.kind == "local"]
    sample = evalset.x[:max(1, min(len(evalset.x), 64))] if evalset else \
        np.random.default_rng(seed).standard_normal((8, 3, info.input_size, info.input_size)).astype(np.float32)
    rows = [{"name": "pytorch-fp32", "file": None, "format": "pytorch", "precision": "fp32",
             "runtime": "torch", "size_bytes": params * 4, "export": None}]
    threads = devices[0].threads if devices else None  # None: the runners' default, the process's threads
    runners = [TorchRunner(model, threads)]
    for sim_name, sim_model in sims.items():
        is_float = sim_name in FLOAT_STAGES  # pruned or token-reduced float model: timed like the dense one
        rows.append({"name": sim_name, "file": None, "format": "pytorch", "precision": "fp32" if is_float else "int8-sim",
                     "runtime": "torch", "export": None,
                     "size_bytes": sum(p.numel() for p in sim_model.parameters()) * 4 if is_float else None})
        runners.append(TorchRunner(sim_model, threads))
    for row, m in zip(rows, [model, *sims.values()]):  # what the stages saved, for the report's first table
        row |= model_cost(m, sample[:1])
    for a in artifacts:
        rows.append(a)
        runners.append(RUNTIMES[a["runtime"]].local_runner(stage / a["file"], devices[0] if devices else None))
        if getattr(runners[-1], "exact_integers", False):
            a["exact_integers"] = True
    timed = [(r, run) for r, run in zip(rows, runners) if r["precision"] != "int8-sim" and run is not None]
    n_eval = len(evalset.x) if evalset else 0
    logits: dict[str, np.ndarray] = {}
    with new_progress() as progress:
        t_eval = progress.add_task("evaluate", total=n_eval * sum(r is not None for r in runners))
        t_lat = progress.add_task("benchmark", total=sum(timed_iterations(d) for d in devices) * len(timed))
        for row, runner in zip(rows, runners):
            row["accuracy"] = None
            if runner is None:  # validated at export (e.g. a CoreML package here); nothing runs here
                row["parity"], row["latency"] = None, []
                continue
            if evalset:
                logits[row["name"]] = collect_logits(runner, evalset.x, evalset.batch_size,
                                                     lambda n: progress.advance(t_eval, n))
                row["accuracy"] = accuracy_metrics(logits[row["name"]], evalset.labels, logits["pytorch-fp32"])
            origin = sims[row["simulated_by"]] if row.get("simulated_by") else model
            row["parity"] = None if row["runtime"] == "torch" else \
                _parity(runner, origin, sample[:val.parity_images], val.parity_tolerance,
                        row["precision"], row.get("simulated_by") or "pytorch-fp32")
            row["latency"] = []
        for d in devices:  # all artifacts interleaved: the FP32 baseline shares the load of each one
            with timing_lease(d, "validate"):
                measured = measure_interleaved({r["name"]: run for r, run in timed}, sample, d,
                                               lambda: progress.advance(t_lat))
            for r, _ in timed:
                r["latency"].append(measured[r["name"]])
    ref_top1 = rows[0]["accuracy"]["top1"] if rows[0]["accuracy"] else None
    for row in rows:
        acc = row["accuracy"]
        if acc is None:
            continue
        acc["delta_top1"] = (acc["top1"] - ref_top1) if (acc["top1"] is not None and ref_top1 is not None) else None
        if row["runtime"] == "torch":
            continue
        origin = row.get("simulated_by") or rows[0]["name"]
        if row["precision"] == "fp32" and row["name"] in logits and origin in logits:
            acc["top1_changes"] = changed_predictions(logits[row["name"]], logits[origin], 2 * val.parity_tolerance)
        if row["precision"] in ("fp16", "bf16"):
            cmp = _agreement(logits, row["name"], origin)
            if cmp is not None:
                acc["agreement_with_fp32"], acc["sqnr_db_vs_fp32"] = cmp["top1_agreement"], cmp["sqnr_db"]
        if row["precision"] == "int8":
            cmp = _agreement(logits, row["name"], row.get("simulated_by"))
            if cmp is not None:
                acc["agreement_with_simulation"], acc["sqnr_db_vs_simulation"] = cmp["top1_agreement"], cmp["sqnr_db"]
    checks = [c.model_dump() for c in artifact_checks(rows, val, n_eval, info.random_weights)
              + budget_checks(rows, recipe.budget, info.random_weights)]
    for device in (d for d in val.devices if d.kind == "ssh"):
        checks += remote_device(device, rows, logits, evalset, sample, info, stage)
    # after the SSH devices: their timings are the ones that count for a deployment target
    return rows, checks + [c.model_dump() for c in not_slower_checks(rows)]


def remote_device(device, rows: list[dict], logits: dict, evalset, sample: np.ndarray, info,
                  stage: Path) -> list[dict]:
    """Every artifact the device's runtime runs, measured on the device in one session (interleaved);
    adds a latency entry (with top-1 on the device's copy of the eval sample) to each row; checks that
    the device predicts what this machine predicted."""
    from edgevit.devices.remote import measure_remote, runs_on

    todo = [r for r in rows if runs_on(device, r)]
    if not todo:
        log.warning("device %s: no artifact of this run runs on %s", device.name, device.runtime)
        return []
    n = min(device.eval_images, len(evalset.x)) if evalset else 0
    x = evalset.x[:n] if n else sample
    y = evalset.labels[:n] if n and evalset.labels is not None else None
    log.info("device %s: measuring %d artifact(s) over SSH (%s)", device.name, len(todo), device.ssh.host)
    with new_progress() as progress:
        progress.add_task(f"device {device.name} ({len(todo)} artifacts)", total=None)
        with timing_lease(device, "validate"):
            out = measure_remote(device, [(r["name"], stage / r["file"]) for r in todo], x, y, info)
    checks = []
    for r in todo:
        got = out["artifacts"][r["name"]]
        preds = np.asarray(got.pop("predictions"))
        origin = r["name"] if r["name"] in logits else (r.get("simulated_by") or "pytorch-fp32")
        agree = float((preds == logits[origin][:len(preds)].argmax(1)).mean()) if n and origin in logits else None
        r.setdefault("latency", []).append({
            "device": device.name, "threads": device.threads, "batch1": got["batch1"], "throughput": got["throughput"],
            "load_average": out["load_average"], "remote": {"host": device.ssh.host, "runtime": out["runtime_version"],
                                                            **out["machine"]},
            "accuracy": {"top1": got.get("top1"), "images": int(len(preds)), "agreement_with": origin,
                         "agreement": agree}})
        if r.get("not_measured"):  # not run here (e.g. a CoreML package), but on this device
            r["not_measured"] = f"here (needs macOS); measured on device {device.name}, see its section"
        if origin == r["name"] and agree is not None:  # the same file ran here: the device must agree with it
            checks.append({"name": f"{r['name']}: same predictions on device {device.name}", "ok": agree >= 0.99,
                           "detail": f"top-1 agreement with {origin} here {100 * agree:.1f} % on {len(preds)} images "
                                     "(needs >= 99 %)"})
    return checks
