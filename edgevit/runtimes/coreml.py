"""CoreML: ``format: coreml`` converts to an ``.mlpackage`` image classifier for Xcode (FP16, W8 or
palettized weights, W8A8 from the quantize stage). Converts on Linux; prediction needs macOS, so what
can be checked here is the package itself."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from edgevit.quant.targets import COREML
from edgevit.runtimes.base import ExportBase, Runtime, register
from edgevit.runtimes.onnxruntime import artifact_row

log = logging.getLogger("edgevit")

#: the program ops that hold weights stored with each compression
COMPRESSION_OPS = {"w8": ("constexpr_affine_dequantize", "constexpr_blockwise_shift_scale"),
                   "palettize4": ("constexpr_lut_to_dense",), "palettize6": ("constexpr_lut_to_dense",),
                   "sparse": ("constexpr_sparse_to_dense", "constexpr_sparse_blockwise_shift_scale"),
                   "w8-sparse": ("constexpr_sparse_blockwise_shift_scale",)}
SPARSE = ("sparse", "w8-sparse")  # compressions that store the pruning stage's zeros sparse


class CoreMLExport(ExportBase):
    """A CoreML mlprogram package."""

    format: Literal["coreml"] = "coreml"
    precision: Literal["fp32", "fp16", "int8"] = Field("fp16", description="int8: W8A8, quantize/dequantize ops "
                                                       "from the quantize stage's scales, with compression: w8")
    compression: Literal["none", "w8", "palettize4", "palettize6", "sparse", "w8-sparse"] = Field(
        "none", description="weight compression of the converted program: w8 (int8 per channel), palettize4/6 "
        "(k-means look-up tables), sparse (the pruning stage's zeros stored sparse), w8-sparse (int8 per "
        "channel with the zeros stored sparse: both at once)")
    deployment_target: Literal["iOS16", "iOS17", "iOS18"] = Field("iOS17", description="minimum deployment target")

    @model_validator(mode="after")
    def _int8_fits(self) -> "CoreMLExport":
        if self.precision == "int8" and self.compression not in ("w8", "w8-sparse"):
            raise ValueError("compression: a CoreML int8 artifact (W8A8: the quantize stage's activation scales as "
                             "quantize/dequantize ops) stores int8 weights; set compression: w8 (or w8-sparse "
                             "after pruning)")
        if self.compression == "w8-sparse" and self.deployment_target != "iOS18":
            raise ValueError("deployment_target: compression w8-sparse (int8 values under a sparse mask, "
                             "constexpr_sparse_blockwise_shift_scale) needs iOS18")
        if self.precision == "int8" and self.lowering == "exact":
            raise ValueError("lowering: exact cannot target CoreML, whose kernels take only uniform int8 "
                             "quantize/dequantize; use lowering: uniform or float")
        return self

    def sub8bit_problem(self, key: str, bits: int, index: int) -> str | None:
        return (f"{key}: {bits}-bit activations or weights cannot go into a CoreML int8 artifact (8-bit quantize "
                f"ops only); quantize with 8 bits, or export.{index}: compression: palettize4 for 4-bit weights")


@register
class CoreML(Runtime):
    name, label, format, suffix, config = "coreml", "CoreML", "coreml", ".mlpackage", CoreMLExport
    file_kind, file_noun, short = "package", "CoreML package", "CoreML"
    lowering = COREML
    device_runner = "coreml_runner.py"
    platforms = ("darwin",)

    def runs_fp16(self, cfg) -> bool:
        return cfg.precision != "fp32"

    def unavailable(self, cfg=None) -> str | None:
        from edgevit.exporters.coreml import unavailable

        return unavailable(cfg.compression if cfg is not None else "none")

    def export(self, job, ctx) -> dict:
        from edgevit.exporters.coreml import export_coreml
        from edgevit.quant.sites import act_sites

        cfg, path = job.cfg, ctx.stage / job.file
        facts = export_coreml(job.source, ctx.info, path, cfg.compression, cfg.precision, cfg.deployment_target,
                              ctx.recipe.name, job.keep_layernorm_fp32)
        facts["expected"] = {"input_size": ctx.info.input_size, "labels": list(ctx.info.labels),
                             "sparse_layers": ctx.nm_layers if cfg.compression in SPARSE else None,
                             "activation_sites": len(act_sites(job.source, quantized=True))
                             if cfg.precision == "int8" else None}
        log.info("exported %s (%.2f MB, compressed weight ops: %s)", path.name, facts["size_bytes"] / 1e6,
                 facts["compressed_ops"] or "none")
        row = artifact_row(job, self, job.file, facts["size_bytes"], facts)
        row["not_measured"] = "accuracy and latency: CoreML prediction needs macOS (no Mac device profile here)"
        return row

    def local_runner(self, path: Path, device):
        return None  # prediction needs macOS; a Mac is reached as an SSH device

    def read_metadata(self, path: Path) -> dict[str, str]:
        from edgevit.exporters.coreml import inspect_package

        return inspect_package(path)["metadata"]

    def checks(self, r: dict) -> list[dict]:
        """What a saved .mlpackage shows without macOS: a ready classifier, and weights stored compressed."""
        e = r["export"]
        want = e["expected"]
        meta = e["metadata"]
        ok = (e["input"]["type"] == "imageType" and e["input"]["width"] == e["input"]["height"] == want["input_size"]
              and e["predicted_label"] in e["outputs"] and e["labels"] == want["labels"]
              and all(k in meta for k in ("mean", "std", "labels", "input_size")))
        checks = [{"name": f"{r['name']}: CoreML package is an image classifier Xcode can use", "ok": ok,
                   "detail": f"input {e['input']['name']} {e['input']['type']} {e['input']['width']}x"
                             f"{e['input']['height']}, outputs {', '.join(e['outputs'])}, {len(e['labels'])} labels, "
                             "preprocessing in the metadata"}]
        if want.get("activation_sites"):
            n, sites, traced = e["activation_quantize_ops"], want["activation_sites"], e["traced_quantize_ops"]
            merged = sites - traced["distinct"]
            checks.append({"name": f"{r['name']}: activations quantized (W8A8)",
                           "ok": traced["all"] >= sites and n >= traced["distinct"],
                           "detail": f"{n} quantize ops in the program for {sites} quantized activation sites"
                                     + (f"; {merged} compute what another site computes (merged into its op)"
                                        if merged > 0 else "")})
        kinds = COMPRESSION_OPS.get(e["compression"])
        if kinds:
            # layers, not ops: equal weights are stored once, and their layers read the same ops
            found = max(e["compressed_layers"].get(k, 0) for k in kinds)
            ops = sum(e["compressed_ops"].get(k, 0) for k in kinds)
            need = want["sparse_layers"] or 1
            checks.append({"name": f"{r['name']}: weights stored {e['compression']}", "ok": found >= need,
                           "detail": f"{found} layers read weights stored by {'/'.join(kinds)} ops (needs >= {need}; "
                                     f"{ops} such ops in the program); package {e['size_bytes'] / 1e6:.2f} MB"})
        return checks
