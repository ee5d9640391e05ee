"""What 8-bit weights cost on an x86 CPU without VNNI, and what 7-bit weights (``quantize.weights.overflow_fix``)
give back:

    .venv/bin/python benchmarks/int8_saturation.py [--models hybrid vit efficientvit] [--images 10000]

Per built-in model and per weight width (``overflow_fix: off`` = 8 bits, ``on`` = 7 bits), one ``edgevit compress
--recipe int8_ptq`` (``placement: all``: every quantizer; exports ``onnx-int8``, ``onnx-int8-tensorrt`` and
``openvino-int8``; no timing) writes the files; then each file runs on the evaluation images (the CIFAR-10 test
images in ``~/.cache/edgevit/cifar10-images/test`` when there, else the shipped 1,000):
- in ONNX Runtime as deployed (its integer kernels) and without them (``session.disable_quant_qdq``: each
  quantized op as DequantizeLinear -> float op -> QuantizeLinear, exact int32 sums, what the simulation computes);
- the OpenVINO IR in OpenVINO.
Printed: top-1 of each, and top-1 agreement / max logit difference of each against the exact ONNX Runtime run
of the same file. On a CPU with VNNI the integer kernels add in 32 bits and every row agrees; without, the pairs of
uint8 x int8 products are added in 16 bits and saturate. Writes benchmarks/results/int8_saturation.json.
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
from edgevit.data.images import Preprocess, open_image_set  # noqa: E402
from edgevit.models import load_model  # noqa: E402
from edgevit.recipe import ModelConfig  # noqa: E402
from edgevit.runtimes.openvino import OpenVINORunner  # noqa: E402
from edgevit.validate.accuracy import collect_logits  # noqa: E402
from edgevit.validate.latency import cpu_facts, int8_dot_saturates  # noqa: E402
from edgevit.validate.runners import OrtRunner  # noqa: E402

MODELS = {"hybrid": "builtin:hybrid-cifar10", "vit": "builtin:vit-cifar10",
          "efficientvit": "builtin:efficientvit-cifar10"}
TEST_DIR = Path.home() / ".cache/edgevit/cifar10-images/test"
FILES = {"onnx-int8": "onnx-int8.onnx", "onnx-int8-tensorrt": "onnx-int8-tensorrt.onnx",
         "openvino-int8": "openvino-int8.xml"}


def images(spec: str, n: int):
    """Evaluation images (x, labels) at the model's preprocessing."""
    _, info = load_model(ModelConfig(source=spec))
    pre = Preprocess(info.input_size, info.mean, info.std, info.crop_pct, info.interpolation, info.resize)
    root = TEST_DIR if TEST_DIR.is_dir() else ROOT / "calibration" / "builtin-eval"
    return open_image_set(root, num=n).interleaved().load(pre), str(root)


def compare(a: np.ndarray, b: np.ndarray) -> dict:
    return {"agreement": round(float((a.argmax(1) == b.argmax(1)).mean()), 4),
            "max_logit_diff": round(float(np.abs(a - b).max()), 4)}


def run_model(name: str, spec: str, n: int, threads: int) -> dict:
    (x, y), root = images(spec, n)
    out = {"images": int(len(x)), "eval": root}
    for fix in ("off", "on"):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.time()
            sets = ["quantize.placement=all", f"quantize.weights.overflow_fix={fix}", f"model={spec}",
                    'export=["export/onnx-int8.yaml","export/onnx-int8-tensorrt.yaml","export/openvino-int8.yaml"]',
                    "validate.devices=[]", "budget=null"]
            compress(str(ROOT / "recipes/int8_ptq.yaml"), sets, out=Path(tmp) / "run")
            rows = {}
            for art, file in FILES.items():
                path = Path(tmp) / "run" / file
                if art == "openvino-int8":  # the IR is converted from the same QDQ graph as onnx-int8
                    exact = rows["onnx-int8"]["_exact"]
                    deployed = collect_logits(OpenVINORunner(path, threads=threads), x, 100)
                else:
                    exact = collect_logits(OrtRunner(path, threads, exact_integers=True), x, 100)
                    deployed = collect_logits(OrtRunner(path, threads), x, 100)
                rows[art] = {"top1_exact": round(float((exact.argmax(1) == y).mean()), 4),
                             "top1_deployed": round(float((deployed.argmax(1) == y).mean()), 4),
                             **compare(deployed, exact), "_exact": exact}
                print(f"{name} weights {'7' if fix == 'on' else '8'}-bit {art}: top-1 exact "
                      f"{100 * rows[art]['top1_exact']:.2f} %, deployed {100 * rows[art]['top1_deployed']:.2f} %, "
                      f"agreement {100 * rows[art]['agreement']:.2f} %, max logit diff {rows[art]['max_logit_diff']}",
                      flush=True)
            for r in rows.values():
                del r["_exact"]
            out[f"weights_{'7' if fix == 'on' else '8'}bit"] = rows | {"seconds": round(time.time() - t0, 1)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/int8_saturation.json"))
    args = ap.parse_args()
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_facts(), "int8_dot_saturates": int8_dot_saturates(),
              "command": " ".join(["benchmarks/int8_saturation.py", *sys.argv[1:]]), "models": {}}
    for name in args.models:
        result["models"][name] = run_model(name, MODELS[name], args.images, args.threads)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
