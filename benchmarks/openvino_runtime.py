"""OpenVINO vs ONNX Runtime on the same models, measured side by side in one run:

    NNCF_EXTENSION_LOAD_TIMEOUT=0 .venv/bin/python benchmarks/openvino_runtime.py [--models hybrid timm:mobilevit_xxs ...]

Per model: edgevit's artifacts from one `compress` run (ONNX FP32 and INT8 QDQ in ONNX Runtime; OpenVINO
IRs FP32, BF16 and INT8 from the same QDQ graph) and the peer, NNCF's post-training quantization for
OpenVINO (``nncf.quantize`` on the FP32 IR, transformer model type, the same calibration images), all
timed in one loop, interleaved round by round, batch 1 on 2 threads; speeds are ratios to ONNX Runtime
FP32 measured in that loop. Top-1 on the evaluation images for the built-in hybrid (trained on
CIFAR-10); the timm models have random weights (no hub), so for them only the agreement of each
variant's top-1 with the FP32 model's is meaningful. NNCF is tried on the IR as exported (dynamic batch)
and, if it fails, on the IR reshaped to batch 1; what happened is printed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from ptq_baselines import interleaved_latency  # noqa: E402

from edgevit.api import compress  # noqa: E402
from edgevit.data import Preprocess, open_image_set  # noqa: E402
from edgevit.runtimes.openvino import OpenVINORunner, _compiled, layer_precisions  # noqa: E402
from edgevit.validate.latency import load_average  # noqa: E402
from edgevit.validate.runners import OrtRunner  # noqa: E402

SOURCES = {"hybrid": "builtin:hybrid-cifar10", "timm:mobilevit_xxs": "timm:mobilevit_xxs",
           "timm:efficientformerv2_s0": "timm:efficientformerv2_s0", "timm:deit_tiny": "timm:deit_tiny_patch16_224"}
SIZES = {"timm:mobilevit_xxs": 256, "timm:efficientformerv2_s0": 224, "timm:deit_tiny": 224}
EXPORTS = ["export/onnx-fp32.yaml", "export/onnx-int8.yaml", "export/openvino-fp32.yaml", "export/openvino-bf16.yaml",
           "export/openvino-int8.yaml"]


def nncf_int8(xml: Path, calib: np.ndarray, out: Path, default_mode: bool = False) -> tuple[Path | None, str]:
    """NNCF's INT8 IR of the FP32 IR (transformer model type; ``default_mode``: then NNCF's default model
    type on the dynamic-batch IR before the batch-1 reshape); (path, how) or (None, why it failed)."""
    import nncf
    import openvino as ov

    notes = []
    tries = [(False, "transformer")] + ([(False, "default")] if default_mode else []) + [(True, "transformer")]
    for static, mode in tries:
        model = ov.Core().read_model(str(xml))
        if static:
            model.reshape([1, *calib.shape[1:]])
        data = nncf.Dataset([calib[i:i + 1] for i in range(len(calib))])
        try:
            q = nncf.quantize(model, data, subset_size=len(calib),
                              model_type=nncf.ModelType.TRANSFORMER if mode == "transformer" else None)
            path = out / f"nncf-int8{'-b1' if static else ''}{'-default' if mode == 'default' else ''}.xml"
            ov.save_model(q, str(path), compress_to_fp16=False)
            _compiled(path, "CPU", "f32", 2)  # compiles?
            return path, notes + [f"NNCF {mode} mode on the {'batch-1 reshaped' if static else 'dynamic-batch'} "
                                  "IR: ok"]
        except Exception as e:  # report what NNCF or the compiler said, then try the static shape
            lines = str(e).strip().splitlines() or [""]
            why = next((ln for ln in lines if "HAS THROWN" in ln or "Check " in ln), lines[0])  # the specific line
            notes.append(f"NNCF {mode} mode on the {'batch-1 reshaped' if static else 'dynamic-batch'} IR "
                         f"failed: {type(e).__name__}: {why.strip()[:300]}")
            traceback.print_exc(limit=1)
    return None, notes


def run_model(key: str, work: Path, args) -> dict:
    src = SOURCES[key]
    overrides = [f"model.source={src}", f"export={json.dumps(EXPORTS)}", "validate.devices=[]",
                 f"validate.eval.num={args.eval_images if key == 'hybrid' else args.eval_images_random}",
                 f"calibration.num={args.calib}"]
    if key in SIZES:
        overrides += [f"model.input_size={SIZES[key]}", "model.num_classes=10",
                      "model.labels=[airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck]"]
    t0 = time.time()
    res = compress("int8_ptq", overrides, out=work / "run", overwrite=True)
    rep = res.report
    print(f"{key}: compress took {time.time() - t0:.0f} s, status {rep['status']}", flush=True)
    run = work / "run"
    pre = Preprocess(**{k: rep["model"]["preprocessing"][k] for k in ("input_size", "mean", "std", "crop_pct",
                                                                       "interpolation")})
    calib = open_image_set(ROOT / "calibration" / "builtin-calib", args.calib, 0).load(pre)[0]
    nncf_path, nncf_notes = nncf_int8(run / "openvino-fp32.xml", calib, work)
    runners = {"ORT FP32": OrtRunner(run / "onnx-fp32.onnx", 2), "ORT INT8 (edgevit)": OrtRunner(run / "onnx-int8.onnx", 2),
               "OV FP32": OpenVINORunner(run / "openvino-fp32.xml", "CPU", 2),
               "OV BF16": OpenVINORunner(run / "openvino-bf16.xml", "CPU", 2),
               "OV INT8 (edgevit)": OpenVINORunner(run / "openvino-int8.xml", "CPU", 2)}
    if nncf_path:
        runners["OV INT8 (NNCF)"] = OpenVINORunner(nncf_path, "CPU", 2, hint="f32")
    x_eval, y_eval = open_image_set(rep["data"]["eval"]["path"], rep["data"]["eval"]["images"], 0).load(pre)
    ref = np.concatenate([runners["ORT FP32"](x_eval[i:i + 50]) for i in range(0, len(x_eval), 50)]).argmax(1)
    out = {"model": key, "source": src, "input_size": pre.input_size, "eval_images": int(len(x_eval)),
           "nncf": nncf_notes, "variants": {}}
    load_before = load_average()
    lat = interleaved_latency(runners, x_eval[:1], args.rounds, args.per_round)
    load_after = load_average()
    files = {"ORT FP32": [run / "onnx-fp32.onnx"], "ORT INT8 (edgevit)": [run / "onnx-int8.onnx"],
             "OV FP32": [run / "openvino-fp32.xml", run / "openvino-fp32.bin"],
             "OV BF16": [run / "openvino-bf16.xml", run / "openvino-bf16.bin"],
             "OV INT8 (edgevit)": [run / "openvino-int8.xml", run / "openvino-int8.bin"]}
    if nncf_path:
        files["OV INT8 (NNCF)"] = [nncf_path, nncf_path.with_suffix(".bin")]
    for name, r in runners.items():
        bs = 1 if name == "OV INT8 (NNCF)" and nncf_path.stem.endswith("b1") else 50  # a batch-1 reshaped IR
        pred = np.concatenate([r(x_eval[i:i + bs]) for i in range(0, len(x_eval), bs)]).argmax(1)
        v = {"top1": float((pred == y_eval).mean()) if key == "hybrid" else None,
             "agreement_with_fp32": float((pred == ref).mean()), **lat[name],
             "speed_vs_ort_fp32": lat["ORT FP32"]["median_ms"] / lat[name]["median_ms"],
             "size_bytes": sum(f.stat().st_size for f in files[name])}
        if name.startswith("OV"):
            v["int8_layers"] = layer_precisions(r.compiled)
        out["variants"][name] = v
    out["load_average"] = [load_before, load_after]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(SOURCES), choices=list(SOURCES))
    ap.add_argument("--eval-images", type=int, default=1000, help="hybrid: labeled evaluation images")
    ap.add_argument("--eval-images-random", type=int, default=200, help="random-weight timm models: images for "
                    "agreement with FP32")
    ap.add_argument("--calib", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--per-round", type=int, default=10)
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgevit-openvino-bench"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "openvino.json")
    args = ap.parse_args()
    import openvino

    results = []
    for key in args.models:
        results.append(run_model(key, args.work / key.replace(":", "_"), args))
        args.out.write_text(json.dumps({"openvino": openvino.__version__, "results": results}, indent=1) + "\n")
    print(f"\nOpenVINO {openvino.__version__}; batch 1, 2 threads, {args.rounds} rounds x {args.per_round} runs "
          "interleaved; speed = ORT FP32 median / variant median\n")
    print("| model | variant | top-1 | agreement with FP32 | b1 median ms | speed vs ORT FP32 | size MB | "
          "OV compute layers |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        for name, v in r["variants"].items():
            top1 = f"{100 * v['top1']:.2f} %" if v["top1"] is not None else "n/a (random weights)"
            layers = ", ".join(f"{n} {p}" for p, n in v.get("int8_layers", {}).items()) or ""
            print(f"| {r['model']} ({r['input_size']} px) | {name} | {top1} | {100 * v['agreement_with_fp32']:.1f} % | "
                  f"{v['median_ms']:.2f} | {v['speed_vs_ort_fp32']:.2f}x | {v['size_bytes'] / 1e6:.2f} | {layers} |")
        for note in r["nncf"]:
            print(f"- {r['model']}: {note}")


if __name__ == "__main__":
    main()
