"""edgevit INT8 PTQ vs ONNX Runtime's quantize_static and NNCF, side by side, on the built-in models.

    .venv/bin/python benchmarks/ptq_baselines.py [--models hybrid-cifar10 vit-cifar10] [--test DIR]

edgevit runs the quantize: section of the shipped recipe (recipes/int8_ptq.yaml, int8_ptq_vit.yaml).
Every method gets the same 256 calibration images (calibration/builtin-calib) and is evaluated in
ONNX Runtime on the same test images (default: the 10,000 CIFAR-10 test images unpacked from
../shared/data/cifar10 into ~/.cache/edgevit). Latency: batch 1, 2 threads, all variants of a model
timed alternately in one loop (FACTS.md: the only way to get stable ratios on a shared machine).
Writes benchmarks/results/ptq_baselines.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
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
from edgevit.data import Preprocess, open_image_set  # noqa: E402
from edgevit.exporters.onnx import export_onnx  # noqa: E402
from edgevit.exporters.qdq import ort_int8_audit  # noqa: E402
from edgevit.models import load_model  # noqa: E402
from edgevit.quant import quantize  # noqa: E402
from edgevit.recipe import ExportConfig, ModelConfig, load_recipe  # noqa: E402
from edgevit.validate import OrtRunner, collect_logits, topk_accuracy  # noqa: E402
from edgevit.validate.latency import load_average  # noqa: E402

RECIPES = {"hybrid-cifar10": "int8_ptq.yaml", "vit-cifar10": "int8_ptq_vit.yaml"}  # edgevit's config = the shipped one
DEFAULT_TEST = Path.home() / ".cache" / "edgevit" / "cifar10-images" / "test"


def ort_static(fp32: Path, out: Path, calib: np.ndarray, method: str, fmt: str = "QDQ", activations: str = "QUInt8") -> None:
    """ONNX Runtime quantize_static: per-channel int8 weights; QDQ (or QOperator) format, uint8 (or int8) activations."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    pre = out.with_suffix(".pre.onnx")
    cwd = os.getcwd()
    os.chdir(out.parent)  # a failed symbolic shape inference dumps its model (and external data) into the cwd
    try:
        quant_pre_process(str(fp32.resolve()), str(pre.resolve()))
    except Exception:  # symbolic shape inference gives up on some graphs (efficientformerv2): ONNX's then
        quant_pre_process(str(fp32.resolve()), str(pre.resolve()), skip_symbolic_shape=True)
    finally:
        os.chdir(cwd)
    quantize_static(str(pre), str(out), Reader(), quant_format=getattr(QuantFormat, fmt), per_channel=True,
                    activation_type=getattr(QuantType, activations), weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, method))


def nncf_quantize(fp32: Path, out: Path, calib: np.ndarray) -> str | None:
    """NNCF post-training quantization of the ONNX model (ModelType.TRANSFORMER); None if unavailable."""
    try:
        import nncf
        import onnx
    except ImportError as e:
        return f"nncf not installed ({e}); pip install -c constraints.txt -e '.[nncf]'"
    model = onnx.load(str(fp32))
    ds = nncf.Dataset([calib[i:i + 1] for i in range(len(calib))], lambda x: {"input": x})
    q = nncf.quantize(model, ds, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calib))
    onnx.save(q, str(out))
    return None


def alternate_latency(paths: dict[str, Path], x: np.ndarray, threads: int, rounds: int, per_round: int,
                      keep_times: bool = False) -> dict:
    """Median batch-1 latency per variant, the variants interleaved round by round (``keep_times``:
    also ``times_ms``, every run, round after round, ``per_round`` runs each)."""
    return interleaved_latency({k: OrtRunner(p, threads) for k, p in paths.items()}, x, rounds, per_round, keep_times)


def interleaved_latency(runners: dict, x: np.ndarray, rounds: int, per_round: int, keep_times: bool = False) -> dict:
    """:func:`alternate_latency` for callables of any runtime."""
    for r in runners.values():
        for _ in range(5):
            r(x)
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for k, r in runners.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                r(x)
                times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: {"median_ms": float(np.median(v)), "p90_ms": float(np.percentile(v, 90))}
            | ({"times_ms": v} if keep_times else {}) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["hybrid-cifar10", "vit-cifar10"])
    ap.add_argument("--test", type=Path, default=DEFAULT_TEST)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ptq_baselines.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    results = []
    for name in args.models:
        model, info = load_model(ModelConfig(source=f"builtin:{name}"))
        pre = Preprocess(info.input_size, info.mean, info.std)
        calib, _ = open_image_set(ROOT / "calibration" / "builtin-calib").load(pre)
        test = open_image_set(args.test)
        x_test, y_test = test.load(pre, 500)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            paths: dict[str, Path] = {"fp32": tmp / "fp32.onnx"}
            seconds: dict[str, float] = {}
            export_onnx(model, info, ExportConfig(), paths["fp32"], "ptq_baselines")
            t0 = time.time()
            qcfg = load_recipe(ROOT / "recipes" / RECIPES[name]).quantize
            qmodel, _ = quantize(model, qcfg, [torch.from_numpy(calib[i:i + 64]) for i in range(0, len(calib), 64)])
            paths["edgevit-int8"] = tmp / "edgevit.onnx"
            export_onnx(qmodel, info, ExportConfig(precision="int8"), paths["edgevit-int8"], "ptq_baselines")
            seconds["edgevit-int8"] = time.time() - t0
            for method in ("MinMax", "Entropy", "Percentile"):
                key = f"ort-static-{method.lower()}"
                t0 = time.time()
                ort_static(paths["fp32"], tmp / f"{key}.onnx", calib, method)
                seconds[key] = time.time() - t0
                paths[key] = tmp / f"{key}.onnx"
            t0 = time.time()
            why_not = nncf_quantize(paths["fp32"], tmp / "nncf.onnx", calib)
            if why_not is None:
                paths["nncf-int8"] = tmp / "nncf.onnx"
                seconds["nncf-int8"] = time.time() - t0
            else:
                print(f"[{name}] NNCF skipped: {why_not}", file=sys.stderr)
            acc = {}
            for k, p in paths.items():
                logits = collect_logits(OrtRunner(p, args.threads), x_test, 500)
                acc[k] = topk_accuracy(logits, y_test, 1)
            load = [load_average()]
            lat = alternate_latency(paths, x_test[:1], args.threads, args.rounds, 10)
            load.append(load_average())
            audits = {k: ort_int8_audit(p)["int8_nodes"] for k, p in paths.items() if k != "fp32"}
            for k, p in paths.items():
                results.append({"model": name, "method": k, "top1": acc[k], "delta_top1": acc[k] - acc["fp32"],
                                "latency_b1": lat[k], "speedup_vs_fp32": lat["fp32"]["median_ms"] / lat[k]["median_ms"],
                                "size_bytes": p.stat().st_size, "size_ratio": p.stat().st_size / paths["fp32"].stat().st_size,
                                "int8_nodes": audits.get(k, 0), "compress_s": seconds.get(k), "test_images": int(len(x_test)),
                                "threads": args.threads, "load_average": load})
    print("| model | method | top-1 | Δ vs FP32 (pts) | b1 median ms | FP32/this | size | size ratio | INT8 nodes in ORT | compress s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        cs = "" if r["compress_s"] is None else f"{r['compress_s']:.1f}"
        print(f"| {r['model']} | {r['method']} | {100 * r['top1']:.2f} % | {100 * r['delta_top1']:+.2f} | "
              f"{r['latency_b1']['median_ms']:.2f} | {r['speedup_vs_fp32']:.2f}x | {r['size_bytes'] / 1e6:.2f} MB | "
              f"{r['size_ratio']:.2f} | {r['int8_nodes']} | {cs} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
                                    "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
