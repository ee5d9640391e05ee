"""The integer-kernel families a QuantPlan is lowered for (see ``edgevit.quant.lowering``); a runtime
names the one its kernels belong to. Torch-free, so runtimes and recipes can read it."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Lowering:
    """What a family of integer kernels executes."""

    name: str  # names the simulated model a lowered artifact is compared with
    label: str
    symmetric: bool  # signed int8, zero point 0, one scale per activation tensor (weights symmetric too)
    exact: bool  # whether a float decomposition of log/tan and sub-8-bit quantizers may be exported


#: uint8 asymmetric activations (ONNX Runtime's fast x86 path; OpenVINO runs the same QDQ graph)
ONNXRUNTIME = Lowering("onnxruntime", "ONNX Runtime", symmetric=False, exact=True)
#: explicit quantization: signed int8, zero point 0 everywhere, one scale per activation tensor
TENSORRT = Lowering("tensorrt", "TensorRT", symmetric=True, exact=False)
#: CoreML's W8A8 quantize/dequantize ops (Apple's activation quantizer is symmetric too)
COREML = Lowering("coreml", "CoreML", symmetric=True, exact=False)

LOWERINGS = {t.name: t for t in (ONNXRUNTIME, TENSORRT, COREML)}
