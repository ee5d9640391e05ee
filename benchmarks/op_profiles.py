"""Where the time goes, per ONNX Runtime op type: FP32, every quantizer in INT8 (``placement: all``, the form
before placement), and what ``placement: auto`` chose (after), for one model at a time.

    .venv/bin/python benchmarks/op_profiles.py [--only mobilevit_xxs efficientformerv2_s0]

Two ``edgevit compress --recipe int8_ptq`` runs per model (conv outputs quantized; the second with
``quantize.placement: all``; ``when_slower: int8`` keeps the placed INT8 even when it would not ship).
Each graph is profiled by ONNX Runtime's own profiler (batch 1, 2 threads, 30 runs after 5 warm-up);
per op type: total ms per call and node count. Writes benchmarks/results/op_profiles.json.
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
from edgevit.api import compress  # noqa: E402

MODELS = {"mobilevit_xxs": ("timm:mobilevit_xxs", 256), "efficientformerv2_s0": ("timm:efficientformerv2_s0", 224),
          "builtin-hybrid": ("builtin:hybrid-cifar10", None)}


def op_times(path: Path, x: np.ndarray, runs: int = 30, threads: int = 2) -> dict[str, dict]:
    """Per op type: mean ms per call (summed over its nodes) and node count, from ORT's profiler."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
        so.enable_profiling, so.profile_file_prefix = True, str(Path(tmp) / "p")
        s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        feed = {s.get_inputs()[0].name: x}
        for _ in range(5 + runs):
            s.run(None, feed)
        events = json.loads(Path(s.end_profiling()).read_text())
    per_node: dict[tuple, list[float]] = defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_node[(e["args"]["op_name"], e["name"])].append(e["dur"] / 1e3)
    out: dict[str, dict] = defaultdict(lambda: {"ms": 0.0, "nodes": 0})
    for (op, _), v in per_node.items():
        out[op]["ms"] += float(np.sum(v[-runs:]) / runs)
        out[op]["nodes"] += 1
    ranked = sorted(out.items(), key=lambda kv: -kv[1]["ms"])
    return {k: {"ms": round(v["ms"], 3), "nodes": v["nodes"]} for k, v in ranked}


def run_model(name: str, work: Path) -> dict:
    src, size = MODELS[name]
    sets = [f"model.source={src}", 'export=["export/onnx-fp32.yaml","export/onnx-int8.yaml"]',
            "validate.eval.num=100", "quantize.conv_output=true", "quantize.when_slower=int8", "calibration.num=64"]
    sets += [f"model.input_size={size}"] if size else []
    compress("int8_ptq", sets, out=work / "auto", overwrite=True)
    compress("int8_ptq", sets + ["quantize.placement=all"], out=work / "all", overwrite=True)
    placement = json.loads((work / "auto" / "placement.json").read_text())["artifacts"]["onnx-int8"]
    s = size or 32
    x = np.random.default_rng(0).standard_normal((1, 3, s, s)).astype(np.float32)
    graphs = {"fp32": work / "auto" / "onnx-fp32.onnx", "int8 all (before)": work / "all" / "onnx-int8.onnx",
              "int8 placed (after)": work / "auto" / "onnx-int8.onnx"}
    return {"model": name, "input_size": s, "placement": {k: placement[k] for k in (
        "activations", "float_regions", "float_sites", "candidates", "speedup", "reason")},
            "ops": {k: op_times(p, x) for k, p in graphs.items()}}


def table(r: dict, top: int = 14) -> str:
    ops = r["ops"]
    names = sorted({op for t in ops.values() for op in t},
                   key=lambda op: -max(t.get(op, {"ms": 0})["ms"] for t in ops.values()))
    lines = [f"{r['model']} ({r['input_size']} px), ms per call (nodes)", "| op | " + " | ".join(ops) + " |",
             "|---|" + "---|" * len(ops)]
    for op in names[:top]:
        cells = [f"{t[op]['ms']:.2f} ({t[op]['nodes']})" if op in t else "-" for t in ops.values()]
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    totals = [f"**{sum(v['ms'] for v in t.values()):.2f}**" for t in ops.values()]
    lines.append("| **total** | " + " | ".join(totals) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", default=["mobilevit_xxs", "efficientformerv2_s0"], choices=list(MODELS))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "op_profiles.json")
    args = ap.parse_args()
    results = []
    for name in args.only:
        with tempfile.TemporaryDirectory(prefix=f"edgevit-ops-{name}-") as tmp:
            results.append(run_model(name, Path(tmp)))
        args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "results": results}, indent=1) + "\n")
        print(table(results[-1]) + "\n" + results[-1]["placement"]["reason"] + "\n", flush=True)


if __name__ == "__main__":
    main()
