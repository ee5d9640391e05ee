"""Peak memory of a compression run against the number of calibration images: calibration statistics are
streamed (histograms per site, batch by batch), so 1,000 images should cost about what 256 cost.

    .venv/bin/python benchmarks/memory.py [--images 256 1000] [--calib ~/.cache/edgevit/cifar10-images/train]

Each point is a separate `edgevit compress` process (W8A8 recipe of the model, ONNX INT8 export, no
latency timing); its peak resident memory is read from the kernel (wait4's ru_maxrss). Writes
benchmarks/results/memory.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"hybrid-cifar10": "recipes/int8_ptq.yaml", "vit-cifar10": "recipes/int8_ptq_vit.yaml",
           "hybrid-cifar10 (W8A8 search)": "recipes/hybrid_w8a8.yaml"}


def run(recipe: str, calib: Path, n: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "edgevit.cli", "compress", "--recipe", recipe, "--out", str(out),
           "--calib", str(calib), "--set", f"calibration.num={n}", "--set", "validate.devices=[]",
           "--set", "validate.eval.num=200", "--set", "export=[export/onnx-int8.yaml]"]
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{recipe} with {n} images failed ({code}): {err[-500:]}")
    rep = json.loads((out / "report.json").read_text())
    return {"images": rep["data"]["calibration"]["images"], "peak_rss_mb": usage.ru_maxrss / 1024,
            "seconds": round(time.time() - t0, 1), "quantize_s": rep["quantization"]["seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, nargs="+", default=[256, 1000])
    ap.add_argument("--calib", type=Path, default=Path.home() / ".cache" / "edgevit" / "cifar10-images" / "train")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "memory.json")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model, recipe in RECIPES.items():
            for n in args.images:
                r = run(recipe, args.calib, n, Path(tmp) / f"{len(rows)}")
                rows.append({"model": model, "recipe": recipe} | r)
                print(f"{model} {n}: {r['peak_rss_mb']:.0f} MB", file=sys.stderr, flush=True)
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
                                    "rows": rows}, indent=1) + "\n")
    print("\n| model | recipe | calibration images | peak RSS | run time | calibration time |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | `{r['recipe']}` | {r['images']} | {r['peak_rss_mb']:.0f} MB | {r['seconds']:.0f} s "
              f"| {r['quantize_s']:.0f} s |")


if __name__ == "__main__":
    main()
