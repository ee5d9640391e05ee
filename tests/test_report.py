"""The reports a person reads: report.html is self-contained and renders in headless Chromium, with the
accuracy/latency Pareto plot, sizes, per-layer quantization error and activation histograms with the
quantizer's levels; `edgevit report RUN_DIR` rebuilds everything from report.json."""
from __future__ import annotations

import base64
import json
import shutil
import subprocess

import numpy as np
import pytest
import torch

from conftest import cli, speed_only_failures
from edgevit.models import load_model
from edgevit.quant import QuantConfig, quantize
from edgevit.recipe import ModelConfig
from edgevit.quant.diagnostics import layer_errors, site_histograms
from edgevit.report.writers import markdown, pareto

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_pareto_front_keeps_only_undominated_points():
    pts = [(3.0, 70.0, "a"), (1.0, 60.0, "b"), (2.0, 72.0, "c"), (2.5, 71.0, "d"), (1.5, 55.0, "e")]
    assert [p[2] for p in pareto(pts)] == ["b", "c"]


def _row(name, runtime="torch", top1=0.8, ms=None, **extra):
    lat = [{"device": "cpu", "batch1": {"median_ms": ms}}] if ms else []
    return {"name": name, "runtime": runtime, "accuracy": {"top1": top1, "delta_top1": top1 - 0.8,
                                                         "top1_agreement": 1.0 if top1 == 0.8 else 0.9},
            "latency": lat, "size_bytes": 4_000_000} | extra


def test_stage_table_shows_what_each_stage_cost_and_saved():
    """The report's first table: one row per stage model and per deployed artifact; latency ratios against
    the FP32 model in the same runtime; diagnostics and the original reference are not deployed rows; a
    token stage that reduced nothing says so."""
    from edgevit.report.writers import stage_lines

    results = [_row("pytorch-fp32", ms=5.0, flops=40e6, nonzero_weights=1000),
               _row("pytorch-pruned", top1=0.79, ms=4.0, flops=40e6, nonzero_weights=600),
               _row("pytorch-int8-sim", top1=0.78, flops=40e6, nonzero_weights=598),
               _row("onnx-int8", "onnxruntime", 0.78, 1.0, file="onnx-int8.onnx", size_bytes=1_000_000),
               _row("onnx-int8-before-fallback", "onnxruntime", 0.7, 0.9, file="x.onnx"),
               _row("onnx-fp32-original", "onnxruntime", 0.8, 1.5, file="reference/o.onnx", reference=True)]
    lines = stage_lines(results, {"method": "tome", "stages": [], "warning": "no attention stage pays"})
    text = "\n".join(lines)
    assert lines[0] == "## What each stage cost and saved"
    assert "| FP32 model | 80.00 % | +0.00 | 100.00 % | 40.0 M | 1,000 | 4.00 MB | 5.00 ms (1.00x) |" in text
    assert "| + pruning | 79.00 % | -1.00 | 90.00 % | 40.0 M | 600 | 4.00 MB | 4.00 ms (1.25x) |" in text
    assert "| + token reduction | not applied: no attention stage pays |" in text
    assert text.index("+ pruning") < text.index("+ token reduction") < text.index("+ quantization")
    assert "| export: onnx-int8 (onnxruntime) | 78.00 % |" in text and "1.00 ms (1.50x)" in text
    assert "before-fallback" not in text and "original" not in text
    assert stage_lines(results[:1] + results[3:]) == []  # no stage ran


def test_diagnostics_separate_good_and_bad_quantization():
    """Per-layer SQNR is high at W8A8 and lower at W4A4 on every layer type; a log2 softmax site's
    levels are powers of two apart."""
    model, _ = load_model(ModelConfig(source="builtin:vit-cifar10"))
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    q8, _ = quantize(model, QuantConfig(), [x])
    q4, _ = quantize(model, QuantConfig(weights={"bits": 4}, activations={"bits": 4}, softmax="log2"), [x])
    e8, e4 = layer_errors(model, q8, x), layer_errors(model, q4, x)
    assert len(e8) == len(e4) == 26 and e8[0]["layer"] == "patch_embed.proj"
    assert min(r["sqnr_db"] for r in e8) > 15
    assert np.median([r["sqnr_db"] for r in e4]) < np.median([r["sqnr_db"] for r in e8]) - 10
    hists = site_histograms(model, q4, x)
    soft = [h for h in hists if h["kind"] == "attn_softmax"]
    assert soft and all(h["quantizer"] == "log2 4-bit" for h in soft)
    lv = [v for v in soft[0]["levels"] if v > 0]
    assert np.allclose(np.diff(np.log2(lv)), 1.0, atol=1e-4) and sum(soft[0]["counts"]) == 8 * 4 * 65 * 65


def test_histograms_of_a_near_constant_softmax():
    """Attention whose logits are all but equal (a random-weight model's softmax): the values span a range
    narrower than 80 float32 bins can split, and the histogram is still drawn (every value counted)."""
    model, _ = load_model(ModelConfig(source="builtin:vit-cifar10"))
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "qkv"):
                m.qkv.weight.mul_(1e-4)
                m.qkv.bias.zero_()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    q8, _ = quantize(model, QuantConfig(softmax="log2"), [x])
    soft = [h for h in site_histograms(model, q8, x) if h["kind"] == "attn_softmax"]
    assert soft and all(sum(h["counts"]) == 2 * 4 * 65 * 65 for h in soft)
    assert any(h["edges"][-1] - h["edges"][0] < 1e-5 for h in soft)


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "int8"
    res = cli("compress", "--recipe", "recipes/int8_ptq_vit.yaml", "--out", str(out),
              "--set", "validate.eval.num=200", "--set", "validate.devices.0.iters=5",
              "--set", "validate.devices.0.warmup=1", "--set", "validate.devices.0.throughput_batch=8",
              "--set", "quantize.placement=all")  # the INT8 file whatever its speed here
    rep = json.loads((out / "report.json").read_text())
    assert res.returncode == (1 if speed_only_failures(rep) else 0), res.stderr
    return out


def test_html_report_is_self_contained(int8_run):
    html = (int8_run / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 4  # Pareto, sizes, layer error, histograms
    first = html.split('src="data:image/png;base64,', 1)[1].split('"', 1)[0]  # the plot drawn once for both
    assert base64.b64decode(first) == (int8_run / "accuracy_latency.png").read_bytes()
    assert "<table>" in html and "onnx-int8" in html and "http://" not in html and "https://" not in html
    rep = json.loads((int8_run / "report.json").read_text())
    diag = rep["quantization"]["diagnostics"]
    assert len(diag["layer_error"]) == 26 and len(diag["histograms"]) == 6


def test_a_speed_across_runtimes_says_how_onnx_runtime_ran(int8_run):
    """An artifact of another runtime timed beside the FP32 ONNX: the report says ONNX Runtime ran without
    spinning (slower than its default); with ONNX Runtime against itself it says nothing."""
    rep = json.loads((int8_run / "report.json").read_text())
    assert "not spinning" not in markdown(rep)
    row = next(r for r in rep["results"] if r["name"] == "onnx-int8")
    rep["results"].append(row | {"name": "openvino-int8", "runtime": "openvino"})
    assert markdown(rep).count("ONNX Runtime ran with its intra-op threads not spinning") == 1


def test_a_folded_description_opens_the_report_once(int8_run):
    rep = json.loads((int8_run / "report.json").read_text()) | {"description": "Two\nlines.\n"}
    assert markdown(rep).startswith(f"# edgevit run: {rep['recipe']}\n\nTwo\nlines.\n\nStatus: ")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium: bash scripts/system-deps.sh installs it")
def test_html_report_renders_in_headless_chromium(int8_run, tmp_path):
    from PIL import Image

    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,3000", f"--screenshot={shot}",
                    (int8_run / "report.html").as_uri()], capture_output=True, timeout=120)
    im = np.asarray(Image.open(shot).convert("RGB")).astype(float)
    assert im.shape[:2] == (3000, 1200)
    # not blank: text and plots cover a real share of the page in several colours
    assert (im.std(axis=2) > 30).mean() > 0.01 and (im.mean(axis=2) < 128).mean() > 0.005


def test_report_command_rebuilds_from_json(int8_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(int8_run, run)
    before = (run / "report.md").read_text()
    for name in ("report.md", "report.html", "accuracy_latency.png"):
        (run / name).unlink()
    res = cli("report", str(run))
    assert res.returncode == 0, res.stderr
    assert (run / "report.md").read_text() == before and (run / "accuracy_latency.png").is_file()
    assert (run / "report.html").read_text().count("data:image/png") == 4
    res = cli("report", str(tmp_path / "nowhere"))
    assert res.returncode == 2 and "no report.json" in res.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    rep = json.loads((run / "report.json").read_text())
    (broken / "report.json").write_text(json.dumps(rep | {"results": {"not": "a list"}}))
    res = cli("report", str(broken))
    assert res.returncode == 2 and "not an edgevit report (results: " in res.stderr
