"""How much a batch-1 speed ratio owes to how the baseline is run: threads and ONNX Runtime's spinning, per model.

    .venv/bin/python benchmarks/threads_spinning.py [--only NAME ...]

Per model, one ``edgevit compress --recipe fp32_export`` run writes the FP32 ONNX and the OpenVINO BF16 IR (the
FP32 graph computed in bf16 on a CPU with AVX-512 BF16 or AMX, f32 elsewhere). Then, interleaved in one loop
(shuffled each round, ``--per-round`` calls in a row): ONNX Runtime FP32 on 1 and 2 threads with its intra-op
threads spinning (ONNX Runtime's default) and not (edgevit's validation and ``int8_peers.py``: fair on a shared
machine), and the IR on 1 and 2 threads. Speeds are ratios to ONNX Runtime FP32 on 2 threads without spinning,
the baseline of ``int8_peers.py``. Writes benchmarks/results/threads_spinning.json and prints the table.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from int8_peers import MODELS, fp32_run  # noqa: E402

from edgevit.runtimes.openvino import OpenVINORunner  # noqa: E402
from edgevit.validate.latency import cpu_facts, load_average  # noqa: E402
from edgevit.validate.profiling import interleaved_medians  # noqa: E402
from edgevit.validate.runners import OrtRunner  # noqa: E402

BASELINE = "ORT FP32, 2 threads, no spinning"


def run_model(name: str, work: Path, args) -> dict:
    report, x = fp32_run(name, work)
    onnx_file, ir = work / "run" / "onnx-fp32.onnx", work / "run" / "openvino-bf16.xml"
    runners = {f"ORT FP32, {t} thread{'s' * (t > 1)}, {'spinning' if s else 'no spinning'}":
               OrtRunner(onnx_file, t, spinning=s) for t in (1, 2) for s in (False, True)}
    precision = OpenVINORunner(ir, "CPU", 1).compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    runners |= {f"OpenVINO BF16 IR, {t} thread{'s' * (t > 1)}": OpenVINORunner(ir, "CPU", t) for t in (1, 2)}
    load = load_average()
    med = interleaved_medians(runners, x, args.rounds, warmup=5, seed=0, per_round=args.per_round)
    return {"model": name, "input_size": report["model"]["preprocessing"]["input_size"], "ir_precision": precision,
            "load_before": load, "load_after": load_average(),
            "variants": {k: {"b1_ms": round(ms, 3), "speed": round(med[BASELINE] / ms, 3)} for k, ms in med.items()}}


def table(results: list[dict]) -> str:
    names = list(results[0]["variants"])
    lines = ["| model (IR computed in) | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for r in results:
        cells = [f"{r['variants'][k]['b1_ms']:.2f} ms ({r['variants'][k]['speed']:.2f}x)" for k in names]
        lines.append(f"| {r['model']} {r['input_size']} px ({r['ir_precision']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--per-round", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "threads_spinning.json")
    args = ap.parse_args()
    results = []
    for name in args.only:
        t0 = time.time()
        with tempfile.TemporaryDirectory(prefix=f"edgevit-threads-{name}-") as tmp:
            results.append(run_model(name, Path(tmp), args))
        print(f"[{name}] {time.time() - t0:.0f} s", flush=True)
    out = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_facts(), "rounds": args.rounds,
           "per_round": args.per_round, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
