"""The one path every run takes: recipe -> model -> stages -> artifacts -> validation -> report."""
from __future__ import annotations

import copy
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
from edgevit.data import Preprocess, open_image_set
from edgevit.errors import BadInput, RunFailure
from edgevit.exporters.fp16 import layernorm_policy
from edgevit.exporters.onnx import export_onnx
from edgevit.exporters.sparsity import weight_sparsity
from edgevit.models import load_model
from edgevit.progress import new_progress
from edgevit.prune import prune
from edgevit.quant import apply_plan, quantize
from edgevit.quant.lowering import has_nonuniform, lower_plan
from edgevit.quant.sites import act_sites
from edgevit.recipe import ExportConfig, Recipe, recipe_to_yaml
from edgevit.report import write_reports
from edgevit.report.diagnostics import layer_errors, site_histograms
from edgevit.runfolder import STATUS_FILE, mark, staged_run_folder
from edgevit.tokens import apply_tokens, summarize
from edgevit.validate import OrtRunner, TorchRunner, accuracy_metrics, collect_logits, map_labels
from edgevit.validate.latency import measure_interleaved, timed_iterations

log = logging.getLogger("edgevit")
SIM_NAME = "pytorch-int8-sim"
PRUNED_NAME = "pytorch-pruned"
TOKENS_NAME = "pytorch-tokens"
REFERENCE_NAME, REFERENCE_FILE = "onnx-fp32-original", "reference/original-fp32.onnx"
FLOAT_STAGES = (PRUNED_NAME, TOKENS_NAME)  # float models made by a stage: timed like the dense one


def _sim_name(cfg) -> str:
    """The simulated model's row name: pytorch-int8-sim, or pytorch-w4a4-sim below 8 bits."""
    w, a = cfg.weights.bits, cfg.activations.bits
    return SIM_NAME if w == a == 8 else f"pytorch-w{w}a{a}-sim"


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


SUFFIX = {"onnx": ".onnx", "coreml": ".mlpackage", "tensorrt": ".engine"}


def _artifact_files(exports) -> list[str]:
    names = [f"{cfg.name or f'{cfg.format}-{cfg.precision}'}{SUFFIX[cfg.format]}" for cfg in exports]
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


def _prune_stage(model, recipe: Recipe, pre: Preprocess) -> tuple[object, dict]:
    """Prune a copy of the model on the first calibration images; the dense model stays the reference."""
    cfg = recipe.calibration
    images = open_image_set(cfg.path, min(recipe.prune.images, cfg.num or 10**9), cfg.seed)
    x, _ = images.load(pre)
    pruned = copy.deepcopy(model)
    t0 = time.time()
    with new_progress() as progress:
        task = progress.add_task(f"prune ({recipe.prune.method})", total=None)
        try:
            facts = prune(pruned, recipe.prune, torch.from_numpy(x), lambda name: progress.advance(task))
        except ValueError as e:
            raise BadInput(f"prune: {e}") from e
    facts["seconds"] = round(time.time() - t0, 1)
    s = facts["summary"]
    log.info("pruned (%s): %d -> %d parameters, %.1f %% of Linear/Conv weights zero", recipe.prune.method,
             facts["params_before"], s["params"], 100 * s["weight_sparsity"])
    return pruned, facts


def _token_stage(model, recipe: Recipe, info) -> tuple[object, dict]:
    """Token merging/pruning on a copy of the model; the unreduced model stays the reference."""
    reduced = copy.deepcopy(model)
    try:
        records = apply_tokens(reduced, recipe.tokens)
    except ValueError as e:
        raise BadInput(f"tokens: {e}") from e
    x = torch.zeros(1, 3, info.input_size, info.input_size)
    facts = {"method": recipe.tokens.method, "stages": records} | summarize(model, reduced, x)
    log.info("tokens (%s): %s; FLOPs %.1f M -> %.1f M (%.2fx)", recipe.tokens.method,
             "; ".join(f"{k}: {' -> '.join(map(str, v))}" for k, v in facts["tokens_per_block"].items()),
             facts["flops"] / 1e6, facts["flops_reduced"] / 1e6, facts["flops"] / max(facts["flops_reduced"], 1))
    if "warning" in facts:
        log.warning("tokens: %s", facts["warning"])
    return reduced, facts


def _quantize_stage(model, recipe: Recipe, pre: Preprocess, stage: Path) -> tuple[object, object, dict]:
    """Calibrate on the recipe's images and build the fake-quant model; plan.json goes in the run."""
    cfg = recipe.calibration
    images = open_image_set(cfg.path, cfg.num, cfg.seed)
    with new_progress() as progress:
        task = progress.add_task("calibrate", total=len(images))
        batches = (torch.from_numpy(x) for x, _ in images.batches(pre, cfg.batch_size))
        t0 = time.time()
        try:
            blocks = progress.add_task("reconstruct blocks", total=None, visible=recipe.quantize.reconstruct is not None)
            qmodel, plan = quantize(model, recipe.quantize, batches, lambda n: progress.advance(task, n),
                                    lambda name, rec: progress.advance(blocks))
        except ValueError as e:
            raise BadInput(f"calibration {cfg.path}: {e} ({len(images.skipped)} unreadable image(s))") from e
    seconds = round(time.time() - t0, 1)
    if not plan.activations and not plan.weights:
        raise RunFailure("quantize: found nothing to quantize in this model (no Linear/Conv2d layers)")
    _write_plan(plan, stage)
    log.info("quantized: %s", plan.counts())
    x = _calibration_images(recipe, pre, 32)
    diagnostics = {"images": int(len(x)), "layer_error": layer_errors(model, qmodel, x),
                   "histograms": site_histograms(model, qmodel, x)}
    summary = {"path": str(cfg.path), "images": len(images) - len(images.skipped), "skipped": len(images.skipped),
               "used_by": ["quantize"]}
    return qmodel, plan, {"calibration": summary, "plan": plan.to_dict() | {"counts": plan.counts()},
                          "seconds": seconds, "diagnostics": diagnostics}


def _calibration_images(recipe: Recipe, pre: Preprocess, n: int) -> torch.Tensor:
    """The first ``n`` calibration images (no more than calibration.num), preprocessed."""
    cfg = recipe.calibration
    return torch.from_numpy(open_image_set(cfg.path, min(n, cfg.num or n), cfg.seed).load(pre)[0])


def _write_plan(plan, stage: Path) -> None:
    """plan.json (every quantizer) and quant_params.json (the accelerator sidecar) in the run folder."""
    (stage / "plan.json").write_text(json.dumps(plan.to_dict(full=True), indent=1) + "\n")
    (stage / "quant_params.json").write_text(json.dumps(plan.quant_params(), indent=1) + "\n")


def _fallback_stage(model, plan, recipe: Recipe, pre: Preprocess, evalset: dict | None, stage: Path):
    """Keep the most sensitive layers in float until the top-1 drop on the evaluation images is within
    ``quantize.max_accuracy_drop``; plan.json is rewritten with the result."""
    from edgevit.quant.fallback import fit_budget

    budget = recipe.quantize.max_accuracy_drop
    x = evalset["x"]  # the recipe validator made sure there is an evaluation set
    labels = evalset["labels"]
    if labels is None:  # unlabeled images: agreement with the float model's top-1 stands in for accuracy
        with torch.no_grad():
            labels = collect_logits(TorchRunner(model), x, evalset["batch_size"]).argmax(1)
    x_search = _calibration_images(recipe, pre, recipe.quantize.search_images)
    t0 = time.time()
    with new_progress() as progress:
        task = progress.add_task("accuracy budget", total=None)
        plan, facts = fit_budget(model, plan, x, labels, x_search, budget,
                                 lambda: progress.advance(task))
    _write_plan(plan, stage)
    facts["labels"] = "eval labels" if evalset["labels"] is not None else "float model's top-1"
    facts["seconds"] = round(time.time() - t0, 1)
    log.info("accuracy budget %.2f pts: %d layer(s) kept in float, top-1 %.2f -> %.2f (float %.2f)", budget,
             len(plan.float_layers), facts["quantized_top1"], facts["final_top1"], facts["fp32_top1"])
    return plan, facts


def _calibration_summary(recipe: Recipe) -> dict | None:
    cfg = recipe.calibration
    if cfg is None:
        return None
    images = open_image_set(cfg.path, cfg.num, cfg.seed)
    return {"path": str(cfg.path), "images": len(images), "used_by": []}


def run(recipe: Recipe, out_dir: Path, overwrite: bool = False) -> RunResult:
    """Run a validated recipe into ``out_dir`` (created only when the run completes)."""
    seed_everything(recipe.seed)
    started = time.time()
    names = _artifact_files(recipe.export)
    with staged_run_folder(out_dir, overwrite) as stage, _run_log(stage / "run.log"), _memory_errors(stage):
        (stage / "recipe.lock.yaml").write_text(recipe_to_yaml(recipe))
        mark(stage, "load", recipe=recipe.name)
        model, info = load_model(recipe.model)
        log.info("model %s: %s, %d classes, input %d px", info.source, info.arch, info.num_classes, info.input_size)
        pre = Preprocess(info.input_size, info.mean, info.std, info.crop_pct, info.interpolation)
        evalset = _load_eval(recipe, pre, info)
        params = sum(p.numel() for p in model.parameters())
        dense, pruning, tokens, quant, sims = model, None, None, None, {}
        float_sim = None  # the last float stage's model: what FP32/FP16 artifacts are compared with
        if recipe.prune is not None:
            mark(stage, "prune")
            model, pruning = _prune_stage(model, recipe, pre)
            sims[PRUNED_NAME], float_sim = model, PRUNED_NAME
        if recipe.tokens is not None:
            mark(stage, "tokens")
            model, tokens = _token_stage(model, recipe, info)
            sims[TOKENS_NAME], float_sim = model, TOKENS_NAME
        jobs = [(cfg, name, None, "") for cfg, name in zip(recipe.export, names)]
        if recipe.quantize is not None:
            mark(stage, "quantize")
            qmodel, plan, quant = _quantize_stage(model, recipe, pre, stage)
            sim_base = _sim_name(recipe.quantize)
            if recipe.quantize.max_accuracy_drop is not None:
                full_plan = plan
                plan, quant["fallback"] = _fallback_stage(model, plan, recipe, pre, evalset, stage)
                if plan.float_layers:  # the all-quantized model too, so the report shows what the fallback costs
                    qmodel = apply_plan(model, plan)
                    first = next(((c, n) for c, n in zip(recipe.export, names) if c.precision == "int8"), None)
                    if first:
                        jobs.append((first[0], first[1].replace(".onnx", "-before-fallback.onnx"), full_plan,
                                     "-before-fallback"))
            sims[sim_base] = qmodel
            calib = quant.pop("calibration")
        else:
            calib = _calibration_summary(recipe)
        artifacts, ln_policies = [], {}
        with new_progress() as progress:
            task = progress.add_task("export", total=len(jobs))
            mark(stage, "export")
            for cfg, name, job_plan, suffix in jobs:
                keep_ln = False
                if _runs_fp16(cfg):
                    if cfg.fp16_layernorm not in ln_policies:
                        ln_policies[cfg.fp16_layernorm] = _layernorm_policy(model, recipe, pre, evalset,
                                                                            cfg.fp16_layernorm)
                    keep_ln = ln_policies[cfg.fp16_layernorm]["keep_fp32"]
                source, sim_name = model, float_sim
                if cfg.precision == "int8":
                    job_plan = job_plan or plan
                    target = "coreml" if cfg.format == "coreml" else cfg.target
                    try:
                        lowered = lower_plan(job_plan, target, cfg.lowering)
                    except ValueError as e:
                        raise BadInput(f"export {cfg.name or name}: {e}") from e
                    sim_name = "-".join([sim_base] + [target] * (target != "onnxruntime")
                                        + [cfg.lowering] * (has_nonuniform(plan) and cfg.lowering != "exact")) + suffix
                    if sim_name not in sims:
                        sims[sim_name] = apply_plan(model, lowered)
                    source = sims[sim_name]
                if cfg.format == "coreml":
                    artifacts.append(_coreml_artifact(source, info, cfg, stage / name, recipe.name, sim_name,
                                                      len(pruning["layers"]) if pruning and recipe.prune.nm else None,
                                                      keep_ln))
                    progress.advance(task)
                    continue
                onnx_name = name if cfg.format == "onnx" else name.removesuffix(".engine") + ".onnx"
                # TensorRT builds FP16 engines from the FP32 graph (its own FP16 conversion, LayerNorms pinned)
                onnx_cfg = cfg.model_copy(update={"precision": "fp32"}) if cfg.format == "tensorrt" and \
                    cfg.precision == "fp16" else cfg
                facts = export_onnx(source, info, onnx_cfg, stage / onnx_name, recipe.name, keep_ln)
                if cfg.target == "tensorrt" or cfg.format == "tensorrt":
                    from edgevit.exporters.tensorrt import trtexec_command

                    engine_precision = "fp16" if cfg.format == "onnx" and cfg.precision == "fp32" else cfg.precision
                    facts["trtexec"] = trtexec_command(onnx_name, engine_precision, cfg.sparse or bool(
                        pruning and recipe.prune.nm), info.input_size,
                        fp32_layers=facts["layernorm_nodes"] if keep_ln else ())
                if cfg.format == "tensorrt":  # the engine is built from the ONNX just written
                    facts["engine"] = _tensorrt_engine(stage / onnx_name, stage / name, cfg, keep_ln)
                if pruning:
                    nm = recipe.prune.nm
                    facts["sparsity"] = weight_sparsity(stage / onnx_name, *((nm.n, nm.m) if nm else (2, 4)))
                    if nm:
                        facts["sparsity"]["expected_nm_layers"] = len(pruning["layers"])
                artifacts.append({"name": (cfg.name or name.removesuffix(".onnx")) + suffix if suffix else
                                  cfg.name or name, "file": name, "format": cfg.format,
                                  "precision": cfg.precision,
                                  "runtime": "tensorrt" if cfg.format == "tensorrt" else "onnxruntime",
                                  "size_bytes": (stage / name).stat().st_size, "export": facts,
                                  "simulated_by": sim_name})
                log.info("exported %s (%.2f MB, %s)", name, artifacts[-1]["size_bytes"] / 1e6, facts["simplifier"])
                progress.advance(task)
        if (pruning or tokens) and any(a["runtime"] == "onnxruntime" for a in artifacts):
            artifacts.append(_original_reference(dense, info, recipe.name, stage))
        mark(stage, "validate")
        results, checks = _validate(recipe, dense, sims, info, params, artifacts, evalset, stage)
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
            "pruning": pruning,
            "tokens": tokens,
            "quantization": quant,
            "fp16_layernorm": ln_policies or None,
            "results": results,
            "checks": checks,
            "environment": environment(),
            "elapsed_s": round(time.time() - started, 1),
        }
        for c in checks:
            (log.info if c["ok"] else log.error)("%s %s: %s", "PASS" if c["ok"] else "FAIL", c["name"], c["detail"])
        write_reports(report, stage)
        mark(stage, "done", status="complete", artifacts=[a["file"] for a in artifacts])
    return RunResult(out_dir=out_dir, report=report)


def _runs_fp16(cfg) -> bool:
    """Whether an export computes in FP16 somewhere (and so must decide about its LayerNorms)."""
    if cfg.format == "onnx":
        return cfg.precision == "fp16" or cfg.target == "tensorrt"  # TensorRT builds INT8 engines with FP16 on
    return cfg.precision != "fp32"


def _layernorm_policy(model, recipe: Recipe, pre: Preprocess, evalset: dict | None, mode: str) -> dict:
    """Measure the LayerNorm ranges on up to 64 calibration (else eval) images; see export.fp16."""
    images = None
    if mode == "auto" and recipe.calibration is not None:
        images = _calibration_images(recipe, pre, 64)
    elif mode == "auto" and evalset is not None:
        images = torch.from_numpy(evalset["x"][:64])
    policy = layernorm_policy(model, images, mode)
    log.info("FP16 LayerNorm: %s (%s)", "kept in FP32" if policy["keep_fp32"] else "FP16", policy["reason"])
    return policy


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
        raise RunFailure(f"out of memory during {step} ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else 'no detail'}); "
                         f"lower {OOM_HINTS.get(step, 'the batch sizes')}") from e


def _tensorrt_engine(onnx_path: Path, engine_path: Path, cfg, layernorm_fp32: bool = False) -> dict:
    """Build the engine on this machine's GPU (FP16 for fp16/fp32 exports, INT8 from the QDQ graph)."""
    from edgevit.exporters.tensorrt import build_engine, unavailable

    why = unavailable()
    if why:
        raise BadInput(f"export {cfg.name or engine_path.name}: {why}; export the ONNX (target: tensorrt) and "
                       "build the engine on the device with the trtexec line in its report")
    facts = build_engine(onnx_path, engine_path, "int8" if cfg.precision == "int8" else cfg.precision, cfg.sparse,
                         layernorm_fp32=layernorm_fp32)
    if facts["layers"]["fell_back"]:
        log.warning("TensorRT: %d math layer(s) did not run in %s: %s", len(facts["layers"]["fell_back"]),
                    cfg.precision, ", ".join(facts["layers"]["fell_back"][:5]))
    sp = facts["sparsity"]
    if sp is not None:
        log.info("TensorRT sparse kernels: %d layer(s) eligible, %d picked", len(sp["eligible"]), len(sp["picked"]))
    return facts


def _coreml_artifact(model, info, cfg, path: Path, recipe_name: str, sim_name: str | None,
                     nm_layers: int | None, layernorm_fp32: bool = False) -> dict:
    """Convert to an .mlpackage; prediction needs macOS, so the row says what was checked here."""
    from edgevit.exporters.coreml import export_coreml, unavailable

    why = unavailable(cfg.compression)
    if why:
        raise BadInput(f"export {cfg.name or path.name}: {why}")
    facts = export_coreml(model, info, path, cfg.compression, cfg.precision, cfg.deployment_target, recipe_name,
                          layernorm_fp32)
    facts["expected"] = {"input_size": info.input_size, "labels": list(info.labels),
                         "sparse_layers": nm_layers if cfg.compression == "sparse" else None,
                         "activation_sites": len(act_sites(model, quantized=True)) if cfg.precision == "int8"
                         else None}
    log.info("exported %s (%.2f MB, compressed weight ops: %s)", path.name, facts["size_bytes"] / 1e6,
             facts["compressed_ops"] or "none")
    return {"name": cfg.name or path.name.removesuffix(".mlpackage"), "file": path.name, "format": "coreml",
            "precision": cfg.precision, "runtime": "coreml", "size_bytes": facts["size_bytes"], "export": facts,
            "simulated_by": sim_name,
            "not_measured": "accuracy and latency: CoreML prediction needs macOS (no Mac device profile here)"}


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


def _validate(recipe: Recipe, model, sims: dict, info, params: int, artifacts: list[dict], evalset: dict | None,
              stage: Path) -> tuple[list[dict], list[dict]]:
    """Accuracy of every artifact on its runtime against the FP32 PyTorch model, parity, latency.

    INT8 artifacts are compared with the fake-quant PyTorch model they were lowered from
    (simulated vs deployed); FP32/FP16 ones with the float model.
    """
    val = recipe.validation
    devices = [d for d in val.devices if d.kind == "local"]
    threads = devices[0].threads if devices else 2
    providers = devices[0].providers if devices else None
    sample = evalset["x"][:max(1, min(len(evalset["x"]), 64))] if evalset else \
        np.random.default_rng(recipe.seed).standard_normal((8, 3, info.input_size, info.input_size)).astype(np.float32)
    rows = [{"name": "pytorch-fp32", "file": None, "format": "pytorch", "precision": "fp32",
             "runtime": "torch", "size_bytes": params * 4, "export": None}]
    runners = [TorchRunner(model, threads)]
    for sim_name, sim_model in sims.items():
        is_float = sim_name in FLOAT_STAGES  # pruned or token-reduced float model: timed like the dense one
        rows.append({"name": sim_name, "file": None, "format": "pytorch", "precision": "fp32" if is_float else "int8-sim",
                     "runtime": "torch", "export": None,
                     "size_bytes": sum(p.numel() for p in sim_model.parameters()) * 4 if is_float else None})
        runners.append(TorchRunner(sim_model, threads))
    for a in artifacts:
        rows.append(a)
        runners.append(_runner(a, stage, threads, providers))
    timed = [(r, run) for r, run in zip(rows, runners) if r["precision"] != "int8-sim" and run is not None]
    n_eval = len(evalset["x"]) if evalset else 0
    logits: dict[str, np.ndarray] = {}
    with new_progress() as progress:
        t_eval = progress.add_task("evaluate", total=n_eval * sum(r is not None for r in runners))
        t_lat = progress.add_task("benchmark", total=sum(timed_iterations(d) for d in devices) * len(timed))
        for row, runner in zip(rows, runners):
            row["accuracy"] = None
            if runner is None:  # validated at export (CoreML spec); nothing runs here
                row["parity"], row["latency"] = None, []
                continue
            if evalset:
                logits[row["name"]] = collect_logits(runner, evalset["x"], evalset["batch_size"],
                                                     lambda n: progress.advance(t_eval, n))
                row["accuracy"] = accuracy_metrics(logits[row["name"]], evalset["labels"], logits["pytorch-fp32"])
            origin = sims[row["simulated_by"]] if row.get("simulated_by") else model
            row["parity"] = None if row["runtime"] == "torch" else \
                _parity(runner, origin, sample[:val.parity_images], val.parity_tolerance,
                        row["precision"], row.get("simulated_by") or "pytorch-fp32")
            row["latency"] = []
        for d in devices:  # all artifacts interleaved: the FP32 baseline shares the load of each one
            measured = measure_interleaved({r["name"]: run for r, run in timed}, sample, d,
                                           lambda: progress.advance(t_lat))
            for r, _ in timed:
                r["latency"].append(measured[r["name"]])
    ref_top1 = rows[0]["accuracy"]["top1"] if rows[0]["accuracy"] else None
    for row in rows:
        acc = row["accuracy"]
        if acc is not None:
            acc["delta_top1"] = (acc["top1"] - ref_top1) if (acc["top1"] is not None and ref_top1 is not None) else None
    checks = _checks(rows, logits, val, n_eval)
    for device in (d for d in val.devices if d.kind == "ssh"):
        checks += _remote_device(device, rows, logits, evalset, sample, info, stage)
    return rows, checks


def _remote_device(device, rows: list[dict], logits: dict, evalset: dict | None, sample: np.ndarray, info,
                   stage: Path) -> list[dict]:
    """Every artifact the device's runtime runs, measured on the device in one session (interleaved);
    adds a latency entry (with top-1 on the device's copy of the eval sample) to each row; checks that
    ONNX Runtime on the device predicts what it predicted here."""
    from edgevit.devices.remote import measure_remote, runs_on

    todo = [r for r in rows if runs_on(device, r)]
    if not todo:
        log.warning("device %s: no artifact of this run runs on %s", device.name, device.runtime)
        return []
    n = min(device.eval_images, len(evalset["x"])) if evalset else 0
    x = evalset["x"][:n] if n else sample
    y = evalset["labels"][:n] if n and evalset["labels"] is not None else None
    log.info("device %s: measuring %d artifact(s) over SSH (%s)", device.name, len(todo), device.ssh.host)
    with new_progress() as progress:
        progress.add_task(f"device {device.name} ({len(todo)} artifacts)", total=None)
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
        if r.get("not_measured"):  # a CoreML package: not run here, but on this device
            r["not_measured"] = f"here (needs macOS); measured on device {device.name}, see its section"
        if device.runtime == "onnxruntime" and agree is not None:
            checks.append({"name": f"{r['name']}: same predictions on device {device.name}", "ok": agree >= 0.99,
                           "detail": f"top-1 agreement with {origin} here {100 * agree:.1f} % on {len(preds)} images "
                                     "(needs >= 99 %)"})
    return checks


def _original_reference(model, info, recipe_name: str, stage: Path) -> dict:
    """The model before pruning/token reduction as FP32 ONNX, timed interleaved with the artifacts so that
    the report's speed column says what the stages bought on the runtime (kept under ``reference/``:
    a yardstick, not a deliverable)."""
    path = stage / REFERENCE_FILE
    path.parent.mkdir(exist_ok=True)
    facts = export_onnx(model, info, ExportConfig(precision="fp32"), path, recipe_name)
    log.info("exported %s, the original model as the speed reference", REFERENCE_FILE)
    return {"name": REFERENCE_NAME, "file": REFERENCE_FILE, "format": "onnx", "precision": "fp32",
            "runtime": "onnxruntime", "size_bytes": path.stat().st_size, "export": facts, "simulated_by": None,
            "reference": True}


def _runner(artifact: dict, stage: Path, threads: int, providers):
    """What runs an artifact here: ONNX Runtime, a TensorRT engine on the GPU, or nothing (CoreML)."""
    if artifact["runtime"] == "onnxruntime":
        return OrtRunner(stage / artifact["file"], threads, providers)
    if artifact["runtime"] == "tensorrt":
        from edgevit.exporters.tensorrt import EngineRunner

        return EngineRunner(stage / artifact["file"])
    return None


def _checks(rows: list[dict], logits: dict, val, n_eval: int) -> list[dict]:
    """Pass/fail statements: FP32 ONNX equals PyTorch; deployed INT8 agrees with its simulation."""
    checks = []
    for r in rows:
        if r["runtime"] == "coreml":
            checks += _coreml_checks(r)
        par = r.get("parity")
        if r["runtime"] not in ("onnxruntime", "tensorrt") or par is None:
            continue
        if r["precision"] == "fp32":
            checks.append({"name": f"{r['name']}: FP32 ONNX matches PyTorch", "ok": par["ok"],
                           "detail": f"max abs logit diff {par['max_abs_diff']:.2e} (tolerance {val.parity_tolerance:g}) "
                                     f"on {par['images']} images"})
            top1 = (r["accuracy"] or {}).get("top1")
            origin = next((o for o in rows if o["name"] == r.get("simulated_by")), rows[0])
            ref = (origin["accuracy"] or {}).get("top1")
            if top1 is not None and ref is not None:
                checks.append({"name": f"{r['name']}: top-1 in ORT equals PyTorch",
                               "ok": abs(top1 - ref) <= 1.0 / max(1, n_eval) + 1e-12,
                               "detail": f"ORT {top1:.4f} vs PyTorch ({origin['name']}) {ref:.4f} on {n_eval} images"})
        sim = r.get("simulated_by")
        origin = sim or rows[0]["name"]
        if r["precision"] == "fp16" and origin in logits and r["name"] in logits:
            agree = float((logits[r["name"]].argmax(1) == logits[origin].argmax(1)).mean())
            r["accuracy"]["agreement_with_fp32"] = agree
            checks.append({"name": f"{r['name']}: FP16 predictions agree with FP32 PyTorch", "ok": agree >= 0.99,
                           "detail": f"top-1 agreement with {origin} {100 * agree:.1f} % on {n_eval} images "
                                     f"(needs >= 99 %); max abs logit diff {par['max_abs_diff']:.2e}"})
        if r["precision"] == "int8" and sim in logits and r["name"] in logits:
            agree = float((logits[r["name"]].argmax(1) == logits[sim].argmax(1)).mean())
            r["accuracy"]["agreement_with_simulation"] = agree
            checks.append({"name": f"{r['name']}: deployed model agrees with the simulation", "ok": agree >= 0.99,
                           "detail": f"top-1 agreement ORT vs {sim} {100 * agree:.1f} % on {n_eval} "
                                     "images (needs >= 99 %)"})
        sp = (r["export"] or {}).get("sparsity") or {}
        if "expected_nm_layers" in sp:
            checks.append({"name": f"{r['name']}: {sp['pattern']} sparsity intact in the exported weights",
                           "ok": sp["nm_layers"] >= sp["expected_nm_layers"],
                           "detail": f"{sp['nm_layers']} weight tensors in the file follow {sp['pattern']} "
                                     f"(pruned: {sp['expected_nm_layers']}); {100 * sp['weight_sparsity']:.1f} % "
                                     "of all weights zero"})
        if r["precision"] == "int8" and r["export"]["target"] == "tensorrt":
            problems = r["export"]["tensorrt_problems"]
            checks.append({"name": f"{r['name']}: QDQ graph follows TensorRT's explicit-quantization rules",
                           "ok": not problems,
                           "detail": "signed int8, zero point 0, int8 weights in -127..127, per-tensor activations"
                                     if not problems else f"{len(problems)} problem(s), first: {problems[0]}"})
    return checks


COMPRESSION_OPS = {"w8": ("constexpr_affine_dequantize", "constexpr_blockwise_shift_scale"),
                   "palettize4": ("constexpr_lut_to_dense",), "palettize6": ("constexpr_lut_to_dense",),
                   "sparse": ("constexpr_sparse_to_dense", "constexpr_sparse_blockwise_shift_scale")}


def _coreml_checks(r: dict) -> list[dict]:
    """What a saved .mlpackage shows without macOS: a ready classifier, and weights stored compressed."""
    e = r["export"]
    want = e["expected"]
    meta = e["metadata"]
    ok = (e["input"]["type"] == "imageType" and e["input"]["width"] == e["input"]["height"] == want["input_size"]
          and e["predicted_label"] in e["outputs"] and e["labels"] == want["labels"]
          and all(k in meta for k in ("mean", "std", "labels", "input_size")))
    checks = [{"name": f"{r['name']}: CoreML package is an image classifier Xcode can use", "ok": ok,
               "detail": f"input {e['input']['name']} {e['input']['type']} {e['input']['width']}x"
                         f"{e['input']['height']}, outputs {', '.join(e['outputs'])}, {len(e['labels'])} labels, "
                         "preprocessing in the metadata"}]
    if want.get("activation_sites"):
        n, need = e["activation_quantize_ops"], want["activation_sites"]
        checks.append({"name": f"{r['name']}: activations quantized (W8A8)", "ok": n >= need,
                       "detail": f"{n} quantize ops in the program for {need} quantized activation sites"})
    kinds = COMPRESSION_OPS.get(e["compression"])
    if kinds:
        found = sum(e["compressed_ops"].get(k, 0) for k in kinds)
        need = want["sparse_layers"] or 1
        checks.append({"name": f"{r['name']}: weights stored {e['compression']}", "ok": found >= need,
                       "detail": f"{found} {'/'.join(kinds)} ops in the program (needs >= {need}); "
                                 f"package {e['size_bytes'] / 1e6:.2f} MB"})
    return checks


def _parity(runner, origin, x: np.ndarray, tol: float, precision: str, against: str) -> dict:
    """Max abs logit difference of an artifact vs the PyTorch model it came from, on real images."""
    diff = float(np.abs(runner(x) - TorchRunner(origin)(x)).max())
    return {"images": int(len(x)), "max_abs_diff": diff, "tolerance": tol, "against": against,
            "ok": diff <= tol if precision == "fp32" else None}
