"""The one path every run takes: recipe -> model -> stages -> artifacts -> validation -> report."""
from __future__ import annotations

import logging
import platform
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from edgevit import __version__
from edgevit.data import Preprocess, open_image_set
from edgevit.errors import BadInput
from edgevit.export.onnx import export_onnx
from edgevit.models import load_model
from edgevit.progress import new_progress
from edgevit.recipe import Recipe, recipe_to_yaml
from edgevit.report import write_reports
from edgevit.runfolder import staged_run_folder
from edgevit.validate import OrtRunner, TorchRunner, accuracy_metrics, collect_logits, map_labels, measure
from edgevit.validate.latency import timed_iterations

log = logging.getLogger("edgevit")


@dataclass
class RunResult:
    """Where a run wrote its outputs and what its report says."""

    out_dir: Path
    report: dict

    @property
    def ok(self) -> bool:
        return self.report["status"] == "ok"


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch so the same recipe gives the same artifacts."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def environment() -> dict:
    """Versions and machine facts recorded in every report."""
    import onnx
    import onnxruntime
    import timm

    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpu_count": __import__("os").cpu_count(), "torch": torch.__version__,
            "timm": timm.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "edgevit": __version__}


def _artifact_files(exports) -> list[str]:
    names = [f"{cfg.name or f'{cfg.format}-{cfg.precision}'}.{cfg.format}" for cfg in exports]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise BadInput(f"export: two artifacts would both be written as {dupes[0]}; give them distinct 'name's")
    return names


def _load_eval(recipe: Recipe, pre: Preprocess, info) -> dict | None:
    cfg = recipe.validation.eval
    if cfg is None:
        return None
    images = open_image_set(cfg.path, cfg.num, cfg.seed)
    with new_progress() as progress:
        task = progress.add_task("load eval images", total=len(images))
        x, y = images.load(pre, cfg.batch_size, on_file=lambda: progress.advance(task))
    labels, mapping = map_labels(images.classes, y, info.labels)
    if images.skipped:
        log.warning("%d unreadable image(s) skipped in %s", len(images.skipped), cfg.path)
    return {"x": x, "labels": labels, "batch_size": cfg.batch_size,
            "summary": {"path": str(cfg.path), "images": int(len(x)), "listed": len(images),
                        "skipped": len(images.skipped),
                        "skipped_files": [{"file": f, "error": e} for f, e in images.skipped[:20]],
                        "labeled": labels is not None, "label_mapping": mapping}}


def _calibration_summary(recipe: Recipe) -> dict | None:
    cfg = recipe.calibration
    if cfg is None:
        return None
    images = open_image_set(cfg.path, cfg.num, cfg.seed)
    # No stage of this issue consumes calibration data yet; list it so a bad path fails early.
    return {"path": str(cfg.path), "images": len(images), "used_by": []}


def run(recipe: Recipe, out_dir: Path, overwrite: bool = False) -> RunResult:
    """Run a validated recipe into ``out_dir`` (created only when the run completes)."""
    seed_everything(recipe.seed)
    started = time.time()
    names = _artifact_files(recipe.export)
    with staged_run_folder(out_dir, overwrite) as stage, _run_log(stage / "run.log"):
        (stage / "recipe.lock.yaml").write_text(recipe_to_yaml(recipe))
        model, info = load_model(recipe.model)
        log.info("model %s: %s, %d classes, input %d px", info.source, info.arch, info.num_classes, info.input_size)
        pre = Preprocess(info.input_size, info.mean, info.std, info.crop_pct, info.interpolation)
        calib = _calibration_summary(recipe)
        evalset = _load_eval(recipe, pre, info)
        params = sum(p.numel() for p in model.parameters())
        artifacts = []
        with new_progress() as progress:
            task = progress.add_task("export", total=len(recipe.export))
            for cfg, name in zip(recipe.export, names):
                facts = export_onnx(model, info, cfg, stage / name, recipe.name)
                artifacts.append({"name": cfg.name or name, "file": name, "format": cfg.format,
                                  "precision": cfg.precision, "runtime": "onnxruntime",
                                  "size_bytes": (stage / name).stat().st_size, "export": facts})
                log.info("exported %s (%.2f MB, %s)", name, artifacts[-1]["size_bytes"] / 1e6, facts["simplifier"])
                progress.advance(task)
        results, checks = _validate(recipe, model, info, params, artifacts, evalset, stage)
        report = {
            "schema_version": 1,
            "edgevit_version": __version__,
            "recipe": recipe.name,
            "description": recipe.description,
            "seed": recipe.seed,
            "status": "ok" if all(c["ok"] for c in checks) else "failed_checks",
            "model": {"source": info.source, "arch": info.arch, "num_classes": info.num_classes,
                      "params": params, "labels": info.labels, "preprocessing": info.preprocessing(),
                      "card": info.card},
            "data": {"calibration": calib, "eval": evalset["summary"] if evalset else None},
            "results": results,
            "checks": checks,
            "environment": environment(),
            "elapsed_s": round(time.time() - started, 1),
        }
        for c in checks:
            (log.info if c["ok"] else log.error)("%s %s: %s", "PASS" if c["ok"] else "FAIL", c["name"], c["detail"])
        write_reports(report, stage)
    return RunResult(out_dir=out_dir, report=report)


@contextmanager
def _run_log(path: Path) -> Iterator[None]:
    """Copy the edgevit log into the run folder while the run lasts."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("edgevit")
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()


def _validate(recipe: Recipe, model, info, params: int, artifacts: list[dict], evalset: dict | None,
              stage: Path) -> tuple[list[dict], list[dict]]:
    """Accuracy of every artifact on its runtime against the FP32 PyTorch model, parity, latency."""
    val = recipe.validation
    devices = val.devices
    sample = evalset["x"][:max(1, min(len(evalset["x"]), 64))] if evalset else \
        np.random.default_rng(recipe.seed).standard_normal((8, 3, info.input_size, info.input_size)).astype(np.float32)
    reference_row = {"name": "pytorch-fp32", "file": None, "format": "pytorch", "precision": "fp32",
                     "runtime": "torch", "size_bytes": params * 4, "export": None}
    rows = [reference_row] + artifacts
    checks: list[dict] = []
    n_eval = len(evalset["x"]) if evalset else 0
    per_device = sum(timed_iterations(d) for d in devices)
    with new_progress() as progress:
        t_eval = progress.add_task("evaluate", total=n_eval * len(rows))
        t_lat = progress.add_task("benchmark", total=per_device * len(rows))
        ref_logits = None
        for row in rows:
            threads = devices[0].threads if devices else 2
            providers = devices[0].providers if devices else None
            runner = TorchRunner(model, threads) if row["runtime"] == "torch" else \
                OrtRunner(stage / row["file"], threads, providers)
            if evalset:
                logits = collect_logits(runner, evalset["x"], evalset["batch_size"],
                                        lambda n: progress.advance(t_eval, n))
                if ref_logits is None:
                    ref_logits = logits
                row["accuracy"] = accuracy_metrics(logits, evalset["labels"], ref_logits)
            else:
                row["accuracy"] = None
            row["parity"] = _parity(runner, model, sample[:val.parity_images], val.parity_tolerance, row)
            if row["parity"] is not None and row["precision"] == "fp32":
                checks.append({"name": f"{row['name']}: FP32 ONNX matches PyTorch",
                               "ok": row["parity"]["ok"],
                               "detail": f"max abs logit diff {row['parity']['max_abs_diff']:.2e} "
                                         f"(tolerance {val.parity_tolerance:g}) on {row['parity']['images']} images"})
            row["latency"] = [measure(runner, sample, d, lambda: progress.advance(t_lat)) for d in devices]
    ref_top1 = rows[0]["accuracy"]["top1"] if rows[0].get("accuracy") else None
    for row in rows:
        acc = row.get("accuracy")
        if acc is not None:
            acc["delta_top1"] = (acc["top1"] - ref_top1) if (acc["top1"] is not None and ref_top1 is not None) else None
    fp32_onnx = [r for r in rows if r["runtime"] == "onnxruntime" and r["precision"] == "fp32" and r.get("accuracy")]
    for r in fp32_onnx:
        if r["accuracy"]["top1"] is not None and ref_top1 is not None:
            checks.append({"name": f"{r['name']}: top-1 in ORT equals PyTorch",
                           "ok": abs(r["accuracy"]["top1"] - ref_top1) <= 1.0 / max(1, n_eval) + 1e-12,
                           "detail": f"ORT {r['accuracy']['top1']:.4f} vs PyTorch {ref_top1:.4f} on {n_eval} images"})
    return rows, checks


def _parity(runner, model, x: np.ndarray, tol: float, row: dict) -> dict | None:
    """Max abs logit difference of an artifact vs the PyTorch model on real images."""
    if row["runtime"] == "torch":
        return None
    ref = TorchRunner(model)(x)
    diff = float(np.abs(runner(x) - ref).max())
    return {"images": int(len(x)), "max_abs_diff": diff, "tolerance": tol,
            "ok": diff <= tol if row["precision"] == "fp32" else None}
