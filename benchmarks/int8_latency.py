"""INT8 vs FP32 latency in ONNX Runtime at deployment resolution (random weights: latency only).

    .venv/bin/python benchmarks/int8_latency.py --models timm:deit_tiny_patch16_224 timm:mobilevit_xxs --size 224

For each model: FP32 ONNX, edgevit INT8 (Linear/Conv inputs + attention operands), edgevit INT8
with Conv outputs quantized too (so ORT can use QLinearConv), and ORT quantize_static (QDQ, uint8
activations, MinMax). Calibration uses 8 random images: the point is speed, not accuracy. Batch 1;
the variants are timed alternately in one loop; medians and FP32/variant ratios are printed.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from ptq_baselines import alternate_latency, ort_static  # noqa: E402

from edgevit.export.onnx import export_onnx  # noqa: E402
from edgevit.export.qdq import ort_int8_audit  # noqa: E402
from edgevit.models import load_model  # noqa: E402
from edgevit.quant import QuantConfig, quantize  # noqa: E402
from edgevit.recipe import ExportConfig, ModelConfig  # noqa: E402
from edgevit.validate.latency import load_average  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["timm:deit_tiny_patch16_224", "timm:mobilevit_xxs"])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    torch.manual_seed(0)
    print("| model | variant | INT8 nodes in ORT | float compute nodes | b1 median ms | FP32/variant |")
    print("|---|---|---|---|---|---|")
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
                      f"{lat[k]['median_ms']:.2f} | {lat['fp32']['median_ms'] / lat[k]['median_ms']:.2f}x |")
            print(f"<!-- load average {load} -> {load_average()} -->")


if __name__ == "__main__":
    main()
