"""OpenVINO's time per op type on an IR with and without edgevit's graph forms for OpenVINO, for one model at a time:
each channel Split of a conv's output as one conv per part (EfficientViT), each timm qkv projection as separate q,
k and v projections (ViT, DeiT, MobileViT).

    .venv/bin/python benchmarks/openvino_conv_splits.py [--only efficientvit_m0 ...]

Per model, one ``edgevit compress --recipe fp32_export`` run writes the FP32 ONNX and edgevit's BF16 IR (after:
the graph forms applied). Before: the same FP32 ONNX converted by ``openvino.convert_model`` as it is, fixed to
batch 1 and stored with FP16 weights as edgevit's IR is. Both are
compiled with the precision edgevit's IR stores (bf16 on a CPU with AVX-512 BF16 or AMX), profiled with OpenVINO's
performance counters (batch 1, 2 threads, 50 calls after 20) per (op type, kernel), and timed interleaved with ONNX
Runtime FP32 (``--per-round`` calls a round, 40 rounds). Writes benchmarks/results/openvino_conv_splits.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from int8_peers import MODELS, fp32_run  # noqa: E402

from edgevit.runtimes.openvino import OpenVINORunner, _compiled, with_batch  # noqa: E402
from edgevit.validate.latency import cpu_facts, load_average  # noqa: E402
from edgevit.validate.profiling import interleaved_medians  # noqa: E402
from edgevit.validate.runners import OrtRunner  # noqa: E402


def op_type_times(ir: Path, hint: str, x: np.ndarray, runs: int = 50, threads: int = 2) -> dict:
    """Per (op type, kernel): ms per call summed over its executed nodes, and how many nodes; and in all."""
    request = _compiled(ir, "CPU", hint, threads, profile=True).create_infer_request()
    for _ in range(20):
        request.infer([x])
    ms, count = defaultdict(float), defaultdict(int)
    for _ in range(runs):
        request.infer([x])
        for p in request.profiling_info:
            if p.status.name == "EXECUTED":
                ms[f"{p.node_type} ({p.exec_type})"] += p.real_time.total_seconds() * 1e3 / runs
                count[f"{p.node_type} ({p.exec_type})"] += 1
    ops = {k: {"ms": round(v, 4), "nodes": count[k] // runs} for k, v in sorted(ms.items(), key=lambda kv: -kv[1])}
    return {"node_ms": round(sum(ms.values()), 3), "nodes": sum(count.values()) // runs, "ops": ops}


def run_model(name: str, work: Path, args) -> dict:
    import openvino as ov

    report, x = fp32_run(name, work)
    row = next(r for r in report["results"] if r["name"] == "openvino-bf16")
    after, onnx_file = work / "run" / "openvino-bf16.xml", work / "run" / "onnx-fp32.onnx"
    hint = row["export"]["inference_precision"]
    before = work / "before.xml"
    ov.save_model(with_batch(ov.convert_model(str(onnx_file)), 1), str(before), compress_to_fp16=True)
    irs = {"before": before, "after": after}
    profiles = {k: op_type_times(p, hint, x) for k, p in irs.items()}
    runners = {"ORT FP32": OrtRunner(onnx_file, 2)} | {f"IR {k}": OpenVINORunner(p, "CPU", 2, hint)
                                                        for k, p in irs.items()}
    load = load_average()
    med = interleaved_medians(runners, x, args.rounds, warmup=5, seed=0, per_round=args.per_round)
    return {"model": name, "input_size": report["model"]["preprocessing"]["input_size"], "inference_precision": hint,
            "conv_splits": row["export"]["conv_splits"], "qkv_splits": row["export"]["qkv_splits"],
            "qkv_splits_left": row["export"].get("qkv_splits_left"), "profiles": profiles, "load_before": load,
            "load_after": load_average(),
            "b1_ms": {k: round(v, 3) for k, v in med.items()},
            "b1_speed_vs_ort_fp32": {k: round(med["ORT FP32"] / v, 3) for k, v in med.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="+", default=["efficientvit_m0"], choices=list(MODELS))
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--per-round", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "openvino_conv_splits.json")
    args = ap.parse_args()
    results = []
    for name in args.only:
        with tempfile.TemporaryDirectory(prefix=f"edgevit-convsplits-{name}-") as tmp:
            r = run_model(name, Path(tmp), args)
        results.append(r)
        print(f"[{name}] {r['conv_splits']} conv splits, {r['qkv_splits']} qkv projections rewritten; "
              f"b1 ms {r['b1_ms']}; speed vs ORT FP32 {r['b1_speed_vs_ort_fp32']}")
        for k, p in r["profiles"].items():
            print(f"  {k}: {p['nodes']} nodes, {p['node_ms']:.3f} ms of node time; " + ", ".join(
                f"{op} {v['ms']:.3f} ms / {v['nodes']}" for op, v in list(p["ops"].items())[:6]))
    out = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_facts(), "rounds": args.rounds,
           "per_round": args.per_round, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
