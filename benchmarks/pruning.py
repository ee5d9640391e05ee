"""Pruning side by side on the built-in models: 2:4 magnitude vs second-order (SparseGPT), with and
without INT8; block pruning at 30 / 50 %; structured pruning of 30 % of the MLP hidden units with its
ONNX Runtime CPU latency against the dense model, measured interleaved in one run.

    .venv/bin/python benchmarks/pruning.py [--models vit-cifar10 hybrid-cifar10] [--limit N] [--rounds 20]
                                          [--methods "layers that pay" reconstruction]

Top-1 on the CIFAR-10 test images (default: all 10,000, unpacked from ../shared/data/cifar10 into
~/.cache/edgevit) of the PyTorch model (INT8: the fake-quant simulation, which the exported QDQ ONNX
follows; the recipes' checks compare the two). Calibration: the shipped images (calibration/
builtin-calib; pruning uses the first 128). INT8 = W8A8, per-channel symmetric weights, percentile
activations (recipes/int8_ptq.yaml). Latency: batch 1, 2 threads, ONNX Runtime CPU, FP32 and INT8
exports of the dense and the shrunk model, interleaved round by round, medians.
Writes benchmarks/results/pruning.json and prints Markdown tables.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from edgevit.data import Preprocess, open_image_set  # noqa: E402
from edgevit.exporters.onnx import export_onnx  # noqa: E402
from edgevit.models import load_model  # noqa: E402
from edgevit.prune import PruneConfig, prune  # noqa: E402
from edgevit.quant import QuantConfig, quantize  # noqa: E402
from edgevit.recipe import ExportConfig, ModelConfig  # noqa: E402
from edgevit.validate import topk_accuracy  # noqa: E402
from ptq_baselines import alternate_latency  # noqa: E402

DEFAULT_TEST = Path.home() / ".cache" / "edgevit" / "cifar10-images" / "test"
INT8 = QuantConfig(activations={"method": "percentile", "percentile": 99.999})
METHODS = {
    "2:4 magnitude": {"nm": {"criterion": "magnitude"}},
    "2:4 SparseGPT": {"nm": {"criterion": "sparsegpt"}},
    "block 16x16 30 % (OBS, distortion allocation)": {"block": {"sparsity": 0.3}},
    "block 16x16 30 % (OBS, uniform allocation)": {"block": {"sparsity": 0.3, "allocation": "uniform"}},
    "block 16x16 50 % (OBS, distortion allocation)": {"block": {"sparsity": 0.5}},
    "structured 30 % MLP hidden (OBS refit)": {"structured": {"mlp_hidden": 0.3}},
    "structured 30 % MLP hidden (magnitude)": {"structured": {"mlp_hidden": 0.3, "criterion": "magnitude"}},
    "structured 30 % MLP hidden + 25 % heads (OBS refit)": {"structured": {"mlp_hidden": 0.3, "heads": 0.25}},
    "structured 30 % conv hidden channels (OBS refit)": {"structured": {"mlp_hidden": 0.0, "conv_hidden": 0.3}},
    "2:4 SparseGPT + block reconstruction": {"nm": {"criterion": "sparsegpt"}, "reconstruct": {}},
    "2:4 SparseGPT, layers that pay (1 % disagreement)": {"nm": {"criterion": "sparsegpt", "max_disagreement": 1.0}},
    "2:4 SparseGPT, layers that pay (3 % disagreement)": {"nm": {"criterion": "sparsegpt", "max_disagreement": 3.0}},
    "2:4 SparseGPT, layers that pay (3 %) + block reconstruction": {
        "nm": {"criterion": "sparsegpt", "max_disagreement": 3.0}, "reconstruct": {}},
}
WITH_INT8 = {"2:4 magnitude", "2:4 SparseGPT", "block 16x16 30 % (OBS, distortion allocation)",
             "structured 30 % MLP hidden (OBS refit)", "2:4 SparseGPT + block reconstruction",
             "2:4 SparseGPT, layers that pay (3 %) + block reconstruction"}
TIMED = {"structured 30 % MLP hidden (OBS refit)", "structured 30 % MLP hidden + 25 % heads (OBS refit)",
         "structured 30 % conv hidden channels (OBS refit)"}


@torch.no_grad()
def top1(model, x: np.ndarray, y: np.ndarray, batch: int = 500) -> float:
    logits = np.concatenate([model(torch.from_numpy(x[i:i + batch])).numpy() for i in range(0, len(x), batch)])
    return topk_accuracy(logits, y, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["vit-cifar10", "hybrid-cifar10"])
    ap.add_argument("--test", type=Path, default=DEFAULT_TEST)
    ap.add_argument("--limit", type=int, default=None, help="evaluate on this many test images (default: all)")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--methods", nargs="+", default=None, help="only these methods (substring match); the other "
                    "rows of --out are kept")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pruning.json")
    args = ap.parse_args()
    results = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv), "rows": [], "latency": []}
    methods = {k: v for k, v in METHODS.items() if not args.methods or any(m in k for m in args.methods)}
    if args.methods and args.out.is_file():  # rerun some rows, keep the others (each row has its date)
        old = json.loads(args.out.read_text())
        def rerun(r):
            return r["model"] in args.models and (r["method"] in methods or r["method"] == "dense")
        results["rows"] = [r | {"date": r.get("date", old.get("date"))} for r in old["rows"] if not rerun(r)]
        results["latency"] = [e for e in old["latency"] if not rerun(e)]
    for name in args.models:
        torch.manual_seed(0)
        model, info = load_model(ModelConfig(source=f"builtin:{name}"))
        pre = Preprocess(info.input_size, info.mean, info.std)
        calib, _ = open_image_set(ROOT / "calibration" / "builtin-calib").load(pre)
        calib = torch.from_numpy(calib)
        x, y = open_image_set(args.test, num=args.limit, seed=0).load(pre, 500)
        fp32 = top1(model, x, y)
        base = {"model": name, "images": int(len(y))}
        results["rows"].append(base | {"method": "dense", "top1": fp32, "int8_top1": top1(quantize(
            model, INT8, [calib])[0], x, y), "date": results["date"]})
        print(f"[{name}] dense {100 * fp32:.2f} %", file=sys.stderr, flush=True)
        for method, spec in methods.items():
            pruned = copy.deepcopy(model)
            t0 = time.time()
            try:
                rep = prune(pruned, PruneConfig(**spec), calib)
            except ValueError as e:  # e.g. no conv MLPs in a plain ViT
                print(f"[{name}] {method}: not applicable ({e})", file=sys.stderr, flush=True)
                continue
            seconds = time.time() - t0
            row = base | {"method": method, "top1": top1(pruned, x, y), "prune_s": round(seconds, 1),
                          "params": rep["summary"]["params"], "weight_sparsity": rep["summary"]["weight_sparsity"],
                          "layers": len(rep.get("layers", rep.get("modules", []))), "skipped": len(rep.get("skipped", {})),
                          "date": results["date"]}
            if method in WITH_INT8:
                row["int8_top1"] = top1(quantize(pruned, INT8, [calib])[0], x, y)
            results["rows"].append(row)
            print(f"[{name}] {method}: {100 * row['top1']:.2f} % ({seconds:.1f} s)"
                  + (f", +INT8 {100 * row['int8_top1']:.2f} %" if "int8_top1" in row else ""), file=sys.stderr, flush=True)
            if method in TIMED:
                results["latency"].append({"model": name, "method": method} | latency(model, pruned, info, calib, args))
    print_tables(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")


def latency(dense, pruned, info, calib: torch.Tensor, args) -> dict:
    """FP32 and INT8 ONNX of the dense and the shrunk model, batch-1 ORT latency interleaved."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for tag, m in (("dense", dense), ("pruned", pruned)):
            paths[f"{tag} fp32"] = Path(tmp) / f"{tag}-fp32.onnx"
            export_onnx(m, info, ExportConfig(precision="fp32"), paths[f"{tag} fp32"], "pruning")
            paths[f"{tag} int8"] = Path(tmp) / f"{tag}-int8.onnx"
            export_onnx(quantize(m, INT8, [calib])[0], info, ExportConfig(precision="int8"), paths[f"{tag} int8"],
                        "pruning")
        load = os.getloadavg()[0]
        lat = alternate_latency(paths, calib[:1].numpy(), args.threads, args.rounds, 10)
        sizes = {k: p.stat().st_size for k, p in paths.items()}
    return {"latency": lat, "size_bytes": sizes, "load_average": [load, os.getloadavg()[0]],
            "speedup_fp32": lat["dense fp32"]["median_ms"] / lat["pruned fp32"]["median_ms"],
            "speedup_int8": lat["dense int8"]["median_ms"] / lat["pruned int8"]["median_ms"]}


def print_tables(r: dict) -> None:
    print("| model | method | top-1 (Δ) | + INT8 top-1 (Δ) | weights zero | params | layers (left dense) | prune time |")
    print("|---|---|---|---|---|---|---|---|")
    for row in r["rows"]:
        dense = next(d for d in r["rows"] if d["model"] == row["model"] and d["method"] == "dense")

        def cell(key):
            if key not in row:
                return ""
            return f"{100 * row[key]:.2f} % ({100 * (row[key] - dense['top1']):+.2f})"
        print(f"| {row['model']} | {row['method']} | {cell('top1')} | {cell('int8_top1')} | "
              f"{100 * row.get('weight_sparsity', 0):.1f} % | {row.get('params', '')} | "
              f"{row.get('layers', '')} ({row.get('skipped', '')}) | {row.get('prune_s', '')} s |")
    print("\n| model | pruning | ORT FP32 b1 dense / pruned (ms) | speedup | ORT INT8 b1 dense / pruned (ms) | speedup | load |")
    print("|---|---|---|---|---|---|---|")
    for e in r["latency"]:
        lat = e["latency"]
        print(f"| {e['model']} | {e['method']} | {lat['dense fp32']['median_ms']:.2f} / {lat['pruned fp32']['median_ms']:.2f} | "
              f"{e['speedup_fp32']:.2f}x | {lat['dense int8']['median_ms']:.2f} / {lat['pruned int8']['median_ms']:.2f} | "
              f"{e['speedup_int8']:.2f}x | {e['load_average'][0]:.2f}-{e['load_average'][1]:.2f} |")


if __name__ == "__main__":
    main()
