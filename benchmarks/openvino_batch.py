"""OpenVINO IRs with a fixed batch against the same IRs with a dynamic batch, per model and precision:

    .venv/bin/python benchmarks/openvino_batch.py [--models hybrid mobilevit_xxs deit_tiny ...]

Per model one ``edgevit compress --recipe openvino_int8`` run writes the FP32 ONNX and the OpenVINO FP32,
BF16 and INT8 IRs with ``batch: null`` (dynamic). Each IR is then compiled twice on 2 threads, as written
and reshaped to batch 1 (what ``batch: 1`` ships), and both forms are timed at batch 1 in one loop,
interleaved in a shuffled order each round, with ONNX Runtime FP32 on the FP32 ONNX as the yardstick.
Closeness: logit SQNR of each form against ONNX Runtime on the IR's own ONNX graph (FP32 for FP32/BF16;
for INT8 the run's INT8 QDQ graph) on 8 calibration images, the rule ``fixed_batch`` applies at export.
Writes benchmarks/results/openvino_batch.json and prints the table.
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
from edgevit.runtimes.openvino import _compiled, with_batch  # noqa: E402
from edgevit.validate.accuracy import compare_logits  # noqa: E402
from edgevit.validate.latency import cpu_facts, load_average  # noqa: E402
from edgevit.validate.profiling import interleaved_medians  # noqa: E402
from edgevit.validate.runners import OrtRunner  # noqa: E402

MODELS = {  # name -> source, input size (None: the model's own), quantize conv outputs
    "hybrid": ("builtin:hybrid-cifar10", None, False),
    "vit": ("builtin:vit-cifar10", None, False),
    "mobilevit_xxs": ("timm:mobilevit_xxs", 256, True),
    "efficientformerv2_s0": ("timm:efficientformerv2_s0", 224, True),
    "levit_128s": ("timm:levit_128s", 224, False),
    "deit_tiny": ("timm:deit_tiny_patch16_224", 224, False),
}
CIFAR = "model.labels=[airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck]"


def run_model(name: str, work: Path, args) -> dict:
    src, size, conv_output = MODELS[name]
    irs = [{"format": "openvino", "name": f"openvino-{p}", "precision": p, "batch": None}
           for p in ("fp32", "bf16", "int8")]
    exports = [{"format": "onnx", "name": "onnx-fp32"}, {"format": "onnx", "name": "onnx-int8", "precision": "int8"}]
    sets = [f"model.source={src}", f"export={json.dumps(exports + irs)}", "quantize.when_slower=int8",
            "quantize.placement=all", f"quantize.conv_output={str(conv_output).lower()}", "validate.eval.num=50",
            f"calibration.num={args.calib}", "validate.devices=[]"]
    if size:
        sets += [f"model.input_size={size}", "model.num_classes=10", CIFAR]
    rep = compress("openvino_int8", sets, out=work / "run", overwrite=True).report
    run = work / "run"
    pp = rep["model"]["preprocessing"]
    pre = Preprocess(**{k: pp[k] for k in ("input_size", "mean", "std", "crop_pct", "interpolation")})
    calib = open_image_set(ROOT / "calibration" / "builtin-calib", 8, 0).load(pre)[0]
    import openvino as ov

    runners = {"ORT FP32": OrtRunner(run / "onnx-fp32.onnx", args.threads)}
    out = {"model": name, "source": src, "input_size": pre.input_size, "irs": {}}
    for p in ("fp32", "bf16", "int8"):
        model = ov.Core().read_model(str(run / f"openvino-{p}.xml"))
        graph = OrtRunner(run / f"onnx-{'int8' if p == 'int8' else 'fp32'}.onnx", args.threads)
        ref = np.concatenate([graph(calib[i:i + 1]) for i in range(len(calib))])
        row = {}
        for form, m in (("dynamic", model), ("fixed", with_batch(model, 1))):
            compiled = _compiled(m, "CPU", None, args.threads)
            request, output = compiled.create_infer_request(), compiled.output(0)
            runners[f"{p} {form}"] = lambda x, r=request, o=output: r.infer({0: x})[o]
            lg = np.concatenate([runners[f"{p} {form}"](calib[i:i + 1]) for i in range(len(calib))])
            row[f"{form}_sqnr_db"] = round(min(compare_logits(lg, ref)["sqnr_db"], 200.0), 1)
        out["irs"][p] = row
    x = np.ascontiguousarray(calib[:1])
    out["load_before"] = load_average()
    med = interleaved_medians(runners, x, args.rounds, warmup=5)
    out["load_after"] = load_average()
    out["ort_fp32_ms"] = round(med["ORT FP32"], 3)
    for p, row in out["irs"].items():
        for form in ("dynamic", "fixed"):
            row[f"{form}_ms"] = round(med[f"{p} {form}"], 3)
            row[f"{form}_speed_vs_ort_fp32"] = round(med["ORT FP32"] / med[f"{p} {form}"], 3)
        row["fixed_over_dynamic"] = round(med[f"{p} dynamic"] / med[f"{p} fixed"], 3)
    return out


def table(results: list[dict]) -> str:
    lines = ["| model (ORT FP32 b1) | IR | dynamic b1 ms (vs ORT FP32) | fixed b1 ms (vs ORT FP32) | fixed / dynamic | "
             "SQNR vs its ONNX graph: dynamic / fixed |", "|---|---|---|---|---|---|"]
    for r in results:
        for p, row in r["irs"].items():
            lines.append(f"| {r['model']} {r['input_size']} px ({r['ort_fp32_ms']:.2f} ms) | {p} | "
                         f"{row['dynamic_ms']:.2f} ({row['dynamic_speed_vs_ort_fp32']:.2f}x) | {row['fixed_ms']:.2f} "
                         f"({row['fixed_speed_vs_ort_fp32']:.2f}x) | **{row['fixed_over_dynamic']:.2f}x** | "
                         f"{row['dynamic_sqnr_db']:.1f} / {row['fixed_sqnr_db']:.1f} dB |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["hybrid", "mobilevit_xxs", "deit_tiny"], choices=list(MODELS))
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "openvino_batch.json")
    args = ap.parse_args()
    import openvino

    results = []
    for name in args.models:
        with tempfile.TemporaryDirectory(prefix=f"edgevit-ovbatch-{name}-") as tmp:
            results.append(run_model(name, Path(tmp), args))
        print(table(results[-1:]), flush=True)
        args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "openvino": openvino.__version__,
                                        "cpu": cpu_facts(), "results": results}, indent=1) + "\n")
    print("\n" + table(results))


if __name__ == "__main__":
    main()
