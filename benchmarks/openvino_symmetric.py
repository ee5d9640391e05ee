"""Symmetric against asymmetric int8 activations in OpenVINO, on the trained built-in models:

    .venv/bin/python benchmarks/openvino_symmetric.py [--models hybrid vit] [--test-images 10000]

Per model and activation form (``quantize.activations.symmetric`` false / true; ``quantize.placement: all``)
one ``edgevit compress --recipe int8_ptq`` run writes the INT8 QDQ ONNX graph. Each graph then runs on the
CIFAR-10 test images in ONNX Runtime (which runs it as simulated: the runs' own agreement checks) and in
OpenVINO (f32 inference precision, 2 threads), as written and after ``quantize_concat_inputs`` (the graph
edgevit's OpenVINO export converts: each quantized Concat joins integers). Per OpenVINO form: top-1, top-1
agreement and logit SQNR against ONNX Runtime on the same graph, and its batch-1 time, all forms timed
interleaved with ONNX Runtime FP32 (40 rounds of 5 calls). Writes benchmarks/results/openvino_symmetric.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from edgevit.api import compress  # noqa: E402
from edgevit.data import Preprocess, open_image_set  # noqa: E402
from edgevit.exporters.qdq import quantize_concat_inputs  # noqa: E402
from edgevit.runtimes.openvino import OpenVINORunner  # noqa: E402
from edgevit.validate.accuracy import compare_logits  # noqa: E402
from edgevit.validate.latency import cpu_facts, load_average  # noqa: E402
from edgevit.validate.profiling import interleaved_medians  # noqa: E402
from edgevit.validate.runners import OrtRunner  # noqa: E402

MODELS = {"hybrid": "builtin:hybrid-cifar10", "vit": "builtin:vit-cifar10"}
TEST = Path.home() / ".cache" / "edgevit" / "cifar10-images" / "test"


def logits(run, x: np.ndarray, batch: int = 500) -> np.ndarray:
    return np.concatenate([run(x[i:i + batch]) for i in range(0, len(x), batch)])


def run_model(name: str, work: Path, args) -> dict:
    import onnx

    out: dict = {"model": name, "source": MODELS[name], "forms": {}}
    runners, x = {}, None
    for form in ("asymmetric", "symmetric"):
        run = work / form
        res = compress("int8_ptq", [f"model.source={MODELS[name]}", "quantize.placement=all",
                                    f"quantize.activations.symmetric={str(form == 'symmetric').lower()}",
                                    "export=[export/onnx-fp32.yaml,export/onnx-int8.yaml]", "validate.eval.num=200"],
                       out=run, overwrite=True)
        if x is None:
            pp = res.report["model"]["preprocessing"]
            pre = Preprocess(**{k: pp[k] for k in ("input_size", "mean", "std", "crop_pct", "interpolation")})
            x, y = open_image_set(args.test, args.test_images, 0).load(pre)
            runners["ORT FP32"] = OrtRunner(run / "onnx-fp32.onnx", args.threads)
            out["fp32_top1"] = float((logits(runners["ORT FP32"], x).argmax(1) == y).mean())
        graph = run / "onnx-int8.onnx"
        proto = onnx.load(str(graph))
        moved = quantize_concat_inputs(proto)
        onnx.save(proto, str(run / "onnx-int8-integer-concat.onnx"))
        ort = logits(OrtRunner(graph, args.threads), x)
        cell = {"ort_top1": float((ort.argmax(1) == y).mean()), "concat_quantizers_moved": moved}
        for variant, path in (("as written", graph), ("integer concat", run / "onnx-int8-integer-concat.onnx")):
            runner = OpenVINORunner(path, "CPU", args.threads, hint="f32")
            got = logits(runner, x)
            c = compare_logits(got, ort)
            cell[variant] = {"top1": float((got.argmax(1) == y).mean()), "agreement_with_ort": c["top1_agreement"],
                             "sqnr_db_vs_ort": round(c["sqnr_db"], 2)}
            runners[f"OpenVINO {form}, {variant}"] = runner
        out["forms"][form] = cell
        print(f"[{name}] {form}: {json.dumps(cell)}", flush=True)
    out["load_before"] = load_average()
    med = interleaved_medians(runners, np.ascontiguousarray(x[:1]), args.rounds, warmup=3, seed=1, per_round=5)
    out["b1_ms"] = {k: round(v, 4) for k, v in med.items()}
    out["b1_speed_vs_ort_fp32"] = {k: round(med["ORT FP32"] / v, 3) for k, v in med.items()}
    out["load_after"] = load_average()
    print(f"[{name}] batch 1: {json.dumps(out['b1_speed_vs_ort_fp32'])}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--test", type=Path, default=TEST)
    ap.add_argument("--test-images", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "openvino_symmetric.json")
    args = ap.parse_args()
    import openvino

    results = []
    for name in args.models:
        with tempfile.TemporaryDirectory(prefix=f"edgevit-ovsym-{name}-") as tmp:
            results.append(run_model(name, Path(tmp), args))
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "openvino": openvino.__version__,
                                    "cpu": cpu_facts(), "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
