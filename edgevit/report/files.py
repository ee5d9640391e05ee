"""Write a run's reports: report.json for scripts, report.md and self-contained report.html for people."""
from __future__ import annotations

import json
from pathlib import Path

from edgevit.report.html import render_html
from edgevit.report.writers import (accuracy_latency_figure, atomic_write, json_default, jsonable, markdown,
                                    png_bytes)


def write_reports(report: dict, out_dir: Path) -> None:
    """Write report.json, accuracy_latency.png, report.md and report.html (self-contained) into ``out_dir``."""
    png = png_bytes(accuracy_latency_figure(report))
    report["plots"] = []
    if png is not None:
        atomic_write(out_dir / "accuracy_latency.png", png)
        report["plots"] = ["accuracy_latency.png"]
    clean = jsonable(report)
    atomic_write(out_dir / "report.md", markdown(report))
    atomic_write(out_dir / "report.html", render_html(json.loads(json.dumps(clean, default=json_default)), png))
    atomic_write(out_dir / "report.json", json.dumps(clean, indent=2, default=json_default) + "\n")
