"""ONNX Runtime: ``format: onnx`` writes an ``.onnx`` file (FP32, FP16, or INT8 QDQ lowered for the
runtime named by ``target``: ONNX Runtime itself, or TensorRT, which gets the ONNX and a trtexec line), or with
``ort_format: true`` the same graph optimized offline in ONNX Runtime's ``.ort`` format."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from edgevit.quant.targets import ONNXRUNTIME, TENSORRT
from edgevit.runtimes.base import ExportBase, OnnxGraphFields, Runtime, register

log = logging.getLogger("edgevit")
#: the ops ONNX Runtime's QDQ propagation moves a QuantizeLinear backward through (they then run on uint8)
PROPAGATES_Q = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Slice", "MaxPool")


def q_layout_chains(path: Path | str) -> dict[str, list[str]]:
    """Activation quantizers that ONNX Runtime moves backward into Transposes, by quantizer module path
    (``a.b.input_quant``) -> the Transpose nodes it would run on uint8. ORT's QDQ propagation pushes a
    QuantizeLinear up through a chain of ``PROPAGATES_Q`` ops while each output has that one consumer and is
    not a graph output; a uint8 Transpose with small inner dimensions can cost many times the float one here
    (MobileViT's fold at 256 px: 0.56-1.9 ms vs 0.02 ms in float)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {o: n for n in graph.node for o in n.output}
    uses: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    outputs = {o.name for o in graph.output}
    chains = {}
    for q in graph.node:
        if q.op_type != "QuantizeLinear" or q.input[0] not in producer:
            continue
        transposes, tensor = [], q.input[0]
        while (p := producer.get(tensor)) is not None and p.op_type in PROPAGATES_Q and uses.get(tensor) == 1 \
                and tensor not in outputs:
            if p.op_type == "Transpose":
                transposes.append(p.name)
            tensor = p.input[0]
        if transposes:
            chains[q.name.lstrip("/").rsplit("/", 1)[0].replace("/", ".")] = transposes
    return chains


class OnnxExport(ExportBase, OnnxGraphFields):
    """An ONNX file."""

    format: Literal["onnx"] = "onnx"
    precision: Literal["fp32", "fp16", "int8"] = Field("fp32", description="int8: real QDQ from the quantize stage")
    target: Literal["onnxruntime", "tensorrt"] = Field(
        "onnxruntime", description="the runtime the ONNX is for: int8 QDQ graphs are lowered for it (tensorrt: "
        "signed int8, zero point 0 everywhere); with tensorrt the report gives the trtexec line that builds the engine "
        "on the device (an FP16 engine from an fp32 ONNX)")

    ort_format: bool = Field(
        False, description="write the artifact in ONNX Runtime's ORT format (.ort), the graph optimized offline: "
        "what ONNX Runtime Mobile and other reduced builds load, and quicker for any ONNX Runtime to load; "
        "a <name>.required_operators.config beside it lists its operators for a reduced build")

    @model_validator(mode="after")
    def _lowering_fits_target(self) -> "OnnxExport":
        if self.precision == "int8" and self.target == "tensorrt" and self.lowering == "exact":
            raise ValueError("lowering: exact cannot target TensorRT, whose kernels take only uniform int8 "
                             "quantize/dequantize; use lowering: uniform or float")
        if self.ort_format and self.target == "tensorrt":
            raise ValueError("ort_format: TensorRT builds its engine from the ONNX file; set ort_format: false or "
                             "target: onnxruntime")
        return self


def write_graph(job, ctx, onnx_file: str, cfg, engine_precision: str | None = None, sparse: bool = False) -> dict:
    """Write the ONNX graph of ``job`` as ``onnx_file``; facts for the report (with the trtexec line when
    ``engine_precision`` is given, and the weights' sparsity after pruning)."""
    from edgevit.exporters.onnx import export_onnx
    from edgevit.exporters.sparsity import weight_sparsity

    path = ctx.stage / onnx_file
    facts = export_onnx(job.source, ctx.info, cfg, path, ctx.recipe.name, job.keep_layernorm_fp32)
    if engine_precision:
        from edgevit.exporters.tensorrt import trtexec_command

        facts["trtexec"] = trtexec_command(onnx_file, engine_precision, sparse or bool(ctx.nm_layers),
                                           ctx.info.input_size,
                                           fp32_layers=facts["layernorm_nodes"] if job.keep_layernorm_fp32 else ())
    if ctx.recipe.prune is not None:
        nm = ctx.recipe.prune.nm
        facts["sparsity"] = weight_sparsity(path, *((nm.n, nm.m) if nm else (2, 4)))
        if nm:
            facts["sparsity"]["expected_nm_layers"] = ctx.nm_layers
    return facts


def artifact_row(job, runtime: Runtime, file: str, size_bytes: int, facts: dict) -> dict:
    """The result row of an exported artifact (accuracy, parity and latency are added by validation)."""
    return {"name": job.name, "file": file, "format": job.cfg.format, "precision": job.cfg.precision,
            "runtime": runtime.name, "size_bytes": size_bytes, "export": facts, "simulated_by": job.sim_name}


def tensorrt_rules_check(row: dict) -> list[dict]:
    """An INT8 graph lowered for TensorRT follows its explicit-quantization rules."""
    e = row["export"]
    if row["precision"] != "int8" or e.get("target") != "tensorrt":
        return []
    problems = e["tensorrt_problems"]
    return [{"name": f"{row['name']}: QDQ graph follows TensorRT's explicit-quantization rules", "ok": not problems,
             "detail": "signed int8, zero point 0, int8 weights in -127..127, per-tensor activations"
                       if not problems else f"{len(problems)} problem(s), first: {problems[0]}"}]


@register
class OnnxRuntime(Runtime):
    name, label, format, suffix, config = "onnxruntime", "ONNX Runtime", "onnx", ".onnx", OnnxExport
    other_suffixes, storage_fields = (".ort",), ("ort_format",)
    file_kind, file_noun, short = "FP32 ONNX", "ONNX", "ORT"
    lowering = ONNXRUNTIME
    device_runner = "onnxruntime_runner.py"
    local_device = True
    profiles = True
    int8_kernels_saturate = True

    def int8_layers(self, row: dict) -> int | None:
        audit = row["export"].get("ort_int8")
        return None if audit is None else audit["int8_nodes"]

    def lowering_for(self, cfg):
        return TENSORRT if cfg.target == "tensorrt" else ONNXRUNTIME

    def runs_fp16(self, cfg) -> bool:
        return cfg.precision == "fp16" or cfg.target == "tensorrt"  # TensorRT builds INT8 engines with FP16 on

    def file_suffix(self, cfg) -> str:
        return ".ort" if cfg.ort_format else self.suffix

    def export(self, job, ctx) -> dict:
        engine = ("fp16" if job.cfg.precision == "fp32" else job.cfg.precision) if job.cfg.target == "tensorrt" \
            else None
        ort_format = job.file.endswith(".ort")  # the ONNX graph is written beside, saved as .ort, then removed
        graph_file = f".tmp-{job.file.removesuffix('.ort')}.onnx" if ort_format else job.file
        try:
            facts = write_graph(job, ctx, graph_file, job.cfg, engine)
            if ort_format:
                from edgevit.exporters.ort_format import save_ort_format

                facts["ort_format"] = save_ort_format(ctx.stage / graph_file, ctx.stage / job.file)
        finally:
            if ort_format:
                (ctx.stage / graph_file).unlink(missing_ok=True)
        size = (ctx.stage / job.file).stat().st_size
        log.info("exported %s (%.2f MB, %s)", job.file, size / 1e6, facts["simplifier"])
        return artifact_row(job, self, job.file, size, facts)

    def local_runner(self, path: Path, device):
        from edgevit.validate.latency import int8_dot_saturates
        from edgevit.validate.runners import OrtRunner

        # a graph lowered for TensorRT, checked here on a CPU whose integer kernels saturate, runs without them:
        # TensorRT adds int8 products in 32 bits, so the saturated sums would be this CPU's error, not the file's
        stand_in = int8_dot_saturates() and self.read_metadata(path).get("target") == "tensorrt"
        return OrtRunner(path, device.threads if device else None, device.providers if device else None,
                         exact_integers=stand_in)

    def profile(self, path: Path, device, x, runs: int) -> dict[str, float]:
        from edgevit.validate.profiling import ort_node_times

        return ort_node_times(path, device.threads, x, runs)

    def layout_chains(self, path: Path) -> dict[str, list[str]]:
        return q_layout_chains(path)

    def read_metadata(self, path: Path) -> dict[str, str]:
        from edgevit.exporters.onnx import read_metadata

        if Path(path).suffix == ".ort":  # ONNX Runtime's own format: only ONNX Runtime reads it
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.log_severity_level = 3
            meta = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).get_modelmeta()
            return dict(meta.custom_metadata_map)
        return read_metadata(path)

    def input_shape(self, runner) -> list:
        inputs = runner.session.get_inputs()
        return list(inputs[0].shape) if len(inputs) == 1 else [i.shape for i in inputs]

    def checks(self, row: dict) -> list[dict]:
        return tensorrt_rules_check(row)
