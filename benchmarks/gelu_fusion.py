"""Whether ONNX Runtime runs each GELU as one op, in edgevit's FP32 and INT8 graphs, and what it costs when not:

    .venv/bin/python benchmarks/gelu_fusion.py [--models NAME ...] [--rounds 40] [--openvino]

FP32, per model (random weights; the built-in models with theirs): the PyTorch export simplified by onnxsim
with every pass (edgevit before 2026-11-30) and as edgevit's ``simplify`` does it now (without the pass that
folds GELU's ``* 0.5`` into the next conv); the GELU / Erf nodes in the graph ONNX Runtime runs after its
own optimizations, and the two files timed interleaved at batch 1 (with ``--openvino`` also each converted to
an OpenVINO IR, run in f32 and in bf16).
INT8, on EfficientFormerV2-S0 (the GELU model whose conv outputs are quantized, so its GELUs read a
DequantizeLinear): one ``edgevit compress --recipe int8_ptq`` run (``placement: all``, ``conv_output: true``)
writes the graph; it is timed with and without ``fuse_erf_gelu`` beside both FP32 files, at batch 1 and 32.
2 threads. Writes benchmarks/results/gelu_fusion.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from edgevit.api import compress  # noqa: E402
from edgevit.exporters.onnx import simplify, torch_to_onnx  # noqa: E402
from edgevit.exporters.qdq import fuse_erf_gelu  # noqa: E402
from edgevit.models import load_model  # noqa: E402
from edgevit.recipe import ModelConfig  # noqa: E402
from edgevit.validate.latency import cpu_facts, load_average  # noqa: E402
from edgevit.validate.profiling import interleaved_medians  # noqa: E402
from edgevit.runtimes.openvino import OpenVINORunner  # noqa: E402
from edgevit.validate.runners import OrtRunner  # noqa: E402

MODELS = {"hybrid": ("builtin:hybrid-cifar10", None), "vit": ("builtin:vit-cifar10", None),
          "mobilevit_xxs": ("timm:mobilevit_xxs", 256), "efficientformerv2_s0": ("timm:efficientformerv2_s0", 224),
          "efficientvit_m0": ("timm:efficientvit_m0", 224), "levit_128s": ("timm:levit_128s", 224),
          "deit_tiny": ("timm:deit_tiny_patch16_224", 224), "efficientformer_l1": ("timm:efficientformer_l1", 224),
          "fastvit_t8": ("timm:fastvit_t8", 256), "tiny_vit_5m": ("timm:tiny_vit_5m_224", 224),
          "mobilevitv2_050": ("timm:mobilevitv2_050", 256)}


def ort_ops(path: Path) -> dict[str, int]:
    """GELU-related op counts of the graph ONNX Runtime runs after its optimizations."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.optimized_model_filepath, so.log_severity_level = str(Path(tmp) / "o.onnx"), 3
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        ops = Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
    return {k: ops[k] for k in ("Gelu", "Erf", "ReorderInput", "ReorderOutput")}


def as_five_ops(model: onnx.ModelProto) -> int:
    """Write each com.microsoft.Gelu of ``model`` back as the five ops PyTorch exports; returns how many."""
    nodes, k = [], 0
    for n in model.graph.node:
        if n.op_type != "Gelu":
            nodes.append(n)
            continue
        x, y, p = n.input[0], n.output[0], f"gelu{k}"
        for c, v in (("sqrt2", np.sqrt(2.0)), ("one", 1.0), ("half", 0.5)):
            model.graph.initializer.append(numpy_helper.from_array(np.array(v, np.float32), f"{p}_{c}"))
        nodes += [helper.make_node("Div", [x, f"{p}_sqrt2"], [f"{p}_d"]),
                  helper.make_node("Erf", [f"{p}_d"], [f"{p}_e"]),
                  helper.make_node("Add", [f"{p}_e", f"{p}_one"], [f"{p}_a"]),
                  helper.make_node("Mul", [x, f"{p}_a"], [f"{p}_m"]),
                  helper.make_node("Mul", [f"{p}_m", f"{p}_half"], [y])]
        k += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return k


def timed(files: dict[str, Path], x: np.ndarray, rounds: int, openvino: bool = False) -> dict[str, float]:
    """Interleaved medians (ms) of the ONNX files in ONNX Runtime; with ``openvino`` also of each converted to
    an OpenVINO IR at the batch of ``x``, run in f32 and in bf16."""
    runners = {k: OrtRunner(p, 2) for k, p in files.items()}
    if openvino:
        import openvino as ov

        for k, p in files.items():
            m = ov.convert_model(str(p))
            m.reshape([len(x), *x.shape[1:]])
            ov.save_model(m, str(p.with_suffix(".xml")), compress_to_fp16=False)
            runners |= {f"{k}, OpenVINO {h}": OpenVINORunner(p.with_suffix(".xml"), "CPU", 2, hint=h)
                        for h in ("f32", "bf16")}
    return {k: round(v, 3) for k, v in interleaved_medians(runners, x, rounds, warmup=3, seed=len(x)).items()}


def fp32_files(name: str, work: Path) -> tuple[dict[str, Path], int]:
    import onnxsim

    src, size = MODELS[name]
    model, info = load_model(ModelConfig(source=src, input_size=size, num_classes=10 if size else None))
    raw = torch_to_onnx(model.eval(), info.input_size)
    files = {"fp32 onnxsim all passes": work / f"{name}-all.onnx", "fp32 edgevit": work / f"{name}-edgevit.onnx"}
    onnx.save(onnxsim.simplify(raw)[0], str(files["fp32 onnxsim all passes"]))
    onnx.save(simplify(raw)[0], str(files["fp32 edgevit"]))
    return files, info.input_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS)[:7], choices=list(MODELS))
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--rounds-b32", type=int, default=8)
    ap.add_argument("--openvino", action="store_true", help="also time the FP32 files in OpenVINO (f32, bf16)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gelu_fusion.json")
    args = ap.parse_args()
    out = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_facts(), "load_before": load_average(),
           "fp32": {}, "int8": None}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fp32 = {}
        for name in args.models:
            files, size = fp32_files(name, work)
            fp32[name] = files
            x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
            med = timed(files, x, args.rounds, openvino=args.openvino)
            row = {k: {"ort_ops": ort_ops(p), "b1_ms": med[k]} for k, p in files.items()}
            row["speedup"] = round(med["fp32 onnxsim all passes"] / med["fp32 edgevit"], 3)
            if args.openvino:
                row["openvino_b1_ms"] = {k: v for k, v in med.items() if "OpenVINO" in k}
                row["openvino_speedup"] = {h: round(med[f"fp32 onnxsim all passes, OpenVINO {h}"] /
                                                    med[f"fp32 edgevit, OpenVINO {h}"], 3) for h in ("f32", "bf16")}
            out["fp32"][name] = row
            print(name, json.dumps(row), flush=True)
        if "efficientformerv2_s0" in args.models:
            run = work / "run"
            compress("int8_ptq", ["model.source=timm:efficientformerv2_s0", "model.input_size=224",
                                  "model.num_classes=10", 'export=["export/onnx-int8.yaml"]', "quantize.placement=all",
                                  "quantize.conv_output=true", "validate.eval.num=20", "validate.devices.0.iters=2",
                                  "validate.devices.0.warmup=1"], out=run, overwrite=True)
            files = dict(fp32["efficientformerv2_s0"])
            files["int8 edgevit (one Gelu op)"] = run / "onnx-int8.onnx"
            erf = onnx.load(str(run / "onnx-int8.onnx"))
            k = as_five_ops(erf)
            files["int8 edgevit, GELU as five ops"] = work / "int8-erf.onnx"
            onnx.save(erf, str(files["int8 edgevit, GELU as five ops"]))
            assert fuse_erf_gelu(erf) == k  # the rewrite undoes it exactly
            x1 = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
            x32 = np.random.default_rng(0).standard_normal((32, 3, 224, 224)).astype(np.float32)
            b1, b32 = timed(files, x1, args.rounds), timed(files, x32, args.rounds_b32)
            ref = "fp32 edgevit"
            out["int8"] = {"gelus": k, **{n: {"ort_ops": ort_ops(p), "b1_ms": b1[n], "b32_ms": b32[n],
                                               "b1_speed": round(b1[ref] / b1[n], 3),
                                               "b32_speed": round(b32[ref] / b32[n], 3)} for n, p in files.items()}}
            print(json.dumps(out["int8"], indent=1), flush=True)
    out["load_after"] = load_average()
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
