"""Write a run's reports: report.json for scripts, report.md and self-contained report.html for people."""
from __future__ import annotations

import json
from pathlib import Path

from edgevit.report.html import render_html
from edgevit.report.writers import jsonable, json_default, atomic_write, markdown, plot_accuracy_latency


def write_reports(report: dict, out_dir: Path) -> None:
    """Write report.json, accuracy_latency.png, report.md and report.html (self-contained) into ``out_dir``."""
    report["plots"] = ["accuracy_latency.png"] if plot_accuracy_latency(report, out_dir / "accuracy_latency.png") else []
    clean = jsonable(report)
    atomic_write(out_dir / "report.md", markdown(report))
    atomic_write(out_dir / "report.html", render_html(json.loads(json.dumps(clean, default=json_default))))
    atomic_write(out_dir / "report.json", json.dumps(clean, indent=2, default=json_default) + "\n")
