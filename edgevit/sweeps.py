"""One recipe, one key, several values: a run per value and one table that compares them.

    edgevit compress --recipe recipes/tome_fp32.yaml --sweep tokens.r=4,8,12

writes ``runs/tome_fp32-sweep/`` with a run folder per value (``tokens.r=4/`` ...) and ``sweep.md`` /
``sweep.json``: per value and artifact, top-1, the delta to the FP32 model, batch-1 latency and
throughput with their ratios to the run's yardstick (the original model's FP32 ONNX when pruning or
token reduction ran), FLOPs. Every value's recipe is validated before the first run; the sweep folder appears
only when every run has finished.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from edgevit.errors import BadInput
from edgevit.pipeline import run
from edgevit.recipe import Recipe, load_recipe
from edgevit.report.writers import atomic_write, yardsticks
from edgevit.runfolder import staged_run_folder


@dataclass
class SweepResult:
    """Where the sweep wrote its runs and its table, and the table's rows."""

    out_dir: Path
    summary: dict

    @property
    def ok(self) -> bool:
        return all(v["status"] == "ok" for v in self.summary["values"])


def parse_sweep(spec: str) -> tuple[str, list[str]]:
    """``KEY=V1,V2,...`` -> (KEY, [V1, V2, ...]); commas inside brackets belong to one value, so a
    per-block list sweeps as ``tokens.r=[8,8,8,8,8,0],[8,8,8,7,7,0]``."""
    key, sep, rest = spec.partition("=")
    values, depth, start = [], 0, 0
    for i, ch in enumerate(rest):
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            values.append(rest[start:i].strip())
            start = i + 1
    values.append(rest[start:].strip())
    if not sep or not re.fullmatch(r"[A-Za-z_][\w.]*", key.strip()) or depth != 0 or not all(values):
        raise BadInput(f"--sweep {spec!r}: expected KEY=VALUE1,VALUE2,... (e.g. tokens.r=4,8,12)")
    if len(set(values)) != len(values):
        raise BadInput(f"--sweep {spec!r}: a value is listed twice")
    return key.strip(), values


def _folder(key: str, value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", f"{key}={value}").strip("_")


def sweep(recipe: str | Path, spec: str, overrides: list[str] = (), out: Path | str | None = None,
          overwrite: bool = False) -> SweepResult:
    """Run ``recipe`` once per value of the ``--sweep`` spec (each into ``OUT/KEY=VALUE``) and write
    ``sweep.md`` and ``sweep.json`` comparing them (default OUT: ``runs/<recipe name>-sweep``)."""
    key, values = parse_sweep(spec)
    recipes: list[Recipe] = []
    for v in values:  # every value is checked before anything runs
        try:
            recipes.append(load_recipe(recipe, list(overrides) + [f"{key}={v}"]))
        except BadInput as e:
            raise BadInput(f"--sweep {key}={v}: {e}") from e
    out_dir = Path(out) if out else Path("runs") / f"{recipes[0].name}-sweep"
    summary = {"recipe": recipes[0].name, "key": key, "values": []}
    with staged_run_folder(out_dir, overwrite) as stage:
        for v, rec in zip(values, recipes):
            folder = _folder(key, v)
            report = run(rec, stage / folder, overwrite=False).report
            summary["values"].append({"value": v, "folder": folder, "status": report["status"],
                                      "flops_ratio": (report.get("tokens") or {}).get("flops_ratio"),
                                      "rows": summary_rows(report)})
        atomic_write(stage / "sweep.json", json.dumps(summary, indent=1) + "\n")
        atomic_write(stage / "sweep.md", "\n".join(sweep_markdown(summary)) + "\n")
    return SweepResult(out_dir, summary)


def summary_rows(report: dict) -> list[dict]:
    """Per result of one run: top-1, delta to FP32, batch-1 median and throughput, each also as a ratio
    to the run's yardstick (timed in that run, interleaved), on the first local device."""
    devices = [d["device"] for r in report["results"] for d in r.get("latency", []) if not d.get("remote")]
    dev = devices[0] if devices else None

    def timing(r: dict) -> tuple[float | None, float | None]:
        lat = next((d for d in r.get("latency", []) if d["device"] == dev), None) or {}
        return (lat.get("batch1") or {}).get("median_ms"), (lat.get("throughput") or {}).get("images_per_s")

    yardstick = next(iter(yardsticks(report["results"])), None)
    base_b1, base_tp = timing(yardstick) if yardstick else (None, None)
    rows = []
    for r in report["results"]:
        acc = r.get("accuracy") or {}
        b1, tp = timing(r)
        rows.append({"name": r["name"], "precision": r["precision"], "runtime": r["runtime"],
                     "reference": bool(r.get("reference")), "top1": acc.get("top1"),
                     "delta_top1": acc.get("delta_top1"), "batch1_median_ms": b1, "throughput": tp,
                     "speed_vs_reference": base_b1 / b1 if base_b1 and b1 else None,
                     "throughput_vs_reference": tp / base_tp if base_tp and tp else None})
    return rows


def sweep_markdown(summary: dict) -> list[str]:
    """The sweep's table, one row per value and exported artifact."""
    lines = [f"# Sweep of `{summary['key']}`: recipe {summary['recipe']}", "",
             "Each value is one run (its folder holds the full report). Speed: batch-1 latency and throughput "
             "as ratios to the run's yardstick, timed interleaved in that run (the original model's FP32 ONNX "
             "with pruning or token reduction, else the FP32 ONNX), so they compare across runs better than "
             "milliseconds do.", "",
             "| value | status | FLOPs | artifact | precision | top-1 | Δ top-1 vs FP32 (pts) | b1 median (ms) | "
             "b1 speed vs yardstick | throughput (img/s) | throughput vs yardstick |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def fmt(v, spec: str, unit: str = "") -> str:
        return "n/a" if v is None else f"{v:{spec}}{unit}"

    for v in summary["values"]:
        flops = fmt(None if v["flops_ratio"] is None else 100 * v["flops_ratio"], ".0f", " %")
        for r in v["rows"]:
            if r["reference"] or r["runtime"] == "torch":
                continue
            lines.append(
                f"| `{v['value']}` | {v['status']} | {flops} | {r['name']} | {r['precision']} | "
                f"{fmt(None if r['top1'] is None else 100 * r['top1'], '.2f', ' %')} | "
                f"{fmt(None if r['delta_top1'] is None else 100 * r['delta_top1'], '+.2f')} | "
                f"{fmt(r['batch1_median_ms'], '.2f')} | {fmt(r['speed_vs_reference'], '.2f', 'x')} | "
                f"{fmt(r['throughput'], '.0f')} | {fmt(r['throughput_vs_reference'], '.2f', 'x')} |")
    return lines
