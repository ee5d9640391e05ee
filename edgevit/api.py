"""Python API: the same verbs as the CLI, and the same code path.

    from edgevit.api import compress
    result = compress("recipes/fp32_export.yaml", overrides=["validate.devices.0.threads=1"])
    print(result.report["results"][1]["accuracy"]["top1"])
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np

from pydantic import ValidationError

from edgevit.errors import BadInput, RunFailure
from edgevit.models.sources import ModelInfo, source_path
from edgevit.paths import user_path
from edgevit.pipeline import RunResult, run
from edgevit.recipe import DeviceConfig, ModelConfig, Recipe, build_recipe, load_recipe
from edgevit.results import RunReport
from edgevit.runtimes import RUNTIMES, for_suffix, formats, runtime
from edgevit.validate.latency import measure


def compress(recipe: Recipe | str | Path, overrides: list[str] = (), out: Path | str | None = None,
             overwrite: bool = False) -> RunResult:
    """Run a recipe (a file path, a shipped recipe name, or a Recipe) into ``out``
    (default ``runs/<recipe name>``)."""
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, list(overrides))
    out_dir = user_path(out) if out else Path("runs") / recipe.name
    return run(recipe, out_dir, overwrite=overwrite)


def sweep(recipe: str | Path, spec: str, overrides: list[str] = (), out: Path | str | None = None,
          overwrite: bool = False, executor: str = "local", address: str | None = None):
    """Run a recipe once per value of ``spec`` (``KEY=V1,V2,...``) and compare the runs: the one-recipe sweep
    plan (every value validated before anything runs), into ``out`` (default ``runs/<recipe>-sweep``)."""
    from edgevit.sweeps import one_recipe_plan, parse_sweep, run_plan

    key, values = parse_sweep(spec)
    plan = one_recipe_plan(recipe, key, values, list(overrides))
    return run_plan(plan, user_path(out) if out else Path("runs") / plan.name, executor=executor, address=address,
                    overwrite=overwrite, strict=True)


def sweep_plan(plan: str | Path, out: Path | str | None = None, executor: str = "local", address: str | None = None,
               overwrite: bool = False, num_cpus: int | None = None):
    """Run a sweep plan file (see edgevit.sweeps.plan) into ``out`` (default ``runs/<plan name>``) with the
    ``local`` or ``ray`` executor (``address``: a Ray cluster; ``num_cpus``: what a Ray started here offers)."""
    from edgevit.sweeps import load_plan, run_plan

    p, plan_file = load_plan(plan)
    return run_plan(p, user_path(out) if out else Path("runs") / p.name, plan_file, executor, address, overwrite,
                    num_cpus=num_cpus)


def export(model: ModelConfig | str, out_dir: Path | str, **options) -> dict:
    """Export a model (a ModelConfig or a source such as ``timm:NAME``) without compression stages; the
    options are those of :func:`export_model`."""
    return export_model(ModelConfig(source=model) if isinstance(model, str) else model, out_dir, **options)


def export_model(model: ModelConfig, out_dir: Path | str, precision: str = "fp32", opset: int = 17,
                 to: str = "onnx", compression: str = "none", deployment_target: str = "iOS17") -> dict:
    """Export a model without compression stages, through the same pipeline as ``compress``: the artifact
    is written by its runtime and checked there (an FP32 ONNX must match PyTorch within the parity
    tolerance on 8 seeded random images; a CoreML package is checked as far as Linux allows). With no
    images to measure them on, LayerNorms of FP16 artifacts stay in FP32. Returns the export facts with
    ``file``, ``size_bytes``, ``max_abs_diff`` (None where nothing ran), ``layernorm`` and ``checks``."""
    located = source_path(model.source)  # a path: the folder's name, or the file's and its function's
    spec = (f"{located[0].stem}-{located[1]}" if located[1] else located[0].name) if located else \
        model.source.split(":", 1)[1]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", spec).strip("-")
    name = f"{stem}-{precision}" + (f"-{compression}" if compression != "none" else "")
    options = {"opset": opset, "compression": compression, "deployment_target": deployment_target}
    takes = formats()[to].model_fields if to in formats() else {}  # each format's config has its own options
    entry = {"name": name, "format": to, "precision": precision} | {k: v for k, v in options.items() if k in takes}
    try:
        recipe = build_recipe({"name": "export", "model": model.model_dump(mode="json", exclude_none=True),
                               "export": [entry], "validate": {"devices": []}})
    except BadInput as e:  # name the command-line option, not the recipe key it became
        raise BadInput(str(e).replace("<recipe>: export.0.", "--").replace("--deployment_target", "--deployment-target")
                       .replace("<recipe>: ", "")) from e
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / f".{name}.export-{os.getpid()}"
    try:
        report = run(recipe, work, overwrite=True).report
        row = next(r for r in report["results"] if r["name"] == name)
        failed = [c for c in report["checks"] if not c["ok"]]
        if failed:
            raise RunFailure(f"{failed[0]['name']}: {failed[0]['detail']}")
        for path in runtime(row["runtime"]).files(work / row["file"]):  # an IR's weights come along
            if (out_dir / path.name).is_dir():
                shutil.rmtree(out_dir / path.name)
            os.replace(path, out_dir / path.name)
        dest = out_dir / row["file"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    par = row.get("parity") or {}
    return {"file": dest, "max_abs_diff": par.get("max_abs_diff"), "size_bytes": row["size_bytes"],
            "layernorm": next(iter((report.get("fp16_layernorm") or {}).values()), None), **row["export"],
            "checks": report["checks"], **({"not_measured": row["not_measured"].split(": ", 1)[-1]}
                                           if row.get("not_measured") else {})}


def bench(artifact: Path | str, device: DeviceConfig | None = None) -> dict:
    """Latency of one artifact on a device profile: this machine (the runtime the artifact's suffix names),
    or a device over SSH (its profile's runtime: ONNX Runtime, TensorRT engine, CoreML package on a Mac,
    ...)."""
    device = device or DeviceConfig()
    artifact = Path(artifact)
    if device.kind == "ssh":
        return _bench_remote(artifact, device)
    if not artifact.exists():
        raise BadInput(f"artifact not found: {artifact}")
    rt = for_suffix(artifact.suffix)
    if rt is None or not rt.local_device:
        local = ", ".join(s for r in RUNTIMES.values() if r.local_device for s in (r.suffix, *r.other_suffixes))
        raise BadInput(f"{artifact}: only {local} artifacts can be benchmarked here (got '{artifact.suffix}'); "
                       "others need a device profile of kind ssh")
    try:
        meta = rt.read_metadata(artifact)
    except Exception as e:  # onnx raises DecodeError and others for a damaged file
        raise BadInput(f"{artifact} is not a readable {rt.file_noun} file: {type(e).__name__}") from e
    try:
        size = json.loads(meta["input_size"])[-1] if "input_size" in meta else None
        runner = rt.local_runner(artifact, device)
        if size is None:
            shape = rt.input_shape(runner)
            if len(shape) != 4:
                raise ValueError(f"expected one image input (N, 3, H, W), got {shape}")
            size = shape[-1] if isinstance(shape[-1], int) else 224
        x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
        runner(x)
    except Exception as e:  # the runtime's load/shape errors, bad metadata: the file is the problem, not the run
        detail = (str(e).strip().splitlines() or [""])[0][:200]
        raise BadInput(f"{artifact}: {rt.label} cannot run it as an image model ({type(e).__name__}: {detail})") \
            from e
    return {"artifact": str(artifact), "size_bytes": artifact_size(artifact), **measure(runner, x, device)}


def artifact_size(path: Path) -> int:
    """Bytes of an artifact: a file, a package folder, or an IR with its weights file beside it."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    rt = for_suffix(path.suffix)
    return sum(p.stat().st_size for p in (rt.files(path) if rt else [path]))


def _bench_remote(artifact: Path, device: DeviceConfig) -> dict:
    from edgevit.devices.remote import measure_remote

    rt = runtime(device.runtime)
    if artifact.suffix not in (rt.suffix, *rt.other_suffixes) or not artifact.exists():
        raise BadInput(f"{artifact}: device {device.name} runs {device.runtime}, which takes an existing "
                       f"{rt.suffix} artifact")
    meta = rt.read_metadata(artifact)
    size = json.loads(meta["input_size"])[-1] if "input_size" in meta else 224
    labels = json.loads(meta.get("labels", "[]"))
    preprocessing = ModelInfo(source=str(artifact), arch="", num_classes=len(labels), labels=labels,
                              input_size=size, mean=tuple(json.loads(meta.get("mean", "[0, 0, 0]"))),
                              std=tuple(json.loads(meta.get("std", "[1, 1, 1]"))))
    x = np.random.default_rng(0).standard_normal((8, 3, size, size)).astype(np.float32)
    out = measure_remote(device, [(artifact.stem, artifact)], x, None, preprocessing)
    got = out["artifacts"][artifact.stem]
    return {"artifact": str(artifact), "size_bytes": artifact_size(artifact), "device": device.name,
            "threads": device.threads, "batch1": got["batch1"], "throughput": got["throughput"],
            "load_average": out["load_average"],
            "remote": {"host": device.ssh.host, "runtime": out["runtime_version"], **out["machine"]}}


def rebuild_report(run_dir: Path | str) -> list[Path]:
    """Rewrite a run's report.md, report.html and plot from its report.json (e.g. after an upgrade)."""
    from edgevit.report import write_reports

    run_dir = Path(run_dir)
    path = run_dir / "report.json"
    if not path.is_file():
        raise BadInput(f"{run_dir}: no report.json (is it a finished edgevit run folder?)")
    try:
        report = RunReport.model_validate_json(path.read_text()).to_dict()
    except ValidationError as e:  # malformed JSON too
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<top>"
        raise BadInput(f"{path}: not an edgevit report ({where}: {first['msg']})") from e
    write_reports(report, run_dir)
    return [run_dir / n for n in ("report.md", "report.html", *report.get("plots", []))]
