"""TensorRT: ``format: tensorrt`` writes the ONNX graph and builds an ``.engine`` from it on this machine's
NVIDIA GPU (FP16 engines from the FP32 graph, INT8 engines from the QDQ graph lowered for TensorRT)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from edgevit.quant.targets import TENSORRT
from edgevit.runtimes.base import ExportBase, OnnxGraphFields, Runtime, register
from edgevit.runtimes.onnxruntime import artifact_row, tensorrt_rules_check, write_graph

log = logging.getLogger("edgevit")


class TensorRTExport(ExportBase, OnnxGraphFields):
    """A serialized TensorRT engine (built here; the ONNX it is built from is kept beside it)."""

    format: Literal["tensorrt"] = "tensorrt"
    precision: Literal["fp32", "fp16", "int8"] = "fp16"
    target: Literal["tensorrt"] = Field("tensorrt", description="an engine takes the QDQ graph lowered for "
                                        "TensorRT (signed int8, zero point 0)")
    sparse: bool = Field(False, description="let TensorRT use 2:4 sparse kernels for weights that follow the pattern "
                         "(kSPARSE_WEIGHTS); the report lists the layers that took them")

    @model_validator(mode="after")
    def _uniform_kernels(self) -> "TensorRTExport":
        if self.precision == "int8" and self.lowering == "exact":
            raise ValueError("lowering: exact cannot target TensorRT, whose kernels take only uniform int8 "
                             "quantize/dequantize; use lowering: uniform or float")
        return self


@register
class TensorRT(Runtime):
    name, label, format, suffix, config = "tensorrt", "TensorRT", "tensorrt", ".engine", TensorRTExport
    file_kind, file_noun, short = "FP32 ONNX", "TensorRT engine", "TensorRT"
    lowering = TENSORRT
    device_runner = "tensorrt_runner.py"
    platforms = ("linux", "win32")

    def runs_fp16(self, cfg) -> bool:
        return cfg.precision != "fp32"

    def unavailable(self, cfg=None) -> str | None:
        from edgevit.exporters.tensorrt import unavailable

        why = unavailable()
        return f"{why}; export the ONNX (target: tensorrt) and build the engine on the device with the trtexec " \
               "line in its report" if why else None

    def export(self, job, ctx) -> dict:
        from edgevit.exporters.tensorrt import build_engine

        cfg = job.cfg
        onnx_file = job.file.removesuffix(self.suffix) + ".onnx"
        # FP16 engines are built from the FP32 graph (TensorRT's own FP16 conversion, LayerNorms pinned)
        graph_cfg = cfg.model_copy(update={"precision": "fp32"}) if cfg.precision == "fp16" else cfg
        facts = write_graph(job, ctx, onnx_file, graph_cfg, cfg.precision, cfg.sparse)
        eng = build_engine(ctx.stage / onnx_file, ctx.stage / job.file, cfg.precision, cfg.sparse,
                           layernorm_fp32=job.keep_layernorm_fp32)
        if eng["layers"]["fell_back"]:
            log.warning("TensorRT: %d math layer(s) did not run in %s: %s", len(eng["layers"]["fell_back"]),
                        cfg.precision, ", ".join(eng["layers"]["fell_back"][:5]))
        if eng["sparsity"] is not None:
            log.info("TensorRT sparse kernels: %d layer(s) eligible, %d picked", len(eng["sparsity"]["eligible"]),
                     len(eng["sparsity"]["picked"]))
        facts["engine"] = eng
        size = (ctx.stage / job.file).stat().st_size
        log.info("exported %s (%.2f MB, %s)", job.file, size / 1e6, facts["simplifier"])
        return artifact_row(job, self, job.file, size, facts)

    def local_runner(self, path: Path, device):
        from edgevit.exporters.tensorrt import EngineRunner

        return EngineRunner(path) if self.unavailable() is None else None

    def checks(self, row: dict) -> list[dict]:
        return tensorrt_rules_check(row)
