"""onnxsim vs onnxslim on the built-in models: nodes left, LayerNormalization kept, time, parity.

    .venv/bin/python benchmarks/simplifiers.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import onnxsim
import onnxslim
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from edgevit.exporters.onnx import op_counts, torch_to_onnx  # noqa: E402
from edgevit.models import load_model  # noqa: E402
from edgevit.recipe import ModelConfig  # noqa: E402

SIMPLIFIERS = {
    "none": lambda m: m,
    f"onnxsim {onnxsim.__version__}": lambda m: onnxsim.simplify(m)[0],
    f"onnxslim {onnxslim.__version__}": lambda m: onnxslim.slim(m),
}


def main() -> None:
    torch.set_num_threads(1)
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    print("| model | simplifier | nodes | LayerNormalization | seconds | max abs diff vs PyTorch |")
    print("|---|---|---|---|---|---|")
    for name in ("hybrid-cifar10", "vit-cifar10"):
        model, info = load_model(ModelConfig(source=f"builtin:{name}"))
        proto = torch_to_onnx(model, info.input_size)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        for tool, fn in SIMPLIFIERS.items():
            t0 = time.time()
            out = fn(proto)
            dt = time.time() - t0
            sess = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"])
            diff = np.abs(sess.run(None, {"input": x})[0] - ref).max()
            print(f"| {name} | {tool} | {len(out.graph.node)} | {op_counts(out).get('LayerNormalization', 0)} "
                  f"| {dt:.2f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
