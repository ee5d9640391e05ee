"""report.html: one self-contained page (styles inline, plots embedded as PNG data) built from report.json.

The text is the Markdown report rendered with markdown-it (tables included); the page adds the plots
the Markdown cannot carry inline: accuracy vs latency with each device's Pareto front, artifact sizes,
each quantized layer's output SQNR, and activation histograms at the post-softmax / post-GELU sites
with the quantizer's levels drawn over them.
"""
from __future__ import annotations

import base64
import re

import numpy as np

from edgevit.report.writers import accuracy_latency_figure, markdown, png_bytes

STYLE = """body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}table{border-collapse:collapse;margin:1em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}th{background:#f3f3f3}
code{background:#f5f5f5;padding:0 .2em}img{max-width:100%}h1{border-bottom:2px solid #444}
h2{border-bottom:1px solid #ccc;margin-top:1.6em}.fail{color:#b00020;font-weight:bold}"""


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def size_figure(report: dict):
    rows = [r for r in report["results"] if r.get("size_bytes") and r.get("file")]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.2))
    ax.barh([r["name"] for r in rows], [r["size_bytes"] / 1e6 for r in rows], color="#4c72b0")
    for i, r in enumerate(rows):
        ax.text(r["size_bytes"] / 1e6, i, f" {r['size_bytes'] / 1e6:.2f} MB", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("size on disk (MB)")
    ax.set_title("artifact sizes")
    fig.tight_layout()
    return fig


def layer_error_figure(diag: dict):
    rows = diag.get("layer_error") or []
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.bar(range(len(rows)), [r["sqnr_db"] for r in rows], color="#55a868")
    worst = sorted(range(len(rows)), key=lambda i: rows[i]["sqnr_db"])[:3]
    for i in worst:
        ax.annotate(rows[i]["layer"], (i, rows[i]["sqnr_db"]), fontsize=7, rotation=30, xytext=(0, 4),
                    textcoords="offset points")
    ax.set_xlabel("quantized layer (model order)")
    ax.set_ylabel("output SQNR (dB)")
    ax.set_title(f"per-layer quantization error ({diag['images']} calibration images; higher is better)")
    fig.tight_layout()
    return fig


def histogram_figure(diag: dict):
    hists = diag.get("histograms") or []
    if not hists:
        return None
    plt = _plt()
    cols = min(3, len(hists))
    rows = -(-len(hists) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, h in zip(axes.flat, hists):
        edges = h["edges"]
        ax.stairs(h["counts"], edges, fill=True, color="#8172b3", alpha=0.7)
        ax.set_yscale("log")
        ax.minorticks_off()  # a log axis' minor ticks were most of the figure's layout time
        # all levels as one line broken by NaNs: an artist per level (256 at 8 bits) took seconds to render, and
        # a collection still transforms each segment on its own (a third of the figure's time)
        x = np.repeat(np.asarray(h["levels"], dtype=float), 3)
        x[2::3] = np.nan
        ax.plot(x, np.tile([0.0, 1.0, np.nan], len(h["levels"])), transform=ax.get_xaxis_transform(),
                color="#c44e52", lw=0.4, alpha=0.6)
        ax.set_title(f"{h['site']}\n{h['quantizer']}: {len(h['levels'])} of {h['levels_total']} levels in range",
                     fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(hists):]:
        ax.axis("off")
    fig.suptitle("activations (log counts) with the quantizer's levels (red)", fontsize=9)
    fig.tight_layout()
    return fig


def render_html(report: dict, accuracy_png: bytes | None = None) -> str:
    """The whole page as a string; ``accuracy_png``: the accuracy-latency plot already drawn (else drawn here)."""
    from markdown_it import MarkdownIt

    md = markdown(report)
    md = re.sub(r"!\[[^\]]*\]\([^)]*\)\n?", "", md)  # file-linked images: embedded below instead
    body = MarkdownIt("commonmark").enable("table").render(md)
    body = body.replace("FAIL:", '<span class="fail">FAIL:</span>')
    if accuracy_png is None:
        accuracy_png = png_bytes(accuracy_latency_figure(report))
    pngs = [("Accuracy vs latency", accuracy_png), ("Sizes", png_bytes(size_figure(report)))]
    diag = (report.get("quantization") or {}).get("diagnostics")
    if diag:
        pngs += [("Per-layer quantization error", png_bytes(layer_error_figure(diag))),
                 ("Activation histograms", png_bytes(histogram_figure(diag)))]
    plots = "".join(f'<h2>{title}</h2><img alt="{title}" src="{_data_url(png)}">' for title, png in pngs if png)
    # the plots right after the artifact tables, before the stage sections (a long placement table)
    at = min((i for h in ("<h2>Pruning", "<h2>Token", "<h2>Quantization", "<h2>Checks") if (i := body.find(h)) >= 0),
             default=len(body))
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>edgevit: {report["recipe"]}</title>'
            f"<style>{STYLE}</style></head><body>{body[:at]}{plots}{body[at:]}</body></html>\n")
