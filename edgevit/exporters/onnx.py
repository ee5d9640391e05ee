"""ONNX export: FP32 / FP16, simplified, checked, with the metadata a mobile app needs.

Every ONNX file edgevit writes goes through :func:`write_onnx`, which stamps the metadata
(``labels``, ``mean``, ``std`` as JSON lists on the 0-1 scale, ``input_size``, ``edgevit_version``,
``recipe``), runs the ONNX checker and writes atomically (temp file + rename).
"""
from __future__ import annotations

import io
import json
import logging
import os
import warnings
from collections import Counter
from pathlib import Path

import onnx
import torch
from torch import nn

from edgevit._version import __version__
from edgevit.errors import RunFailure
from edgevit.exporters.compact import compact
from edgevit.exporters.qdq import (drop_zero_weight_zero_points, fold_weight_quantizers, fold_weight_transposes,
                                   fuse_erf_gelu, ort_int8_audit, tensorrt_qdq_problems)

log = logging.getLogger("edgevit")

# onnxruntime 1.31 reads IR <= 13 while onnx 1.23 writes 14 by default.
MAX_IR_VERSION = 10


def artifact_metadata(info, recipe_name: str, precision: str) -> dict[str, str]:
    """What every artifact carries (ONNX metadata_props, CoreML user-defined metadata, OpenVINO rt_info): labels,
    preprocessing and provenance; lists are JSON so any app can parse them."""
    return {
        "labels": json.dumps(list(info.labels)),
        "mean": json.dumps([float(v) for v in info.mean]),
        "std": json.dumps([float(v) for v in info.std]),
        "input_size": json.dumps([3, info.input_size, info.input_size]),
        "crop_pct": json.dumps(info.crop_pct),
        "interpolation": info.interpolation,
        "resize": getattr(info, "resize", "short_side"),
        "precision": precision,
        "model_source": info.source,
        "edgevit_version": __version__,
        "recipe": recipe_name,
    }


def onnx_metadata(info, recipe_name: str, precision: str) -> dict[str, str]:
    """The metadata_props of an ONNX artifact: :func:`artifact_metadata` and the layout its tensor input takes."""
    return artifact_metadata(info, recipe_name, precision) | {
        "input_layout": "NCHW, RGB, scaled to 0-1 then (x - mean) / std"}


def read_metadata(path: Path | str) -> dict[str, str]:
    """metadata_props of an ONNX file as a dict."""
    m = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in m.metadata_props}


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """How many nodes of each op type the main graph holds."""
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


def write_onnx(model: onnx.ModelProto, path: Path, metadata: dict[str, str]) -> Path:
    """Stamp metadata, check, and write atomically. Returns the path."""
    del model.metadata_props[:]
    for k, v in metadata.items():
        model.metadata_props.add(key=k, value=v)
    model.producer_name = "edgevit"
    model.producer_version = __version__
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise RunFailure(f"the exported ONNX for {path.name} fails the ONNX checker: {str(e).splitlines()[0]}") from e
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(model.SerializeToString())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def torch_to_onnx(model: nn.Module, input_size: int, opset: int = 17, dynamic_batch: bool = True) -> onnx.ModelProto:
    """Trace a model to ONNX with the TorchScript exporter (the dynamo one cannot hold opset 17
    for mobilevit/levit/fastvit here). nn.LayerNorm stays one LayerNormalization op."""
    model = model.eval()
    dummy = torch.zeros(1, 3, input_size, input_size)
    buf = io.BytesIO()
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (dummy,), buf, opset_version=opset, input_names=["input"],
                              output_names=["logits"], dynamic_axes=axes, dynamo=False,
                              do_constant_folding=True)
        except Exception as e:
            raise RunFailure(f"torch.onnx.export failed: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    return onnx.load_from_string(buf.getvalue())


def simplify(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """onnxsim (constant folding, shape inference, dead-node removal); the original if it fails."""
    import onnxsim

    try:
        # onnxsim folds GELU's final "* 0.5" into the next conv's weights; ONNX Runtime then no longer
        # recognises the GELU, runs it as four elementwise ops and reorders layouts around them
        # (EfficientFormer(V2), FastViT, TinyViT FP32: 1.16-1.36x slower at batch 1); without this pass it fuses
        # every GELU
        simplified, ok = onnxsim.simplify(model, skipped_optimizers=["fuse_preceding_mul_into_conv"])
    except Exception as e:  # onnxsim raises bare RuntimeErrors from C++
        log.warning("onnxsim failed (%s); keeping the unsimplified graph", str(e).splitlines()[0])
        return model, f"onnxsim failed: {str(e).splitlines()[0]}"
    if not ok:
        log.warning("onnxsim could not validate the simplified graph; keeping the original")
        return model, "onnxsim check failed"
    return simplified, f"onnxsim {onnxsim.__version__}"


def to_fp16(model: onnx.ModelProto, layernorm_fp32: bool = False) -> onnx.ModelProto:
    """FP16 weights and compute, FP32 inputs/outputs (ONNX Runtime's own converter); with
    ``layernorm_fp32`` the LayerNormalization nodes compute in FP32 between Casts."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    block = DEFAULT_OP_BLOCK_LIST + ["LayerNormalization"] * layernorm_fp32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False, op_block_list=block)
    return topological_sort(half)


def layernorm_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the LayerNormalization nodes (TensorRT names its layers after them)."""
    return [n.name for n in model.graph.node if n.op_type == "LayerNormalization"]


def topological_sort(model: onnx.ModelProto) -> onnx.ModelProto:
    """Reorder graph nodes so each comes after its producers (the FP16 converter appends its
    input/output Casts at the end, which ORT tolerates but the ONNX checker rejects)."""
    graph = model.graph
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise RunFailure(f"ONNX graph has a cycle or an undefined input near node {rest[0].name!r}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)
    return model


def export_onnx(model: nn.Module, info, cfg, path: Path, recipe_name: str, layernorm_fp32: bool = False) -> dict:
    """Export one ONNX artifact as an ``ExportConfig`` asks; returns facts for the report.
    ``layernorm_fp32``: an FP16 export keeps its LayerNorms in FP32 (see ``export.fp16``)."""
    proto = torch_to_onnx(model, info.input_size, cfg.opset, cfg.dynamic_batch)
    facts: dict = {}
    if cfg.precision == "int8":
        facts["int8_weight_tensors"] = fold_weight_quantizers(proto)
        fold_weight_transposes(proto)
    simplifier = "off"
    if cfg.simplify:
        proto, simplifier = simplify(proto)
        if cfg.precision == "int8":  # weights the simplifier folded into constants only now (timm mobilevit_xxs)
            facts["int8_weight_tensors"] += fold_weight_quantizers(proto)
            fold_weight_transposes(proto)
    if cfg.precision == "fp16":
        proto = to_fp16(proto, layernorm_fp32)
        facts["layernorm_fp32"] = layernorm_fp32
    compact(proto, numbered=cfg.precision == "int8")
    if cfg.precision == "int8" and cfg.target != "tensorrt":  # TensorRT's rules want every zero point written
        drop_zero_weight_zero_points(proto)
    if cfg.precision == "int8" and cfg.target == "onnxruntime":  # an ORT op (OpenVINO reads it too); a graph for
        facts["gelu_fused"] = fuse_erf_gelu(proto)                # TensorRT keeps standard ONNX ops only
    facts["layernorm_nodes"] = layernorm_nodes(proto)
    meta = onnx_metadata(info, recipe_name, cfg.precision)
    if cfg.precision == "int8" and getattr(cfg, "target", None):  # a runner reads whose integer kernels it is for
        meta["target"] = cfg.target
    write_onnx(proto, path, meta)
    if cfg.precision == "int8":
        facts["target"] = cfg.target
        facts["lowering"] = cfg.lowering
        facts["ort_int8"] = ort_int8_audit(path)
        facts["tensorrt_problems"] = tensorrt_qdq_problems(proto)
    ops = op_counts(proto)
    return {"opset": cfg.opset, "simplifier": simplifier, "ops": ops, "nodes": sum(ops.values()), **facts}
