"""Runners: one per runtime, each maps a float32 NCHW batch to logits as numpy."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn


def process_threads() -> int:
    """Threads to compute on when no device profile says: torch's intra-op count, which follows
    ``OMP_NUM_THREADS`` (a Ray task's is its ``num_cpus``) and is otherwise this machine's cores, so that
    two runs side by side on a shared machine do not each take every core."""
    return max(1, torch.get_num_threads())


class TorchRunner:
    """The PyTorch model itself (the FP32 reference)."""

    runtime = "torch"

    def __init__(self, model: nn.Module, threads: int | None = None):
        self.model = model.eval()
        self.threads = threads

    def __call__(self, x: np.ndarray) -> np.ndarray:
        prev = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                return self.model(torch.from_numpy(np.ascontiguousarray(x))).float().numpy()
        finally:
            torch.set_num_threads(prev)


class OrtRunner:
    """An ONNX file in ONNX Runtime. Spinning is off so timings are stable on a shared machine (``spinning``:
    ONNX Runtime's default, its intra-op threads busy-waiting for work: 1.2-1.5x faster at batch 1 on two threads
    of a dedicated machine, benchmarks/BENCHMARKS.md).
    ``exact_integers``: ONNX Runtime does not fuse quantized groups into its integer kernels; each runs as
    DequantizeLinear -> float op -> QuantizeLinear, which computes the int32 sums exactly (a stand-in for another
    runtime's integer kernels on a CPU whose own ones saturate)."""

    runtime = "onnxruntime"

    def __init__(self, path: Path | str, threads: int | None = None, providers: list[str] | None = None,
                 exact_integers: bool = False, spinning: bool = False):
        import onnxruntime as ort

        self.exact_integers = exact_integers
        opts = ort.SessionOptions()
        if exact_integers:
            opts.add_session_config_entry("session.disable_quant_qdq", "1")
        opts.intra_op_num_threads = threads or process_threads()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        opts.log_severity_level = 3
        available = ort.get_available_providers()
        wanted = [p for p in (providers or ["CPUExecutionProvider"]) if p in available]
        self.providers = wanted or ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=self.providers)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0].astype(np.float32)
