"""The export stage: every ``export:`` entry written by its runtime, INT8 ones from the plan lowered for
that runtime's kernels; each artifact comes back as its result row."""
from __future__ import annotations

import logging

from edgevit.errors import BadInput
from edgevit.progress import new_progress
from edgevit.quant import apply_plan
from edgevit.quant.lowering import has_nonuniform, lower_plan, seven_bit_weights
from edgevit.runfolder import mark
from edgevit.runtimes import for_format
from edgevit.stages.context import RunContext
from edgevit.stages.jobs import ExportJob
from edgevit.stages.placement import place, write_placements
from edgevit.stages.quantize import overflow_fix_per_artifact, saturating_int8

log = logging.getLogger("edgevit")


def artifact_files(exports) -> list[str]:
    """The file name of each export entry (its name, else FORMAT-PRECISION, with the runtime's suffix)."""
    names = [f"{cfg.name or f'{cfg.format}-{cfg.precision}'}{for_format(cfg.format).file_suffix(cfg)}"
             for cfg in exports]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise BadInput(f"export: two artifacts would both be written as {dupes[0]}; give them distinct 'name's")
    return names


def prepare(job: ExportJob, ctx: RunContext) -> ExportJob:
    """Pick the model an artifact is made from: the float model, or the plan lowered for its runtime."""
    rt = for_format(job.cfg.format)
    job.keep_layernorm_fp32 = rt.runs_fp16(job.cfg) and ctx.layernorm_policy(job.cfg.fp16_layernorm)["keep_fp32"]
    job.source, job.sim_name = ctx.model, ctx.float_sim
    if job.cfg.precision != "int8":
        return job
    target = rt.lowering_for(job.cfg)
    try:
        lowered = lower_plan(job.plan or ctx.plan, target, job.cfg.lowering)
    except ValueError as e:
        raise BadInput(f"export {job.cfg.name or job.file}: {e}") from e
    seven = saturating_int8(job.cfg) and overflow_fix_per_artifact(ctx.recipe) is not None
    if seven:
        lowered = seven_bit_weights(lowered)
    job.sim_name = "-".join([ctx.sim_base] + [target.name] * (target.name != "onnxruntime")
                            + [job.cfg.lowering] * (has_nonuniform(ctx.plan) and job.cfg.lowering != "exact")
                            + ["w7"] * seven) + job.suffix
    if not job.suffix:  # the before-fallback row shows the full plan: every quantizer, not placed
        placed, job.placement = place(job, ctx, lowered)
        ctx.placements[job.name] = job.placement
        if placed is None:  # no INT8 placement beats FP32 and quantize.when_slower says ship the float model
            job.cfg = job.cfg.model_copy(update={"precision": "fp32"})
            job.source, job.sim_name = ctx.model, ctx.float_sim
            return job
        if job.placement.inference_precision:  # the float layers' precision the placement timed and chose
            job.cfg = job.cfg.model_copy(update={"inference_precision": job.placement.inference_precision})
        if placed is not lowered:
            lowered, job.sim_name = placed, f"{job.sim_name}-placed-{job.name}"
    if job.sim_name not in ctx.sims:
        ctx.sims[job.sim_name] = apply_plan(ctx.model, lowered)
    job.source = ctx.sims[job.sim_name]
    return job


def export_all(jobs: list[ExportJob], ctx: RunContext) -> list[dict]:
    """Write every artifact (in the recipe's order) into the run folder; returns their rows."""
    rows = []
    with new_progress() as progress:
        task = progress.add_task("export", total=len(jobs))
        mark(ctx.stage, "export")
        for job in jobs:
            rt = for_format(job.cfg.format)
            why = rt.unavailable(job.cfg)
            if why:
                raise BadInput(f"export {job.cfg.name or job.file}: {why}")
            row = rt.export(prepare(job, ctx), ctx)
            if job.placement is not None:
                row["placement"] = job.placement.to_dict()
            rows.append(row)
            progress.advance(task)
    write_placements(ctx.stage, ctx.placements)
    return rows
