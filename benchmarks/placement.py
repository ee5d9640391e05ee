"""What ``quantize.placement: auto`` ships, per model, on this machine's ONNX Runtime and OpenVINO (batch 1, 2
threads).

    .venv/bin/python benchmarks/placement.py [--only NAME ...]

Runs ``edgevit compress --recipe int8_ptq`` (FP32 and INT8 ONNX for ONNX Runtime; ``openvino_int8`` for the
OpenVINO row: FP32 and INT8 IRs) on each model and
collects, from the run folder: the candidates the placement timed interleaved with the FP32 graph
(all INT8; slow regions in float; the same with symmetric int8 activations), what shipped, how many
regions stayed INT8, and the speed the validation measured afterwards (the shipped artifact and the
FP32 artifact timed interleaved again). timm models have random weights (latency only; their eval
images are CIFAR-10 upscaled, so top-1 means nothing). Writes benchmarks/results/placement.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORT = ("int8_ptq", "onnx-int8", "onnx-fp32", "[export/onnx-fp32.yaml,export/onnx-int8.yaml]")
OV = ("openvino_int8", "openvino-int8", "openvino-fp32", "[export/openvino-fp32.yaml,export/openvino-int8.yaml]")
CASES = {  # name -> (recipe, INT8 artifact, its FP32 artifact, exports), extra --set overrides
    "builtin-hybrid": (ORT, ["model.source=builtin:hybrid-cifar10"]),
    "builtin-hybrid-convout": (ORT, ["model.source=builtin:hybrid-cifar10", "quantize.conv_output=true"]),
    "builtin-hybrid-openvino": (OV, ["model.source=builtin:hybrid-cifar10"]),
    "mobilevit_xxs-convout": (ORT, ["model.source=timm:mobilevit_xxs", "quantize.conv_output=true"]),
    "efficientformerv2_s0-convout": (ORT, ["model.source=timm:efficientformerv2_s0", "quantize.conv_output=true"]),
    "levit_128s": (ORT, ["model.source=timm:levit_128s"]),
    "deit_tiny": (ORT, ["model.source=timm:deit_tiny_patch16_224"]),
}


def run_case(name: str, case: tuple, sets: list[str], out: Path) -> dict:
    recipe, int8, fp32, exports = case
    cmd = [sys.executable, "-m", "edgevit.cli", "compress", "--recipe", recipe, "--out", str(out),
           "--set", f"export={exports}", "--set", "validate.eval.num=200", "--set", "validate.devices.0.iters=100"]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.time()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    rep = json.loads((out / "report.json").read_text())
    p = json.loads((out / "placement.json").read_text())["artifacts"][int8]
    rows = {r["name"]: r for r in rep["results"]}
    b1 = {k: rows[k]["latency"][0]["batch1"]["median_ms"] for k in (fp32, int8)}
    tp = {k: rows[k]["latency"][0]["throughput"]["images_per_s"] for k in (fp32, int8)}
    return {"model": rep["model"]["source"], "recipe": recipe, "artifact": int8, "overrides": sets, "exit_code": res.returncode, "status": rep["status"],
            "candidates_ms": p["candidates"], "best_candidate_speedup": p["speedup"], "shipped": p["shipped"],
            "activations": p["activations"], "regions": len(p["regions"]),
            "regions_int8": sum(r["decision"] == "int8" for r in p["regions"]),
            "regions_faster_in_int8": sum(r.get("faster_in") == "int8" for r in p["regions"]),
            "validation_b1_ms": b1, "validation_speed_b1": round(b1[fp32] / b1[int8], 3),
            "validation_throughput_ratio": round(tp[int8] / tp[fp32], 3),
            "size_ratio": round(rows[int8]["size_bytes"] / rows[fp32]["size_bytes"], 3),
            "forms": p["forms"], "seconds": round(time.time() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (case, sets) in CASES.items():
            if args.only and name not in args.only:
                continue
            results[name] = r = run_case(name, case, sets, Path(tmp) / name)
            cands = ", ".join(f"{k} {v:.2f}" for k, v in r["candidates_ms"].items())
            print(f"{name:30s} exit {r['exit_code']} {r['status']:16s} shipped {r['shipped']} "
                  f"({r['regions_int8']}/{r['regions']} regions INT8, {r['activations']}; profile: "
                  f"{r.get('regions_faster_in_int8')} faster in INT8); best candidate "
                  f"{r['best_candidate_speedup']:.2f}x; validation b1 {r['validation_speed_b1']:.2f}x, "
                  f"throughput {r['validation_throughput_ratio']:.2f}x; candidates ms: {cands}", flush=True)
    out = ROOT / "benchmarks" / "results" / "placement.json"
    old = json.loads(out.read_text()) if out.is_file() and args.only else {}
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "results": old.get("results", {}) | results},
                              indent=1) + "\n")


if __name__ == "__main__":
    main()
