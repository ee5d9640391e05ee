"""Python API: the same verbs as the CLI, and the same code path.

    from edgevit.api import compress
    result = compress("recipes/fp32_export.yaml", overrides=["validate.devices.0.threads=1"])
    print(result.report["results"][1]["accuracy"]["top1"])
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from edgevit.errors import BadInput
from edgevit.exporters.fp16 import layernorm_policy
from edgevit.exporters.onnx import export_onnx, read_metadata
from edgevit.models import load_model
from edgevit.pipeline import RunResult, run, seed_everything
from edgevit.recipe import DeviceConfig, ExportConfig, ModelConfig, Recipe, load_recipe
from edgevit.validate import OrtRunner, TorchRunner
from edgevit.validate.latency import measure


def compress(recipe: Recipe | str | Path, overrides: list[str] = (), out: Path | str | None = None,
             overwrite: bool = False) -> RunResult:
    """Run a recipe (a file path, a shipped recipe name, or a Recipe) into ``out``
    (default ``runs/<recipe name>``)."""
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, list(overrides))
    out_dir = Path(out) if out else Path("runs") / recipe.name
    return run(recipe, out_dir, overwrite=overwrite)


def sweep(recipe: Recipe | str | Path, spec: str, overrides: list[str] = (), out: Path | str | None = None,
          overwrite: bool = False):
    """Run a recipe once per value of ``spec`` (``KEY=V1,V2,...``) and compare the runs (see edgevit.sweep)."""
    from edgevit.sweep import sweep as run_sweep

    return run_sweep(recipe, spec, overrides, out, overwrite)


def export(model: ModelConfig | str, out_dir: Path | str, **options) -> dict:
    """Export a model (a ModelConfig or a source such as ``timm:NAME``) without compression stages; the
    options are those of :func:`export_model`."""
    return export_model(ModelConfig(source=model) if isinstance(model, str) else model, out_dir, **options)


def export_model(model: ModelConfig, out_dir: Path | str, precision: str = "fp32", opset: int = 17,
                 to: str = "onnx", compression: str = "none", deployment_target: str = "iOS17") -> dict:
    """Export a model without compression stages: ONNX (returns its parity vs PyTorch in ONNX Runtime)
    or a CoreML classifier (``compression``: CoreML weight compression; checked as far as Linux allows).
    With no images to measure them on, LayerNorms of FP16 artifacts stay in FP32."""
    seed_everything(0)
    torch_model, info = load_model(model)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", info.source.split(":", 1)[1]).strip("-")
    cfg = ExportConfig(format=to, precision=precision, opset=opset, compression=compression,
                       deployment_target=deployment_target)
    ln = layernorm_policy(torch_model, None, cfg.fp16_layernorm)
    keep_ln = ln["keep_fp32"] and precision != "fp32"
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    if to == "coreml":
        from edgevit.exporters.coreml import export_coreml, unavailable

        why = unavailable(compression)
        if why:
            raise BadInput(why)
        path = Path(out_dir) / f"{stem}-{precision}{'-' + compression if compression != 'none' else ''}.mlpackage"
        facts = export_coreml(torch_model, info, path, compression, precision, deployment_target, "export", keep_ln)
        return {"file": path, "max_abs_diff": None, "layernorm": ln, **facts,
                "not_measured": "prediction (accuracy, parity, latency) needs macOS"}
    path = Path(out_dir) / f"{stem}-{precision}.onnx"
    facts = export_onnx(torch_model, info, cfg, path, recipe_name="export", layernorm_fp32=keep_ln)
    x = np.random.default_rng(0).standard_normal((4, 3, info.input_size, info.input_size)).astype(np.float32)
    diff = float(np.abs(OrtRunner(path)(x) - TorchRunner(torch_model)(x)).max())
    return {"file": path, "max_abs_diff": diff, "size_bytes": path.stat().st_size, "layernorm": ln, **facts}


def bench(artifact: Path | str, device: DeviceConfig | None = None) -> dict:
    """Latency of one artifact on a device profile: local ONNX Runtime, or a device over SSH (ONNX
    Runtime, TensorRT engine, CoreML package on a Mac)."""
    device = device or DeviceConfig()
    artifact = Path(artifact)
    if device.kind == "ssh":
        return _bench_remote(artifact, device)
    if not artifact.is_file():
        raise BadInput(f"artifact not found: {artifact}")
    if artifact.suffix != ".onnx":
        raise BadInput(f"{artifact}: only .onnx artifacts can be benchmarked here (got '{artifact.suffix}')")
    try:
        meta = read_metadata(artifact)
    except Exception as e:  # onnx raises DecodeError and others for a damaged file
        raise BadInput(f"{artifact} is not a readable ONNX file: {type(e).__name__}") from e
    try:
        size = json.loads(meta["input_size"])[-1] if "input_size" in meta else None
        runner = OrtRunner(artifact, device.threads, device.providers)
        inputs = runner.session.get_inputs()
        if size is None:
            shape = inputs[0].shape if len(inputs) == 1 else []
            if len(shape) != 4:
                raise ValueError(f"expected one image input (N, 3, H, W), got {[i.shape for i in inputs]}")
            size = shape[-1] if isinstance(shape[-1], int) else 224
        x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
        runner(x)
    except Exception as e:  # ORT's load/shape errors, bad metadata: the file is the problem, not the run
        detail = (str(e).strip().splitlines() or [""])[0][:200]
        raise BadInput(f"{artifact}: ONNX Runtime cannot run it as an image model ({type(e).__name__}: {detail})") \
            from e
    return {"artifact": str(artifact), "size_bytes": Path(artifact).stat().st_size,
            **measure(runner, x, device)}


def _bench_remote(artifact: Path, device: DeviceConfig) -> dict:
    from types import SimpleNamespace

    from edgevit.devices.remote import SUFFIX, measure_remote

    want = SUFFIX[device.runtime]
    if artifact.suffix != want or not artifact.exists():
        raise BadInput(f"{artifact}: device {device.name} runs {device.runtime}, which takes an existing {want} artifact")
    meta = read_metadata(artifact) if want == ".onnx" else _coreml_metadata(artifact) if want == ".mlpackage" else {}
    size = json.loads(meta["input_size"])[-1] if "input_size" in meta else 224
    info = SimpleNamespace(labels=json.loads(meta.get("labels", "[]")), mean=json.loads(meta.get("mean", "[0, 0, 0]")),
                           std=json.loads(meta.get("std", "[1, 1, 1]")))
    x = np.random.default_rng(0).standard_normal((8, 3, size, size)).astype(np.float32)
    out = measure_remote(device, [(artifact.stem, artifact)], x, None, info)
    got = out["artifacts"][artifact.stem]
    size_bytes = sum(f.stat().st_size for f in artifact.rglob("*") if f.is_file()) if artifact.is_dir() else \
        artifact.stat().st_size
    return {"artifact": str(artifact), "size_bytes": size_bytes, "device": device.name, "threads": device.threads,
            "batch1": got["batch1"], "throughput": got["throughput"], "load_average": out["load_average"],
            "remote": {"host": device.ssh.host, "runtime": out["runtime_version"], **out["machine"]}}


def _coreml_metadata(path: Path) -> dict:
    from edgevit.exporters.coreml import inspect_package

    return inspect_package(path)["metadata"]


def rebuild_report(run_dir: Path | str) -> list[Path]:
    """Rewrite a run's report.md, report.html and plot from its report.json (e.g. after an upgrade)."""
    from edgevit.report import write_reports

    run_dir = Path(run_dir)
    path = run_dir / "report.json"
    if not path.is_file():
        raise BadInput(f"{run_dir}: no report.json (is it a finished edgevit run folder?)")
    try:
        report = json.loads(path.read_text())
        report["results"], report["recipe"]  # noqa: B018 - the keys every writer needs
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise BadInput(f"{path}: not an edgevit report ({type(e).__name__}: {e})") from e
    write_reports(report, run_dir)
    return [run_dir / n for n in ("report.md", "report.html", *report.get("plots", []))]
