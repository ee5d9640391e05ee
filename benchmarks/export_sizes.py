"""Every export variant of the built-in models, produced by the shipped recipes, with its size and what
was checked on this machine (CoreML prediction needs macOS, TensorRT engines an NVIDIA GPU).

    .venv/bin/python benchmarks/export_sizes.py

Runs, through the same code path as ``edgevit compress``:
  recipes/coreml_mobile.yaml (with ONNX FP16/INT8 and a palettize6 package added to its exports),
  recipes/tensorrt_jetson.yaml, recipes/sparse24_int8.yaml (its CoreML sparse package);
and prints one Markdown row per artifact (size, precision, checks passed/total for that artifact).
Writes benchmarks/results/export_sizes.json.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from edgevit.api import compress  # noqa: E402

RUNS = {
    "coreml_mobile": ["export=[export/onnx-fp32.yaml, export/onnx-fp16.yaml, export/onnx-int8.yaml, "
                      "export/coreml-fp16.yaml, export/coreml-w8.yaml, export/coreml-w8a8.yaml, "
                      "export/coreml-palettize4.yaml, {name: coreml-palettize6, format: coreml, "
                      "precision: fp16, compression: palettize6}]"],
    "tensorrt_jetson": ["validate.devices=[]"],
    "sparse24_int8": ["validate.devices=[]"],
}


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for recipe, overrides in RUNS.items():
            t0 = time.time()
            rep = compress(ROOT / "recipes" / f"{recipe}.yaml", overrides, out=Path(tmp) / recipe).report
            print(f"{recipe}: {time.time() - t0:.0f} s, status {rep['status']}", file=sys.stderr, flush=True)
            for r in rep["results"]:
                if not r.get("file") or r.get("reference"):  # the original model, timed as the yardstick
                    continue
                checks = [c for c in rep["checks"] if c["name"].startswith(r["name"] + ":")]
                e = r.get("export", {})
                rows.append({"recipe": recipe, "model": rep["model"]["source"], "artifact": r["file"],
                             "format": r["format"], "precision": r["precision"], "size_bytes": r["size_bytes"],
                             "compression": e.get("compression"), "checks_passed": sum(c["ok"] for c in checks),
                             "checks": len(checks), "top1": (r.get("accuracy") or {}).get("top1"),
                             "trtexec": e.get("trtexec"), "not_measured": r.get("not_measured")})
    out = ROOT / "benchmarks" / "results" / "export_sizes.json"
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv), "rows": rows},
                              indent=1) + "\n")
    print("\n| recipe | model | artifact | precision | size | checks | top-1 (ORT) | not checked here |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        top1 = f"{100 * r['top1']:.2f} %" if r["top1"] is not None else "-"
        missing = r["not_measured"] or ("engine: build with the trtexec line on the device" if r["trtexec"] else "")
        print(f"| {r['recipe']} | {r['model']} | `{r['artifact']}` | {r['precision']} | "
              f"{r['size_bytes'] / 1e6:.2f} MB | {r['checks_passed']}/{r['checks']} | {top1} | {missing} |")


if __name__ == "__main__":
    main()
