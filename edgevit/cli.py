"""The ``edgevit`` command. Exit codes: 0 success, 1 runtime failure or a failed check, 2 bad input, 3 an INT8
artifact shipped as FP32 because no INT8 placement was faster on its device."""
from __future__ import annotations

import json
import logging
import sys
from enum import Enum
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.markup import escape
from rich.table import Table

from edgevit.errors import BadInput, RunFailure, one_line
from edgevit.paths import cut, user_path
from edgevit.progress import console, setup_logging
from edgevit.report.writers import status_line
from edgevit.results import STATUS_EXIT

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode="markdown",
                  help="Compress and export vision transformers (hybrids above all) for edge devices.")
log = logging.getLogger("edgevit")


def _guard(fn: Callable[[], int | None], debug: bool) -> None:
    """Run a command body; turn errors into one line and the right exit code (tracebacks only with --debug)."""
    setup_logging(debug)
    try:
        code = fn() or 0
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]: nothing was written to the run folder")
        raise typer.Exit(130)
    except BadInput as e:
        if debug:
            raise
        console.print(f"[red]error:[/red] {escape(cut(one_line(str(e)), 500))}", markup=True, highlight=False,
                      soft_wrap=True)  # a message quoting a long value stays readable
        raise typer.Exit(2)
    except Exception as e:
        if debug:
            raise
        console.print(f"[red]error:[/red] {type(e).__name__ + ': ' if not isinstance(e, RunFailure) else ''}{escape(one_line(str(e)))} "
                      "(rerun with --debug for the traceback)", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    raise typer.Exit(code)


def _abs(p: Optional[Path]) -> Optional[str]:
    return str(user_path(p).resolve()) if p is not None else None


@app.command()
def compress(
    recipe: str = typer.Option(..., "--recipe", "-r", help="recipe file, or the name of a shipped recipe"),
    model: Optional[str] = typer.Option(None, help="model source: builtin:NAME, timm:NAME, hf:FOLDER or file:path.py:function"),
    checkpoint: Optional[Path] = typer.Option(None, help="state dict for a timm:/file: model"),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help="allow a pickled checkpoint (can run code)"),
    calib: Optional[Path] = typer.Option(None, help="calibration images (ImageFolder or a flat folder)"),
    eval: Optional[Path] = typer.Option(None, "--eval", help="labeled evaluation images (ImageFolder)"),
    out: Optional[Path] = typer.Option(None, help="run folder [default: runs/<recipe name>]"),
    set_: list[str] = typer.Option([], "--set", help="override any recipe key by dotted path, e.g. validate.devices.0.threads=1"),
    sweep: Optional[str] = typer.Option(None, help="run once per value and compare, e.g. tokens.r=4,8,12 "
                                        "(runs in OUT/runs/, table in OUT/sweep.md; see `edgevit sweep`)"),
    overwrite: bool = typer.Option(False, help="replace an existing run folder"),
    debug: bool = typer.Option(False, help="show tracebacks"),
) -> None:
    """Run a recipe: load the model, apply its stages, export, validate on real runtimes, report.

    Example: `edgevit compress --recipe recipes/fp32_export.yaml --set validate.devices.0.threads=1`;
    `--sweep tokens.r=4,8,12` runs it once per value and writes a table comparing them.
    """
    def body() -> int:
        from edgevit.api import compress as run_compress
        from edgevit.recipe import load_recipe

        overrides = []
        if model:
            overrides.append(f"model.source={model}")
        if checkpoint:
            overrides.append(f"model.checkpoint={_abs(checkpoint)}")
        if trust_checkpoint:
            overrides.append("model.trust_checkpoint=true")
        if calib:
            overrides.append(f"calibration.path={_abs(calib)}")
        if eval:
            overrides.append(f"validate.eval.path={_abs(eval)}")
        if sweep:
            from edgevit.api import sweep as run_sweep

            try:
                swept = run_sweep(recipe, sweep, overrides + list(set_), out=out, overwrite=overwrite)
            except KeyboardInterrupt:
                return _interrupted_sweep((out or Path("runs") / f"{Path(recipe).stem}-sweep") / "runs")
            _print_sweep(swept.summary, swept.out_dir)
            return swept.exit_code
        rec = load_recipe(recipe, overrides + list(set_))
        result = run_compress(rec, out=out, overwrite=overwrite)
        _print_summary(result.report, result.out_dir)
        return STATUS_EXIT[result.report["status"]]

    _guard(body, debug)


def _print_summary(report: dict, out_dir: Path) -> None:
    table = Table(title=f"{report['recipe']} -> {out_dir}")
    for col in ("artifact", "runtime", "precision", "top-1", "Δ pts", "b1 median ms", "size"):
        table.add_column(col)
    for r in report["results"]:
        acc = r.get("accuracy") or {}
        lat = (r.get("latency") or [None])[0]
        table.add_row(r["name"], r["runtime"], r["precision"],
                      "n/a" if acc.get("top1") is None else f"{100 * acc['top1']:.2f} %",
                      "n/a" if acc.get("delta_top1") is None else f"{100 * acc['delta_top1']:+.2f}",
                      "n/a" if not lat else f"{lat['batch1']['median_ms']:.2f}",
                      "n/a" if r["size_bytes"] is None else f"{r['size_bytes'] / 1e6:.2f} MB")
    console.print(table)
    for c in report["checks"]:
        console.print(f"{'[green]PASS[/green]' if c['ok'] else '[red]FAIL[/red]'} {c['name']}: {c['detail']}")
    console.print(f"report: {out_dir / 'report.md'}  (machine-readable: {out_dir / 'report.json'})")
    console.print(status_line(report), markup=False, highlight=False, soft_wrap=True)


def _print_sweep(summary: dict, out_dir: Path) -> None:
    from edgevit.sweeps.leaderboard import fmt

    table = Table(title=f"sweep {summary['name']} -> {out_dir}")
    for col in ("model", "recipe", "settings", "device", "status", "artifact", "top-1", "Δ pts", "speed vs FP32",
                "size vs FP32"):
        table.add_column(col)
    for r in summary["runs"]:
        table.add_row(r["model"], r["recipe"], " ".join(f"{k}={v}" for k, v in r["settings"].items()), r["device"],
                      r.get("run_status") or r["status"], r.get("artifact") or "", fmt(r.get("top1"), ".2f", 100, " %"),
                      fmt(r.get("delta_top1"), "+.2f", 100), fmt(r.get("speed_vs_fp32"), ".2f", unit="x"),
                      fmt(r.get("size_vs_fp32"), ".2f", unit="x"))
    console.print(table)
    for r in summary["runs"]:
        if r["status"] == "failed":
            console.print(f"[red]FAILED[/red] {escape(r['folder'])}: {escape(r['error'] or '')}", soft_wrap=True)
    p = summary["progress"]
    console.print(f"{p['complete']} of {p['total']} runs complete, {p['failed']} failed; table: "
                  f"{out_dir / 'sweep.md'} (machine-readable: sweep.json; page: sweep.html); runs in {summary['runs_dir']}/",
                  soft_wrap=True)


def _interrupted_sweep(runs_dir: Path) -> int:
    console.print(f"[red]interrupted[/red]: finished runs are kept in {escape(str(runs_dir))}; run the "
                  "same command again to continue", soft_wrap=True)
    return 130


def _export_formats() -> dict[str, str]:
    from edgevit.runtimes import formats

    return {f: f for f in formats()}


ExportTarget = Enum("ExportTarget", _export_formats(), type=str)  # every registered runtime's format


class Compression(str, Enum):
    none = "none"
    w8 = "w8"
    palettize4 = "palettize4"
    palettize6 = "palettize6"
    sparse = "sparse"
    w8_sparse = "w8-sparse"


class Precision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


class Target(str, Enum):
    onnxruntime = "onnxruntime"
    tensorrt = "tensorrt"
    coreml = "coreml"
    openvino = "openvino"


@app.command("sweep")
def sweep_cmd(
    plan: Path = typer.Argument(..., help="sweep plan (YAML): name, recipes, models, set, devices"),
    out: Optional[Path] = typer.Option(None, help="sweep folder [default: runs/<plan name>]; "
                                       "an unfinished sweep there is continued"),
    executor: str = typer.Option("local", help="local (one run after another in this process) or ray"),
    address: Optional[str] = typer.Option(None, help="Ray cluster to use: auto, HOST:PORT or ray://HOST:10001 "
                                          "[default: start Ray on this machine]"),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", min=1,
                                           help="CPUs the Ray started on this machine offers [default: all]"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the runs and stop"),
    overwrite: bool = typer.Option(False, help="start over in a folder that holds another sweep"),
    debug: bool = typer.Option(False, help="show tracebacks"),
) -> None:
    """Run a matrix of recipes x models x settings x devices and write one leaderboard.

    Example: `edgevit sweep plan.yaml --executor ray --out runs/zoo` (the plan format is in the README).
    """
    def body() -> int:
        from edgevit.sweeps import dry_run_lines, expand, load_plan, run_plan, runs_folder

        p, plan_file = load_plan(plan)
        if dry_run:
            runs = expand(p, plan_file)
            for line in dry_run_lines(runs):
                print(line)
            return 0
        out_dir = out or Path("runs") / p.name
        try:
            result = run_plan(p, out_dir, plan_file, executor, address, overwrite, num_cpus=num_cpus)
        except KeyboardInterrupt:
            return _interrupted_sweep(runs_folder(p, plan_file, out_dir))
        _print_sweep(result.summary, result.out_dir)
        return result.exit_code

    _guard(body, debug)


@app.command()
def init(
    model: str = typer.Option(..., help="model source: builtin:NAME, timm:NAME, hf:FOLDER or file:path.py:function"),
    checkpoint: Optional[Path] = typer.Option(None, help="state dict for a timm:/file: model"),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help="allow a pickled checkpoint"),
    calib: Optional[Path] = typer.Option(None, help="calibration images [default: the shipped CIFAR-10 ones]"),
    eval: Optional[Path] = typer.Option(None, "--eval", help="held-out images (ImageFolder: top-1 is measured)"),
    target: list[Target] = typer.Option([Target.onnxruntime], help="runtimes to export for (repeat the option)"),
    kwargs: Optional[str] = typer.Option(None, help="timm.create_model arguments as YAML, e.g. '{img_size: 64}'"),
    out: Path = typer.Option(Path("my_recipe.yaml"), help="the recipe file to write"),
    force: bool = typer.Option(False, "--force", help="replace an existing file"),
    debug: bool = typer.Option(False, help="show tracebacks"),
) -> None:
    """Write a commented starter recipe for your model: preprocessing from the model, W8A8 quantization, the
    export presets and local device profiles of the targets, an accuracy budget; validated before it is
    written. Then: `edgevit compress --recipe my_recipe.yaml`.

    Example: `edgevit init --model timm:levit_128s --checkpoint my.safetensors --calib images/ --eval val/
    --target onnxruntime --target openvino --out levit.yaml`
    """
    def body() -> int:
        import yaml

        from edgevit.starter import starter_recipe, write_starter

        try:
            args = yaml.safe_load(kwargs) if kwargs else None
        except yaml.YAMLError as e:
            raise BadInput(f"--kwargs: not YAML ({str(e).splitlines()[0]})") from e
        if args is not None and not isinstance(args, dict):
            raise BadInput(f"--kwargs: expected a mapping such as '{{img_size: 64}}', got {kwargs!r}")
        text = starter_recipe(_source(model), out, _abs(checkpoint), trust_checkpoint, calib and Path(_abs(calib)),
                              eval and Path(_abs(eval)), [t.value for t in target], args)
        write_starter(out, text, force)
        console.print(f"wrote {out}: run it with `edgevit compress --recipe {out}`", soft_wrap=True, highlight=False)
        return 0

    _guard(body, debug)


def _source(model: str) -> str:
    """``model`` with a file:/hf: path made absolute, so that a recipe written elsewhere finds it."""
    from edgevit.models.sources import source_path

    located = source_path(model)
    if located is None:
        return model
    path, func = located
    return f"{model.split(':', 1)[0]}:{path.resolve()}" + (f":{func}" if func else "")


@app.command()
def export(
    model: str = typer.Option(..., help="model source: builtin:NAME, timm:NAME, hf:FOLDER or file:path.py:function"),
    checkpoint: Optional[Path] = typer.Option(None, help="state dict for a timm:/file: model"),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help="allow a pickled checkpoint"),
    to: ExportTarget = typer.Option("onnx", help="target format (a registered runtime's)"),
    precision: Precision = typer.Option(Precision.fp32, help="fp32, fp16 (onnx, coreml: compute precision, "
                                        "tensorrt) or bf16 (openvino)"),
    compression: Compression = typer.Option(Compression.none, help="coreml only: weight compression"),
    deployment_target: str = typer.Option("iOS17", help="coreml only: iOS16, iOS17 or iOS18"),
    num_classes: Optional[int] = typer.Option(None, help="classes of a timm model [default: from the checkpoint]"),
    out: Path = typer.Option(Path("exports"), help="output folder"),
    debug: bool = typer.Option(False, help="show tracebacks"),
) -> None:
    """Export a model without compression stages (ONNX, a CoreML image classifier, an OpenVINO IR, a
    TensorRT engine), with labels and preprocessing in its metadata, checked on its runtime.

    Examples: `edgevit export --model builtin:vit-cifar10 --to onnx --out exports/`;
    `edgevit export --model builtin:hybrid-cifar10 --to coreml --precision fp16 --compression w8`;
    `edgevit export --model builtin:hybrid-cifar10 --to openvino --precision bf16`
    """
    def body() -> int:
        from pydantic import ValidationError

        from edgevit.api import export_model
        from edgevit.recipe import ModelConfig
        from edgevit.runtimes import for_format as runtime_of

        try:
            cfg = ModelConfig(source=model, checkpoint=_abs(checkpoint), trust_checkpoint=trust_checkpoint,
                              num_classes=num_classes)
        except ValidationError as e:
            raise BadInput(f"--model: {e.errors()[0]['msg']}") from e
        if to.value != "coreml" and compression != Compression.none:
            raise BadInput("--compression: only with --to coreml (ONNX compression comes from `edgevit compress` "
                           "recipes)")
        if deployment_target not in ("iOS16", "iOS17", "iOS18"):
            raise BadInput(f"--deployment-target: {deployment_target!r} is not one of iOS16, iOS17, iOS18")
        res = export_model(cfg, out, precision.value, to=to.value, compression=compression.value,
                           deployment_target=deployment_target)
        facts = [f"{res['size_bytes'] / 1e6:.2f} MB"]
        if res.get("labels") is not None and res.get("compressed_ops") is not None:  # a CoreML classifier
            ops = ", ".join(f"{k} {v}" for k, v in res["compressed_ops"].items()) or "none"
            facts.append(f"{len(res['labels'])} labels, compressed-weight ops: {ops}")
        if res.get("max_abs_diff") is not None:
            facts.append(f"max abs diff vs PyTorch in {runtime_of(to.value).label} {res['max_abs_diff']:.2e}")
        console.print(f"wrote {res['file']} ({'; '.join(facts)})"
                      + (f"; {res['not_measured']}" if res.get("not_measured") else ""), soft_wrap=True)
        return 0

    _guard(body, debug)


@app.command()
def bench(
    artifact: Path = typer.Argument(..., help="an artifact written by edgevit (.onnx; .engine / .mlpackage on an "
                                                  "SSH device with that runtime)"),
    device: Optional[Path] = typer.Option(None, help="device profile YAML [default: devices/local-ort-cpu.yaml]"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON on stdout"),
    debug: bool = typer.Option(False, help="show tracebacks"),
) -> None:
    """Measure the latency of one artifact on a device: this machine (ONNX Runtime) or a device over SSH.

    Example: `edgevit bench runs/fp32_export/onnx-fp32.onnx --device devices/local-ort-cpu.yaml`
    """
    def body() -> int:
        from edgevit.api import bench as run_bench
        from edgevit.recipe import DeviceConfig, load_section

        dev = load_section(device, DeviceConfig, "device profile") if device else DeviceConfig()
        res = run_bench(artifact, dev)
        if as_json:
            sys.stdout.write(json.dumps(res, indent=2) + "\n")
        else:
            b1, tp = res["batch1"], res["throughput"]
            console.print(f"{artifact} on {res['device']} ({res['threads']} threads): batch 1 median "
                          f"{b1['median_ms']:.2f} ms, p90 {b1['p90_ms']:.2f} ms; batch {tp['batch']} "
                          f"{tp['images_per_s']:.0f} images/s; size {res['size_bytes'] / 1e6:.2f} MB")
        return 0

    _guard(body, debug)


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="a finished run folder (holds report.json)"),
    debug: bool = typer.Option(False, help="show tracebacks"),
) -> None:
    """Rebuild report.md, report.html and the plot of a run from its report.json.

    Example: `edgevit report runs/int8_ptq`
    """
    def body() -> int:
        from edgevit.api import rebuild_report

        written = rebuild_report(run_dir)
        console.print("wrote " + ", ".join(str(p) for p in written))
        return 0

    _guard(body, debug)


@app.command()
def recipes() -> None:
    """List the shipped recipes, one line each.

    Example: `edgevit recipes`
    """
    def body() -> int:
        from edgevit.recipe import SHIPPED_ROOT, shipped_recipes

        for name, desc, path in shipped_recipes():
            sys.stdout.write(f"{name:<20} {path.relative_to(SHIPPED_ROOT)}  {desc}\n")
        return 0

    _guard(body, False)


@app.command("recipe-schema")
def recipe_schema() -> None:
    """Print the JSON schema of a recipe (for editors and validation).

    Example: `edgevit recipe-schema > recipe.schema.json`
    """
    def body() -> int:
        from edgevit.recipe import recipe_schema as schema

        sys.stdout.write(json.dumps(schema(), indent=2) + "\n")
        return 0

    _guard(body, False)


@app.command("report-schema")
def report_schema() -> None:
    """Print the JSON schema of report.json (its stable keys, for scripts that read reports).

    Example: `edgevit report-schema > report.schema.json`
    """
    def body() -> int:
        from edgevit.results import report_schema as schema

        sys.stdout.write(json.dumps(schema(), indent=2) + "\n")
        return 0

    _guard(body, False)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
