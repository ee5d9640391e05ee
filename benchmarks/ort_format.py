"""ONNX Runtime's ORT format (``ort_format: true``) against the ONNX graph it is made from: bytes, session
creation and batch-1 latency in ONNX Runtime, on the built-in hybrid as ``recipes/int8_ptq.yaml`` quantizes it
(every quantizer: ``quantize.placement: all``) and its FP32 graph.

    .venv/bin/python benchmarks/ort_format.py [--model builtin:hybrid-cifar10] [--rounds 30]

The four files are opened in turn each round (session creation) and timed interleaved at batch 1 on this
machine's threads; prints a Markdown table and writes benchmarks/results/ort_format.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="builtin:hybrid-cifar10")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ort_format.json"))
    args = ap.parse_args()
    import numpy as np

    from edgevit.api import compress
    from edgevit.exporters.onnx import read_metadata
    from edgevit.exporters.ort_format import save_ort_format, session_creation_ms
    from edgevit.recipe import load_recipe
    from edgevit.validate.profiling import interleaved_medians
    from edgevit.validate.runners import OrtRunner

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        recipe = load_recipe("int8_ptq", [f"model={args.model}", "quantize.placement=all", "validate.devices=[]",
                                          "validate.eval.num=100", "budget=null",
                                          "export=[export/onnx-fp32.yaml,export/onnx-int8.yaml,"
                                          "export/onnx-int8-ort.yaml]"])
        compress(recipe, out=run)
        save_ort_format(run / "onnx-fp32.onnx", run / "onnx-fp32.ort")
        files = {"FP32 .onnx": run / "onnx-fp32.onnx", "FP32 .ort": run / "onnx-fp32.ort",
                 "INT8 .onnx": run / "onnx-int8.onnx", "INT8 .ort": run / "onnx-int8-ort.ort"}
        load = session_creation_ms(list(files.values()), rounds=args.rounds)
        size = json.loads(read_metadata(run / "onnx-fp32.onnx")["input_size"])[-1]
        runners = {k: OrtRunner(p) for k, p in files.items()}
        x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
        run_ms = interleaved_medians(runners, x, rounds=args.rounds * 10, per_round=5)
        rows = {k: {"bytes": p.stat().st_size, "session_ms": load[str(p)], "batch1_ms": round(run_ms[k], 4)}
                for k, p in files.items()}
    print("| file | bytes | vs .onnx | session creation ms | .onnx / this | batch-1 ms | speed vs .onnx |")
    print("|---|---|---|---|---|---|---|")
    for k, r in rows.items():
        base = rows[k.replace(".ort", ".onnx")]
        print(f"| {k} | {r['bytes']:,} | {r['bytes'] / base['bytes']:.2f}x | {r['session_ms']:.1f} | "
              f"{base['session_ms'] / r['session_ms']:.2f}x | {r['batch1_ms']:.3f} | "
              f"{base['batch1_ms'] / r['batch1_ms']:.2f}x |")
    Path(args.out).write_text(json.dumps({"model": args.model, "machine": platform.processor() or platform.machine(),
                                          "rounds": args.rounds, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
