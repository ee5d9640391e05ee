"""INT8 vs FP32 latency in ONNX Runtime at deployment resolution (random weights: latency only).

    .venv/bin/python benchmarks/int8_latency.py [--models timm:deit_tiny_patch16_224 ...] [--size 224] [--profile]

For each model: FP32 ONNX, edgevit INT8 (Linear/Conv inputs + attention operands), edgevit INT8
with Conv outputs quantized too (so ORT can use QLinearConv), and ORT quantize_static (QDQ, uint8
activations, MinMax). Calibration uses 8 random images: the point is speed, not accuracy. Batch 1;
the variants are timed alternately in one loop; medians and FP32/variant ratios are printed, with
file sizes. ``--profile`` adds ORT's per-op-type time (profiling run, batch 1) for every variant:
where the time goes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from ptq_baselines import alternate_latency, ort_static  # noqa: E402

from edgevit.exporters.onnx import export_onnx  # noqa: E402
from edgevit.exporters.qdq import ort_int8_audit  # noqa: E402
from edgevit.models import load_model  # noqa: E402
from edgevit.quant import QuantConfig, quantize  # noqa: E402
from edgevit.recipe import ExportConfig, ModelConfig  # noqa: E402
from edgevit.validate.latency import load_average  # noqa: E402


def op_profile(path: Path, x: np.ndarray, threads: int, runs: int = 20) -> dict[str, float]:
    """Mean milliseconds per inference spent in each op type (ORT profiler, after warm-up)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    so.enable_profiling = True
    so.profile_file_prefix = str(path.with_suffix(""))
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(runs):
        sess.run(None, feed)
    trace = sess.end_profiling()
    events = json.loads(Path(trace).read_text())
    os.remove(trace)
    per_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"]["op_name"]
            per_op[op] = per_op.get(op, 0.0) + e["dur"] / 1e3 / runs
    return dict(sorted(per_op.items(), key=lambda kv: -kv[1]))


def print_profiles(src: str, profiles: dict[str, dict[str, float]], top: int = 10) -> None:
    ops = sorted({op for p in profiles.values() for op in p}, key=lambda op: -max(p.get(op, 0) for p in profiles.values()))
    print(f"\nPer-op time, ms per inference ({src}; ORT profiler, batch 1):\n")
    print("| op | " + " | ".join(profiles) + " |")
    print("|---|" + "---|" * len(profiles))
    for op in ops[:top]:
        print(f"| {op} | " + " | ".join(f"{p.get(op, 0):.2f}" for p in profiles.values()) + " |")
    rest = ops[top:]
    print("| other | " + " | ".join(f"{sum(p.get(op, 0) for op in rest):.2f}" for p in profiles.values()) + " |")
    print("| **total** | " + " | ".join(f"{sum(p.values()):.2f}" for p in profiles.values()) + " |\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["timm:deit_tiny_patch16_224", "timm:mobilevit_xxs",
                                                   "timm:efficientformerv2_s0"])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--profile", action="store_true", help="per-op-type time of every variant (ORT profiler)")
    args = ap.parse_args()
    torch.manual_seed(0)
    print("| model | variant | INT8 nodes in ORT | float compute nodes | b1 median ms | FP32/variant | size | size ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for src in args.models:
        model, info = load_model(ModelConfig(source=src, input_size=args.size))
        x = torch.randn(8, 3, args.size, args.size)
        with tempfile.TemporaryDirectory() as tmp:
            paths = {"fp32": Path(tmp) / "fp32.onnx"}
            export_onnx(model, info, ExportConfig(), paths["fp32"], "int8_latency")
            for tag, cfg in (("edgevit-int8", QuantConfig()), ("edgevit-int8-convout", QuantConfig(conv_output=True))):
                qmodel, _ = quantize(model, cfg, [x])
                paths[tag] = Path(tmp) / f"{tag}.onnx"
                export_onnx(qmodel, info, ExportConfig(precision="int8"), paths[tag], "int8_latency")
            paths["ort-static-minmax"] = Path(tmp) / "ort.onnx"
            ort_static(paths["fp32"], paths["ort-static-minmax"], x.numpy(), "MinMax")
            load = load_average()
            lat = alternate_latency(paths, x[:1].numpy(), args.threads, args.rounds, 5)
            for k, p in paths.items():
                audit = ort_int8_audit(p)
                print(f"| {src} @{args.size} | {k} | {audit['int8_nodes']} | {audit['float_nodes']} | "
                      f"{lat[k]['median_ms']:.2f} | {lat['fp32']['median_ms'] / lat[k]['median_ms']:.2f}x | "
                      f"{p.stat().st_size / 1e6:.2f} MB | {p.stat().st_size / paths['fp32'].stat().st_size:.2f} |")
            print(f"<!-- load average {load} -> {load_average()} -->")
            if args.profile:
                print_profiles(src, {k: op_profile(p, x[:1].numpy(), args.threads) for k, p in paths.items()})


if __name__ == "__main__":
    main()
