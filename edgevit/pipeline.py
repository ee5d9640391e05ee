"""The one path every run takes: recipe -> model -> stages -> artifacts -> validation -> report."""
from __future__ import annotations

import json
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

from edgevit._version import __version__
from edgevit.data import Preprocess
from edgevit.errors import RunFailure
from edgevit.models import load_model
from edgevit.recipe import Recipe, recipe_to_yaml
from edgevit.report import write_reports
from edgevit.results import SCHEMA_VERSION, RunReport
from edgevit.runfolder import STATUS_FILE, mark, staged_run_folder
from edgevit.stages import STAGES, RunContext, check_stages
from edgevit.stages.context import load_eval
from edgevit.stages.export import ExportJob, artifact_files, export_all
from edgevit.validate.artifacts import original_reference, validate
from edgevit.validate.checks import BEFORE_FALLBACK, check_budget_measurable, speed_not_compared
from edgevit.validate.latency import cpu_facts

log = logging.getLogger("edgevit")


@dataclass
class RunResult:
    """Where a run wrote its outputs and what its report says (``report`` as report.json holds it)."""

    out_dir: Path
    report: dict

    @property
    def ok(self) -> bool:
        return self.report["status"] == "ok"

    @property
    def typed(self) -> RunReport:
        return RunReport.model_validate(self.report)


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
            "edgevit": __version__, "cpu": cpu_facts()}


def run(recipe: Recipe, out_dir: Path, overwrite: bool = False) -> RunResult:
    """Run a validated recipe into ``out_dir`` (created only when the run completes)."""
    seed_everything(recipe.seed)
    started = time.time()
    files = artifact_files(recipe.export)
    with staged_run_folder(out_dir, overwrite) as stage, _run_log(stage / "run.log"), _memory_errors(stage):
        mark(stage, "load", recipe=recipe.name)  # first, so a run killed at any later point says where it died
        (stage / "recipe.lock.yaml").write_text(recipe_to_yaml(recipe))
        model, info = load_model(recipe.model)
        log.info("model %s: %s, %d classes, input %d px", info.source, info.arch, info.num_classes, info.input_size)
        pre = Preprocess(info.input_size, info.mean, info.std, info.crop_pct, info.interpolation, info.resize)
        ctx = RunContext(recipe=recipe, stage=stage, info=info, pre=pre, model=model, dense=model,
                         evalset=load_eval(recipe, pre, info))
        check_stages(ctx)
        check_budget_measurable(recipe, ctx.evalset, info.random_weights)
        for st in STAGES:
            if st.enabled(recipe):
                mark(stage, st.step)
                ctx.records[st.section] = st.apply(ctx)
        jobs = [ExportJob(cfg, f) for cfg, f in zip(recipe.export, files)]
        first_int8 = next((j for j in jobs if j.cfg.precision == "int8"), None)
        if ctx.full_plan is not None and first_int8:  # what the accuracy budget's float layers cost
            stem, dot, suffix = first_int8.file.rpartition(".")
            jobs.append(ExportJob(first_int8.cfg, f"{stem}{BEFORE_FALLBACK}{dot}{suffix}", ctx.full_plan,
                                  BEFORE_FALLBACK))
        artifacts = export_all(jobs, ctx)
        if (recipe.prune or recipe.tokens) and any(a["runtime"] == "onnxruntime" for a in artifacts):
            artifacts.append(original_reference(ctx.dense, info, recipe.name, stage))
        mark(stage, "validate")
        params = sum(p.numel() for p in ctx.dense.parameters())
        results, checks = validate(recipe, ctx.dense, ctx.sims, info, params, artifacts, ctx.evalset, stage,
                                   recipe.seed)
        report = RunReport(
            schema_version=SCHEMA_VERSION, edgevit_version=__version__, recipe=recipe.name, description=recipe.description, seed=recipe.seed,
            status=run_status(checks, artifacts),
            model={"source": info.source, "arch": info.arch, "num_classes": info.num_classes, "params": params,
                   "labels": info.labels, "preprocessing": info.preprocessing(), "card": info.card,
                   "random_weights": info.random_weights, "notes": info.notes},
            data={"calibration": ctx.calibration_summary or _calibration_listing(ctx),
                  "eval": ctx.evalset.summary if ctx.evalset else None},
            pruning=ctx.records.get("pruning"), tokens=ctx.records.get("tokens"),
            quantization=ctx.records.get("quantization"), fp16_layernorm=ctx.policies or None,
            results=results, checks=checks, speed_not_checked=speed_not_compared(results, checks),
            environment=environment(),
            elapsed_s=round(time.time() - started, 1)).to_dict()
        for c in checks:
            (log.info if c["ok"] else log.error)("%s %s: %s", "PASS" if c["ok"] else "FAIL", c["name"], c["detail"])
        write_reports(report, stage)
        mark(stage, "done", status="complete", artifacts=[a["file"] for a in artifacts])
    return RunResult(out_dir=out_dir, report=report)


def run_status(checks: list[dict], artifacts: list[dict]) -> str:
    """ok; over_budget (a deployed artifact lost more accuracy than the recipe's budget allows, every other
    check passed); failed_checks (another check failed); int8_not_faster (every check passed, but an INT8
    artifact was shipped as its FP32 model because no INT8 placement beat FP32 on its device)."""
    failed = [c for c in checks if not c["ok"]]
    if failed:
        return "over_budget" if all(c.get("kind") == "budget" for c in failed) else "failed_checks"
    if any((a.get("placement") or {}).get("shipped") == "fp32" for a in artifacts):
        return "int8_not_faster"
    return "ok"


def _calibration_listing(ctx: RunContext) -> dict | None:
    """data.calibration of a run that did not quantize: the folder and how many images it lists."""
    if ctx.recipe.calibration is None:
        return None
    return {"path": str(ctx.recipe.calibration.path), "images": len(ctx.calibration_set()), "used_by": []}


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


OOM_HINTS = {"load": "validate.eval.num (evaluation images are held in memory)",
             "prune": "prune.images", "quantize": "calibration.batch_size",
             "export": "the model size / export list", "validate": "validate.eval.batch_size or the devices' "
             "throughput_batch"}


@contextmanager
def _memory_errors(stage: Path) -> Iterator[None]:
    """Out of memory becomes one line saying in which step and which setting to lower (the step from
    run.json)."""
    try:
        yield
    except (MemoryError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and "allocate" not in str(e) and "out of memory" not in str(e).lower():
            raise
        try:
            step = json.loads((stage / STATUS_FILE).read_text())["step"]
        except (OSError, ValueError, KeyError):
            step = "load"
        raise RunFailure(f"out of memory during {step} ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:160] if str(e) else 'no detail'}); "
                         f"lower {OOM_HINTS.get(step, 'the batch sizes')}") from e
