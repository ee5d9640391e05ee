"""OpenVINO conversion time: ``openvino.convert_model`` against edgevit's ``convert_onnx`` (the same frontend and
transformations without the converter's empty preprocessing step) on the built-in hybrid's FP32 and INT8 ONNX
graphs (``recipes/int8_ptq.yaml``'s quantization, every region INT8), the two alternating round by round.

    .venv/bin/python benchmarks/openvino_convert_time.py [--rounds 5]

Also checks that both write the same IR bytes (generated names numbered as the exporter numbers them). Writes
benchmarks/results/openvino_convert_time.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    import openvino as ov

    from edgevit.runtimes.openvino import _number_generated_names, convert_onnx
    from onnx_graph_bytes import export_graphs

    results = {"date": datetime.date.today().isoformat(), "openvino": ov.__version__, "rounds": args.rounds}
    print("| graph | convert_model (s, median) | convert_onnx (s, median) | ratio | same IR bytes |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        graphs = dict(zip(("fp32", "int8"), export_graphs("hybrid-cifar10", Path(tmp))))
        convert = {"convert_model": lambda p: ov.convert_model(str(p)), "convert_onnx": convert_onnx}
        for name, graph in graphs.items():
            times: dict[str, list[float]] = {k: [] for k in convert}
            for _ in range(args.rounds + 1):  # the first round warms the frontend up and is not counted
                for k, fn in convert.items():
                    t = time.perf_counter()
                    fn(graph)
                    times[k].append(time.perf_counter() - t)
            irs = {}
            for k, fn in convert.items():
                m = fn(graph)
                _number_generated_names(m)
                ov.save_model(m, str(Path(tmp) / f"{k}.xml"), compress_to_fp16=False)
                irs[k] = [(Path(tmp) / f"{k}.{s}").read_bytes() for s in ("xml", "bin")]
            med = {k: statistics.median(v[1:]) for k, v in times.items()}
            same = irs["convert_model"] == irs["convert_onnx"]
            results[name] = {"median_s": med, "ratio": med["convert_model"] / med["convert_onnx"], "same_bytes": same}
            print(f"| {name} | {med['convert_model']:.3f} | {med['convert_onnx']:.3f} | "
                  f"{results[name]['ratio']:.2f}x | {same} |", flush=True)
    (ROOT / "benchmarks" / "results" / "openvino_convert_time.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
