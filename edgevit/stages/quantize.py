"""The quantize stage (calibrate, build the fake-quant model, write plan.json) and the accuracy-budget
stage that keeps the most sensitive layers in float."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from edgevit.errors import BadInput, RunFailure
from edgevit.progress import new_progress
from edgevit.quant import apply_plan, quantize
from edgevit.quant.diagnostics import layer_errors, site_histograms
from edgevit.quant.lowering import WEIGHT_BITS_IN_INT8
from edgevit.results import StageRecord
from edgevit.runtimes import for_format
from edgevit.validate import TorchRunner, collect_logits
from edgevit.validate.latency import int8_dot_saturates

log = logging.getLogger("edgevit")
SIM_NAME = "pytorch-int8-sim"


def sim_name(cfg) -> str:
    """The simulated model's row name: pytorch-int8-sim (also with 7-bit weights, which go into int8 files as they
    are: the name does not change with ``overflow_fix``), or pytorch-w4a4-sim below."""
    w, a = cfg.weights.bits, cfg.activations.bits
    return SIM_NAME if w in (WEIGHT_BITS_IN_INT8, 8) and a == 8 else f"pytorch-w{w}a{a}-sim"


def saturating_int8(e) -> bool:
    """Whether export entry ``e`` is an INT8 file whose runtime's x86 int8 kernels add pairs of uint8 x int8
    products in 16 bits (ONNX Runtime, OpenVINO; not a graph lowered for TensorRT)."""
    return e.precision == "int8" and for_format(e.format).int8_kernels_saturate and \
        getattr(e, "target", None) != "tensorrt"


def _overflow_cases(recipe) -> tuple[list[str], list[str]]:
    """The recipe's INT8 artifacts whose kernels saturate on 8-bit weights, and those that cannot hold 7-bit ones
    (a CoreML int8 package stores 8-bit codes)."""
    hit = [e.name or f"{e.format}-{e.precision}" for e in recipe.export if saturating_int8(e)]
    refused = [e.name or f"{e.format}-{e.precision}" for i, e in enumerate(recipe.export) if e.precision == "int8"
               and e.sub8bit_problem("quantize.weights.bits", WEIGHT_BITS_IN_INT8, i)]
    return hit, refused


def overflow_fix(recipe) -> str | None:
    """Why the recipe's 8-bit weights are quantized with 7 bits in this run (None: they are not); see
    ``quantize.weights.overflow_fix``."""
    w = recipe.quantize.weights
    if w.bits != 8 or w.overflow_fix == "off":
        return None
    if w.overflow_fix == "on":
        return f"weights in {WEIGHT_BITS_IN_INT8} bits (quantize.weights.overflow_fix: on)"
    hit, refused = _overflow_cases(recipe)
    if not hit or refused or not int8_dot_saturates():
        return None
    return (f"weights in {WEIGHT_BITS_IN_INT8} bits (quantize.weights.overflow_fix: auto): this CPU has no VNNI, so "
            f"the int8 kernels that run {', '.join(hit)} here add pairs of uint8 x int8 products in 16 bits, which "
            "saturates with 8-bit weights; set overflow_fix: off to keep 8 bits for a CPU with VNNI")


def overflow_fix_per_artifact(recipe) -> str | None:
    """Why only some INT8 artifacts take their weights on the 7-bit grid (``seven_bit_weights`` of the 8-bit
    plan, each with its own simulation): with ``overflow_fix: auto`` where the kernels that run them saturate
    here and another INT8 artifact of the recipe needs 8-bit codes. None: not so in this run."""
    w = recipe.quantize.weights
    if w.bits != 8 or w.overflow_fix != "auto":
        return None
    hit, refused = _overflow_cases(recipe)
    if not (hit and refused and int8_dot_saturates()):
        return None
    return (f"weights of {', '.join(hit)} on the {WEIGHT_BITS_IN_INT8}-bit grid over the 8-bit ranges (quantize."
            "weights.overflow_fix: auto): this CPU has no VNNI, so the int8 kernels that run them here add pairs "
            f"of uint8 x int8 products in 16 bits, which saturates with 8-bit weights; {', '.join(refused)} keep "
            "8-bit weights (a CoreML int8 package stores 8-bit codes); set overflow_fix: off to keep 8 bits "
            "everywhere for a CPU with VNNI")


def write_plan(plan, stage: Path) -> None:
    """plan.json (every quantizer) and quant_params.json (the accelerator sidecar) in the run folder."""
    (stage / "plan.json").write_text(json.dumps(plan.to_dict(full=True), indent=1) + "\n")
    (stage / "quant_params.json").write_text(json.dumps(plan.quant_params(), indent=1) + "\n")


class QuantizeStage:
    """Calibrate on the recipe's images (streamed) and build the fake-quant model of the current model."""

    section, step = "quantization", "quantize"

    def enabled(self, recipe) -> bool:
        return recipe.quantize is not None

    def apply(self, ctx) -> StageRecord:
        fix, per_file = overflow_fix(ctx.recipe), overflow_fix_per_artifact(ctx.recipe)  # per_file: at export
        if fix or per_file:
            log.warning("quantize: %s", fix or per_file)
        if fix:  # every later stage and export reads the recipe: they all see the 7-bit weights
            q = ctx.recipe.quantize
            ctx.recipe = ctx.recipe.model_copy(update={"quantize": q.model_copy(update={
                "weights": q.weights.model_copy(update={"bits": WEIGHT_BITS_IN_INT8})})})
        cfg, qcfg = ctx.recipe.calibration, ctx.recipe.quantize
        images = ctx.calibration_set()
        with new_progress() as progress:
            task = progress.add_task("calibrate", total=len(images))
            batches = (torch.from_numpy(x) for x, _ in images.batches(ctx.pre, cfg.batch_size))
            t0 = time.time()
            try:
                blocks = progress.add_task("reconstruct blocks", total=None, visible=qcfg.reconstruct is not None)
                qmodel, plan = quantize(ctx.model, qcfg, batches, lambda n: progress.advance(task, n),
                                        lambda name, rec: progress.advance(blocks))
            except ValueError as e:
                raise BadInput(f"calibration {cfg.path}: {e} ({len(images.skipped)} unreadable image(s))") from e
            if images.skipped:  # the bar counts calibrated images: it ends full, at the readable ones
                progress.update(task, total=len(images) - len(images.skipped))
        seconds = round(time.time() - t0, 1)
        if not plan.activations and not plan.weights:
            raise RunFailure("quantize: found nothing to quantize in this model (no Linear/Conv2d layers)")
        write_plan(plan, ctx.stage)
        log.info("quantized: %s", plan.counts())
        x = ctx.calibration_images(32)
        diagnostics = {"images": int(len(x)), "layer_error": layer_errors(ctx.model, qmodel, x),
                       "histograms": site_histograms(ctx.model, qmodel, x)}
        ctx.plan, ctx.sim_base = plan, sim_name(qcfg)
        ctx.sims[ctx.sim_base] = qmodel
        ctx.calibration_summary = {"path": str(cfg.path), "images": len(images) - len(images.skipped),
                                   "skipped": len(images.skipped), "used_by": ["quantize"]}
        return StageRecord.model_validate({"plan": plan.to_dict() | {"counts": plan.counts()}, "seconds": seconds,
                                           "diagnostics": diagnostics, "overflow_fix": fix or per_file})


class FallbackStage:
    """Keep the most sensitive layers in float until the top-1 drop on the evaluation images is within
    ``quantize.max_accuracy_drop``; plan.json is rewritten with the result."""

    section, step = "quantization", "quantize"

    def enabled(self, recipe) -> bool:
        return recipe.quantize is not None and recipe.quantize.max_accuracy_drop is not None

    def apply(self, ctx) -> StageRecord:
        from edgevit.quant.fallback import fit_budget

        budget = ctx.recipe.quantize.max_accuracy_drop
        ev = ctx.evalset  # the recipe validator made sure there is an evaluation set
        labels = ev.labels
        if labels is None:  # unlabeled images: agreement with the float model's top-1 stands in for accuracy
            with torch.no_grad():
                labels = collect_logits(TorchRunner(ctx.model), ev.x, ev.batch_size).argmax(1)
        x_search = ctx.calibration_images(ctx.recipe.quantize.search_images)
        full_plan = ctx.plan
        t0 = time.time()
        with new_progress() as progress:
            task = progress.add_task("accuracy budget", total=None)
            plan, facts = fit_budget(ctx.model, full_plan, ev.x, labels, x_search, budget,
                                     lambda: progress.advance(task))
        write_plan(plan, ctx.stage)
        facts["labels"] = "eval labels" if ev.labels is not None else "float model's top-1"
        facts["seconds"] = round(time.time() - t0, 1)
        log.info("accuracy budget %.2f pts: %d layer(s) kept in float, top-1 %.2f -> %.2f (float %.2f)", budget,
                 len(plan.float_layers), facts["quantized_top1"], facts["final_top1"], facts["fp32_top1"])
        ctx.plan = plan
        if plan.float_layers:  # the all-quantized model is exported too, so the report shows what this costs
            ctx.full_plan = full_plan
            ctx.sims[ctx.sim_base] = apply_plan(ctx.model, plan)
        record = ctx.records[self.section]
        record.fallback = facts
        return record
