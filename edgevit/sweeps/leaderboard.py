"""A sweep's table: ``sweep.json`` (for scripts), ``sweep.md`` and ``sweep.html`` (for people), and each
device's Pareto front of top-1 against batch-1 latency (``pareto-<device>.png``, embedded in the HTML).

Each run is one row, on its headline artifact: the first compressed artifact (not FP32) timed on the run's
device, else its first deployed artifact. Speed and size are ratios to the run's yardstick (the original
model's FP32 ONNX when pruning or token reduction ran, else the run's FP32 ONNX), timed interleaved with it
in that run; every artifact's row is in ``sweep.json`` under ``rows``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from edgevit.report.writers import accuracy_latency_axes, atomic_write, jsonable, save_png, yardsticks


def _first_local_device(report: dict) -> str | None:
    return next((d["device"] for r in report["results"] for d in r.get("latency", []) if not d.get("remote")), None)


def _latency(r: dict, dev: str | None) -> dict:
    return next((d for d in r.get("latency", []) if d["device"] == dev), None) or {}


def artifact_rows(report: dict) -> list[dict]:
    """Per result of one run: top-1, delta to FP32, batch-1 median and throughput on the first local device,
    size, each also as a ratio to the run's yardstick."""
    dev = _first_local_device(report)
    yard = next(iter(yardsticks(report["results"])), None)
    base = _latency(yard, dev) if yard else {}
    base_b1 = (base.get("batch1") or {}).get("median_ms")
    base_tp = (base.get("throughput") or {}).get("images_per_s")
    base_size = (yard or {}).get("size_bytes")
    rows = []
    for r in report["results"]:
        acc = r.get("accuracy") or {}
        lat = _latency(r, dev)
        b1 = (lat.get("batch1") or {}).get("median_ms")
        tp = (lat.get("throughput") or {}).get("images_per_s")
        size = r.get("size_bytes")
        rows.append({"name": r["name"], "precision": r["precision"], "runtime": r["runtime"],
                     "reference": bool(r.get("reference")), "deployed": bool(r.get("file")), "device": dev,
                     "top1": acc.get("top1"), "delta_top1": acc.get("delta_top1"), "batch1_median_ms": b1,
                     "throughput": tp, "size_bytes": size,
                     "speed_vs_reference": base_b1 / b1 if base_b1 and b1 else None,
                     "throughput_vs_reference": tp / base_tp if base_tp and tp else None,
                     "size_vs_reference": size / base_size if base_size and size else None})
    return rows


def headline(rows: list[dict]) -> dict | None:
    """The row a run is ranked by: its first compressed deployed artifact that was timed, else its first
    deployed artifact."""
    deployed = [r for r in rows if r["deployed"] and not r["reference"] and r["runtime"] != "torch"]
    timed = [r for r in deployed if r["batch1_median_ms"] is not None]
    return next((r for r in timed if r["precision"] != "fp32"), None) or next(iter(timed or deployed), None)


def budget_status(report: dict) -> str:
    """within / over / no budget (the run's accuracy-budget checks)."""
    checks = [c for c in report["checks"] if c.get("kind") == "budget"]
    if not checks:
        return "no budget"
    return "within" if all(c["ok"] for c in checks) else "over"


def run_entry(base: dict, report: dict | None) -> dict:
    """A run's entry in sweep.json: ``base`` (settings, status, where it ran) plus, for a finished run, its
    report's status, budget, headline figures and every artifact's row."""
    if report is None:
        return base
    rows = artifact_rows(report)
    head = headline(rows) or {}
    flops = (report.get("tokens") or {}).get("flops_ratio")
    return base | {"run_status": report["status"], "budget": budget_status(report), "artifact": head.get("name"),
                   "top1": head.get("top1"), "delta_top1": head.get("delta_top1"),
                   "batch1_median_ms": head.get("batch1_median_ms"), "speed_vs_fp32": head.get("speed_vs_reference"),
                   "throughput_vs_fp32": head.get("throughput_vs_reference"), "size_bytes": head.get("size_bytes"),
                   "size_vs_fp32": head.get("size_vs_reference"), "flops_ratio": flops, "rows": rows}


def progress(runs: list[dict]) -> dict:
    """How many runs are done, running, failed and waiting."""
    count = {s: sum(r["status"] == s for r in runs) for s in ("complete", "running", "failed", "pending")}
    return {"total": len(runs), **count}


def fmt(v, spec: str, scale: float = 1.0, unit: str = "") -> str:
    """``v`` scaled and formatted, or n/a."""
    return "n/a" if v is None else f"{scale * v:{spec}}{unit}"


def _order(sweep: dict) -> str:
    order = sweep.get("order") or {}
    if order.get("rule") != "longest-first" or not order.get("runs"):
        return ""
    return (f"; started longest first, {order['estimated']} of {order['runs']} runs estimated from this machine's "
            "earlier sweeps")


def markdown(sweep: dict) -> str:
    """sweep.md: progress, one table per model (recipe x settings x device), the failures, the plots."""
    p = sweep["progress"]
    lines = [f"# Sweep `{sweep['name']}`", "",
             f"{p['complete']} of {p['total']} runs complete, {p['running']} running, {p['failed']} failed, "
             f"{p['pending']} waiting (executor: {sweep['executor']}{_order(sweep)}).", "",
             "Each run is ranked on its headline artifact (its first compressed artifact timed on the device). "
             "Speed and size are ratios to the FP32 ONNX timed interleaved with it in the same run.", ""]
    for model in dict.fromkeys(r["model"] for r in sweep["runs"]):
        lines += [f"## {model}", "",
                  "| recipe | settings | device | status | budget | artifact | top-1 | Δ top-1 (pts) | b1 median (ms) | "
                  "speed vs FP32 | size | size vs FP32 | node |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in (r for r in sweep["runs"] if r["model"] == model):
            settings = ", ".join(f"`{k}={v}`" for k, v in r["settings"].items()) or "-"
            status = r["status"] if r["status"] != "complete" else r.get("run_status", "complete")
            lines.append(f"| {r['recipe']} | {settings} | {r['device']} | {status} | {r.get('budget', '')} | "
                         f"{r.get('artifact') or ''} | {fmt(r.get('top1'), '.2f', 100, ' %')} | "
                         f"{fmt(r.get('delta_top1'), '+.2f', 100)} | {fmt(r.get('batch1_median_ms'), '.2f')} | "
                         f"{fmt(r.get('speed_vs_fp32'), '.2f', unit='x')} | "
                         f"{fmt(r.get('size_bytes'), '.2f', 1e-6, ' MB')} | {fmt(r.get('size_vs_fp32'), '.2f', unit='x')} | "
                         f"{(r.get('node') or '')[:12]} |")
        lines.append("")
    failed = [r for r in sweep["runs"] if r["status"] == "failed"]
    if failed:
        lines += ["## Failed runs", ""] + [f"- `{r['folder']}`: {r['error']}" for r in failed] + [""]
    for dev, png in sweep.get("plots", {}).items():
        lines += [f"## Pareto front on `{dev}`", "", f"![top-1 vs latency on {dev}]({png})", ""]
    return "\n".join(lines)


def pareto_points(sweep: dict) -> dict[str, list[tuple[float, float, str]]]:
    """Per device: (batch-1 ms, top-1 %, label) of every finished run's headline artifact."""
    series: dict[str, list[tuple[float, float, str]]] = {}
    for r in sweep["runs"]:
        if r.get("batch1_median_ms") and r.get("top1") is not None:
            label = f"{r['model']}/{r['recipe']}" + "".join(f" {k.rsplit('.', 1)[-1]}={v}"
                                                            for k, v in r["settings"].items())
            series.setdefault(r["device"], []).append((r["batch1_median_ms"], 100 * r["top1"], label))
    return series


def write_plots(sweep: dict, out_dir: Path) -> dict[str, str]:
    """``pareto-<device>.png`` per device with timed runs: every run's headline artifact, the Pareto front
    dashed; device -> file name."""
    written = {}
    for dev, points in pareto_points(sweep).items():
        name = f"pareto-{re.sub(r'[^A-Za-z0-9_.-]+', '_', dev)}.png"
        save_png(accuracy_latency_axes({"runs": points}, f"{dev}: accuracy vs latency (dashed: Pareto front)"),
                 out_dir / name)
        written[dev] = name
    return written


def render_html(sweep: dict, out_dir: Path) -> str:
    """sweep.html: the Markdown tables rendered, the plots embedded (one self-contained file)."""
    import base64

    from markdown_it import MarkdownIt

    from edgevit.report.html import STYLE

    body = MarkdownIt("commonmark").enable("table").render(markdown(sweep))
    for png in sweep.get("plots", {}).values():
        data = base64.b64encode((out_dir / png).read_bytes()).decode()
        body = body.replace(f'src="{png}"', f'src="data:image/png;base64,{data}"')
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>edgevit sweep: {sweep["name"]}'
            f"</title><style>{STYLE}</style></head><body>{body}</body></html>\n")


def write_leaderboard(sweep: dict, out_dir: Path, final: bool = False) -> None:
    """Write sweep.json and sweep.md (each time a run starts or ends); ``final``: also the plots and sweep.html."""
    sweep["progress"] = progress(sweep["runs"])
    if final:
        sweep["plots"] = write_plots(sweep, out_dir)
    atomic_write(out_dir / "sweep.json", json.dumps(jsonable(sweep), indent=1) + "\n")
    atomic_write(out_dir / "sweep.md", markdown(sweep) + "\n")
    if final:
        atomic_write(out_dir / "sweep.html", render_html(sweep, out_dir))
