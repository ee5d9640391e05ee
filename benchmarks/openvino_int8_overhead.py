"""Why every-layer INT8 does not pay at batch 1 on the small hybrids in OpenVINO: kernel time per layer kind.

    .venv/bin/python benchmarks/openvino_int8_overhead.py [--only efficientvit_m0 mobilevit_xxs ...]

Per model (random weights), one ``edgevit compress --recipe int8_ptq`` run with ``quantize.placement: all`` (every
quantizer) and conv outputs in float writes edgevit's BF16 IR and its INT8 IR. Both are compiled as edgevit's
runners compile them, the INT8 IR's float layers in bf16 (a CPU with AVX-512 BF16 or AMX), and:
profiled with OpenVINO's performance counters (batch 1, 2 threads, 50 calls: executed nodes and their times, by
layer kind: the op type and kernel family with the precision left out, so an int8 1x1 convolution sits beside the
bf16 one it replaces), and timed interleaved with ONNX Runtime FP32 (``--per-round`` calls a round, ``--rounds``
rounds; profiling slows a call, so node times compare with node times, wall times with wall times). Writes
benchmarks/results/openvino_int8_overhead.json.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from int8_peers import CIFAR, MODELS, calibration_images, preprocess_of  # noqa: E402

from edgevit.api import compress  # noqa: E402
from edgevit.runtimes.openvino import OpenVINORunner, _compiled  # noqa: E402
from edgevit.validate.latency import cpu_facts, load_average  # noqa: E402
from edgevit.validate.profiling import interleaved_medians  # noqa: E402
from edgevit.validate.runners import OrtRunner  # noqa: E402

EXPORTS = ["export/onnx-fp32.yaml", "export/openvino-bf16.yaml",
           {"name": "openvino-int8", "format": "openvino", "precision": "int8", "inference_precision": "bf16"}]


def run_model(name: str, work: Path, args) -> dict:
    src, size, _ = MODELS[name]
    sets = [f"model.source={src}", f"export={json.dumps(EXPORTS)}", "quantize.placement=all",
            "quantize.conv_output=false", "validate.eval.num=50", "calibration.num=64", "validate.devices=[]",
            "budget=null"]
    if size:
        sets += [f"model.input_size={size}", "model.num_classes=10", CIFAR]
    report = compress("int8_ptq", sets, out=work / "run", overwrite=True).report
    rows = {r["name"]: r for r in report["results"]}
    x = calibration_images(report, 1)
    irs = {k: work / "run" / f"openvino-{k}.xml" for k in ("bf16", "int8")}
    hints = {k: rows[f"openvino-{k}"]["export"]["inference_precision"] for k in irs}
    profiles = kind_profiles({k: _compiled(p, "CPU", hints[k], 2, profile=True) for k, p in irs.items()}, x,
                             args.rounds)
    runners = {"ORT FP32": OrtRunner(work / "run" / "onnx-fp32.onnx", 2)} | {
        f"{k.upper()} IR": OpenVINORunner(p, "CPU", 2, hints[k]) for k, p in irs.items()}
    load = load_average()
    med = interleaved_medians(runners, x, args.rounds, warmup=5, seed=0, per_round=args.per_round)
    out = {"model": name, "input_size": preprocess_of(report).input_size, "hints": hints, "load_before": load,
           "load_after": load_average(), "b1_ms": {k: round(v, 3) for k, v in med.items()},
           "b1_speed_vs_ort_fp32": {k: round(med["ORT FP32"] / v, 3) for k, v in med.items()}, "irs": {}}
    for k, p in profiles.items():
        out["irs"][k] = p | {"wall_ms": round(med[f"{k.upper()} IR"], 3)}
    return out


def layer_kind(p) -> str:
    """An executed node's op type and kernel family without the precision: "Convolution (brgconv_avx512_1x1_I8)"
    and "Convolution (brgconv_avx512_1x1_bf16)" are one kind."""
    return f"{p.node_type} ({re.sub(r'_(bf16|f32|f16|I8|i8|U8|u8)$', '', p.exec_type)})"


def kind_profiles(compiled: dict, x: np.ndarray, rounds: int, calls: int = 5) -> dict:
    """Per compiled model: its executed nodes, the median over rounds of their summed time per call, and the same
    per layer kind; the models are profiled in turns, ``calls`` calls each a round, so load affects them alike."""
    requests = {k: c.create_infer_request() for k, c in compiled.items()}
    per_round: dict = {k: [] for k in requests}
    for r in range(rounds + 2):
        for k, req in requests.items():
            kinds: dict = defaultdict(float)
            for _ in range(calls):
                req.infer([x])
                for p in req.profiling_info:
                    if p.status.name == "EXECUTED":
                        kinds[layer_kind(p)] += p.real_time.total_seconds() * 1e3 / calls
            if r >= 2:  # two warm-up rounds
                per_round[k].append(kinds)
    out = {}
    for k, rows in per_round.items():
        names = sorted({n for row in rows for n in row})
        kinds = {n: round(float(np.median([row.get(n, 0.0) for row in rows])), 4) for n in names}
        executed = sum(1 for p in requests[k].profiling_info if p.status.name == "EXECUTED")
        node_ms = float(np.median([sum(row.values()) for row in rows]))
        out[k] = {"executed_nodes": executed, "node_ms": round(node_ms, 3),
                  "kinds": dict(sorted(kinds.items(), key=lambda kv: -kv[1]))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="+", default=["efficientvit_m0", "mobilevit_xxs"], choices=list(MODELS))
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--per-round", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "openvino_int8_overhead.json")
    args = ap.parse_args()
    results = []
    for name in args.only:
        with tempfile.TemporaryDirectory(prefix=f"edgevit-int8-overhead-{name}-") as tmp:
            results.append(run_model(name, Path(tmp), args))
        r = results[-1]
        print(f"[{name}] b1 speed vs ORT FP32 {r['b1_speed_vs_ort_fp32']}")
        for k, v in r["irs"].items():
            print(f"  {k} IR: {v['executed_nodes']} executed nodes, node time {v['node_ms']:.3f} ms, wall "
                  f"{v['wall_ms']:.3f} ms")
        for kind in list(r["irs"]["bf16"]["kinds"])[:8]:
            t = {k: r["irs"][k]["kinds"].get(kind, 0.0) for k in r["irs"]}
            print(f"    {kind}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in t.items()))
    out = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_facts(), "rounds": args.rounds,
           "per_round": args.per_round, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
