"""The compute floor of a model on this machine: its FLOPs over the INT8 GEMM rate measured here.

    .venv/bin/python benchmarks/compute_floor.py [--model timm:deit_tiny_patch16_224] [--size 224]

The rate is measured on one large QDQ MatMul (u8 activations x s8 weights, per-channel weight scales,
M = N = K = 1024 by default) in ONNX Runtime and in OpenVINO (whose x86 kernels use AMX / VNNI where the
CPU has them), 2 threads, median of interleaved runs. The floor is the time the model's matmul and
convolution FLOPs (torch's flop counter) would take at that rate: a lower bound no graph form beats. The
script prints the floor and, when the int8_peers.py results (``--peers``) have the model, how far edgevit's
INT8 artifacts measured there are above it. Writes benchmarks/results/compute_floor.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from edgevit.runtimes.openvino import OpenVINORunner  # noqa: E402
from edgevit.validate.profiling import interleaved_medians  # noqa: E402
from edgevit.validate.runners import OrtRunner  # noqa: E402


def qdq_matmul(path: Path, m: int, n: int, k: int) -> None:
    """An ONNX graph x[1, m, k] -> Q/DQ (u8) -> MatMul with an int8 weight [k, n] (per-column scales)."""
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (k, n), dtype=np.int8)
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "xs"), numpy_helper.from_array(np.array(128, np.uint8), "xz"),
             numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.full(n, 0.01, np.float32), "ws")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws"], ["wd"], axis=1),
             helper.make_node("MatMul", ["xd", "wd"], ["y"])]
    g = helper.make_graph(nodes, "gemm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, m, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, m, n])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def gemm_rates(size: int, threads: int, rounds: int) -> dict[str, float]:
    """INT8 multiply-accumulate rate (GFLOP/s, 2 FLOPs per MAC) of ONNX Runtime and OpenVINO on this machine."""
    import openvino as ov

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gemm.onnx"
        # batch of 3 rows of M: the (1, 3, M, K) input keeps the graph a MatMul in both runtimes
        qdq_matmul(path, size, size, size)
        ov.save_model(ov.convert_model(str(path)), str(Path(tmp) / "gemm.xml"))
        runners = {"onnxruntime": OrtRunner(path, threads),
                   "openvino": OpenVINORunner(Path(tmp) / "gemm.xml", "CPU", threads, hint="f32")}
        x = np.random.default_rng(1).uniform(-6, 6, (1, 3, size, size)).astype(np.float32)
        med = interleaved_medians(runners, x, rounds, warmup=3)
    flops = 2.0 * 3 * size ** 3
    return {k: flops / (ms / 1e3) / 1e9 for k, ms in med.items()}


def model_flops(source: str, size: int) -> int:
    """FLOPs of one image through the model (torch's flop counter: matmuls and convolutions)."""
    import torch

    from edgevit.config import ModelConfig
    from edgevit.models.sources import load_model
    from edgevit.tokens import count_flops

    model, _ = load_model(ModelConfig(source=source, input_size=size, num_classes=10))
    return count_flops(model.eval(), torch.zeros(1, 3, size, size))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="timm:deit_tiny_patch16_224")
    ap.add_argument("--name", default="deit_tiny", help="the model's name in int8_peers.json")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--gemm", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--peers", type=Path, default=ROOT / "benchmarks" / "results" / "int8_peers.json",
                    help="the int8_peers.py results whose edgevit INT8 times are set against the floor")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "compute_floor.json")
    args = ap.parse_args()
    rates = gemm_rates(args.gemm, args.threads, args.rounds)
    flops = model_flops(args.model, args.size)
    out = {"date": time.strftime("%Y-%m-%d"), "model": args.model, "input_size": args.size, "gflops": flops / 1e9,
           "gemm": args.gemm, "threads": args.threads, "int8_gflops_per_s": rates,
           "floor_ms": {k: flops / (r * 1e9) * 1e3 for k, r in rates.items()}}
    peers = args.peers
    if peers.exists():
        for r in json.loads(peers.read_text())["results"]:
            if r["model"] == args.name:
                v = r["variants"]
                for label, runtime in (("edgevit INT8 in ORT", "onnxruntime"), ("edgevit INT8 in OpenVINO", "openvino")):
                    ms = v[label]["b1_ms"]
                    out.setdefault("measured", {})[label] = {"b1_ms": ms, "x_floor": ms / out["floor_ms"][runtime]}
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
