"""OpenVINO: ``format: openvino`` writes an IR (``.xml`` + ``.bin``) converted as ``openvino.convert_model`` converts
from edgevit's ONNX graph: the FP32 graph (``precision: fp32``, run with f32 inference precision, or
``bf16``: the same graph run in bfloat16, which AMX CPUs execute natively) or the INT8 QDQ graph
(``precision: int8``: OpenVINO turns the Q/DQ pairs into FakeQuantize and runs the quantized layers on
its integer kernels). The inference precision that was validated is stored in the IR
(``runtime_options/INFERENCE_PRECISION_HINT``); OpenVINO 2026.4's CPU plugin does not apply it by itself
(compiled without a config, an IR marked f32 runs in bf16 on a CPU with AVX-512 BF16 or AMX), so edgevit's
runners pass it and the report tells the app to. Labels and preprocessing are stored under ``edgevit`` in
its rt_info. Runs on ``CPU`` here, and on ``GPU`` / ``NPU`` where a device profile's
``options: {device: GPU}`` names them.

The IR's input is fixed to batch 1 (``batch``) where OpenVINO computes that form as it computes the dynamic
one (``fixed_batch``): its CPU plugin compiles a fixed shape into faster kernels than a dynamic batch (the same
IRs at batch 1: 1.10-1.49x on MobileViT-XXS, LeViT-128S, DeiT-Tiny and the built-in models, FP32, BF16 and
INT8), so an app that compiles the file as shipped gets the speed edgevit measured. The graph stays reshapeable:
``model.reshape([N, 3, H, W])`` before compiling runs batch N, which is what edgevit's runners do for batches
of another size.
"""
from __future__ import annotations

import logging
import math
import os
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Literal

import onnx
from pydantic import Field, model_validator

from edgevit.exporters.conv_splits import split_conv_outputs
from edgevit.exporters.onnx import artifact_metadata
from edgevit.exporters.qdq import quantize_concat_inputs, quantized_layers
from edgevit.exporters.qkv_splits import split_qkv_projections
from edgevit.paths import cut
from edgevit.quant.targets import ONNXRUNTIME
from edgevit.runtimes.base import ExportBase, OnnxGraphFields, Runtime, register
from edgevit.runtimes.onnxruntime import OnnxExport, artifact_row, write_graph

log = logging.getLogger("edgevit")
#: the OpenVINO name of each inference precision
HINTS = {"fp32": "f32", "bf16": "bf16", "f16": "f16"}
#: runtime layer types that do the model's arithmetic (what an INT8 artifact should run in integers)
COMPUTE_LAYERS = ("Convolution", "GroupConvolution", "FullyConnected", "MatMul", "Deconvolution")
#: an IR fixed to one batch ships when OpenVINO computes it about as close to its ONNX graph (in ONNX Runtime)
#: as the dynamic-batch IR - logit SQNR at most FIXED_BATCH_MARGIN_DB below the dynamic one's (both capped at
#: FIXED_BATCH_CAP_DB, where float kernels agree to rounding) - or at least FIXED_BATCH_FLOOR_DB from it (INT8
#: kernels of the two forms round differently: the built-in ViT's INT8 IR reads 44.8 dB dynamic, 36.0 fixed).
#: OpenVINO 2026.4's fixed-shape attention kernel computes the built-in hybrid's 4-token attention wrongly in
#: f32 on an AMD EPYC: 24.2 dB (FP32 IR) and 22.7 dB (INT8 IR), against 125.7 and 36.1 dB dynamic
FIXED_BATCH_MARGIN_DB, FIXED_BATCH_CAP_DB, FIXED_BATCH_FLOOR_DB = 3.0, 60.0, 30.0
#: share of the graph's quantized layers OpenVINO may run in float and the check still pass: it keeps a few
#: by its own choice (timm EfficientFormerV2-S0: 5 of 85, the depthwise `v_local` convs), where the bug this
#: check catches left half (shared weight zero points: 13 of a ViT's 26 layers)
FLOAT_SHARE_OK = 0.1


class OpenVINOExport(ExportBase, OnnxGraphFields):
    """An OpenVINO IR."""

    format: Literal["openvino"] = "openvino"
    precision: Literal["fp32", "bf16", "int8"] = Field(
        "fp32", description="fp32 (f32 inference), bf16 (the FP32 graph run in bfloat16, weights stored FP16), "
        "int8 (the QDQ graph from the quantize stage)")
    inference_precision: Literal["auto", "f32", "bf16", "f16"] = Field(
        "auto", description="the INFERENCE_PRECISION_HINT stored in the IR and used to validate it; auto: f32 for "
        "fp32 and int8 (layers left in float compute as the simulation did), bf16 for bf16; for int8 with "
        "quantize.placement: auto on a CPU where OpenVINO runs bf16 by default (AVX-512 BF16 or AMX), the placement "
        "also times the float layers in bf16 and stores bf16 when that candidate is the fastest and agrees with its "
        "simulation")
    batch: int | None = Field(
        1, ge=1, description="the batch the IR's input is fixed to (OpenVINO compiles a fixed shape into faster "
        "CPU kernels than a dynamic one); null: a dynamic batch. Either runs other batches after "
        "model.reshape([N, 3, H, W])")

    @model_validator(mode="after")
    def _float_ops(self) -> "OpenVINOExport":
        if self.precision == "bf16" and self.inference_precision not in ("auto", "bf16"):
            raise ValueError("inference_precision: a bf16 artifact runs in bf16 (leave it auto)")
        if self.batch != 1 and not self.dynamic_batch:
            raise ValueError(f"batch: {self.batch} needs dynamic_batch: true (the ONNX graph behind the IR is "
                             "traced at batch 1 without it)")
        return self

    @property
    def fp16_weights(self) -> bool:
        """Whether float weights are stored FP16: where the IR computes in 16 bits (in bf16 OpenVINO converts them
        anyway); in an INT8 IR those of its float layers (its int8 weights stay int8)."""
        return self.hint in ("bf16", "f16")

    @property
    def hint(self) -> str:
        """The inference precision the IR is compiled with."""
        if self.inference_precision != "auto":
            return self.inference_precision
        return "bf16" if self.precision == "bf16" else "f32"


def _check_images(ctx, n: int = 8):
    """A few of the run's images to compare IR forms on: calibration, else evaluation, else seeded noise."""
    import numpy as np

    images = ctx.sample_images(n)
    if images is not None:
        return images.numpy()
    return np.random.default_rng(0).standard_normal((n, 3, ctx.info.input_size, ctx.info.input_size)).astype(
        np.float32)


def _openvino():
    import openvino

    return openvino


def convert_onnx(path: Path):
    """``openvino.convert_model(path)`` for an ONNX file, without the converter's preprocessing step: with no
    layout, mean or scale given it adds nothing, yet its build was over half of ``convert_model``'s time on the
    built-in hybrid (OpenVINO 2026.4: 0.93 s for the FP32 graph and 1.22 s for the INT8 one, against 0.20 and
    0.34 s here). The same frontend, transformations and converter metadata, so the same IR
    (``tests/test_openvino.py`` compares the bytes); ``convert_model`` itself where those internals are missing."""
    ov = _openvino()
    try:
        from openvino._offline_transformations import (apply_fused_names_cleanup, apply_moc_legacy_transformations,
                                                       apply_moc_transformations,
                                                       compress_quantize_weights_transformation)
        from openvino.frontend import FrontEndManager
    except ImportError:
        return ov.convert_model(str(path))
    frontend = FrontEndManager().load_by_framework("onnx")
    model = frontend.convert(frontend.load(str(path)))
    apply_moc_transformations(model, cf=False, smart_reshape=True)
    compress_quantize_weights_transformation(model)
    apply_moc_legacy_transformations(model, [])
    apply_fused_names_cleanup(model)
    model.set_rt_info(ov.get_version(), "Runtime_version")
    for key, value in (("input_model", f"DIR/{Path(path).name}"), ("is_python_object", False)):
        model.set_rt_info(str(value), ["conversion_parameters", key])
    return model


def _compiled(path_or_model, device: str, hint: str | None, threads: int | None, profile: bool = False,
              batch: int | None = None):
    """The IR (a path or a read model) compiled with its stored inference precision unless ``hint`` is given.
    ``batch``: the batch it will run; an IR fixed to another batch is reshaped to it first, as an app would
    (a dynamic-batch IR is compiled as shipped)."""
    ov = _openvino()
    core = ov.Core()
    model = core.read_model(str(path_or_model)) if isinstance(path_or_model, (str, Path)) else path_or_model
    if batch is not None and _fixed_batch(model) not in (None, batch):
        model = with_batch(model, batch)
    config = {"PERFORMANCE_HINT": "LATENCY"} | ({"PERF_COUNT": True} if profile else {})
    if hint is None and model.has_rt_info(["runtime_options", "INFERENCE_PRECISION_HINT"]):
        hint = model.get_rt_info(["runtime_options", "INFERENCE_PRECISION_HINT"]).astype(str)
    if hint:
        config["INFERENCE_PRECISION_HINT"] = hint
    if threads and device == "CPU":
        config["INFERENCE_NUM_THREADS"] = threads
    return core.compile_model(model, device, config)


def _fixed_batch(model_or_compiled) -> int | None:
    """The batch the input is fixed to (None: dynamic)."""
    first = model_or_compiled.input(0).get_partial_shape()[0]
    return first.get_length() if first.is_static else None


def with_batch(model, batch: int):
    """``model`` with its input fixed to ``batch`` images: itself if it already is, else a reshaped copy."""
    if _fixed_batch(model) == batch:
        return model
    shape = model.input(0).get_partial_shape()
    shape[0] = batch
    model = model.clone()
    model.reshape({model.input(0): shape})
    return model


def fixed_form_ok(fixed_db: float, dynamic_db: float) -> bool:
    """Whether the fixed-batch form computes close enough to the ONNX graph (logit SQNRs, capped)."""
    return fixed_db >= min(dynamic_db - FIXED_BATCH_MARGIN_DB, FIXED_BATCH_FLOOR_DB)


def fixed_batch(model, batch: int | None, hint: str, graph: Path, x) -> tuple[object, dict]:
    """``model`` (as converted) with its input fixed to ``batch`` when OpenVINO computes the fixed form about
    as close to the ONNX ``graph`` run in ONNX Runtime as the dynamic form (``fixed_form_ok``; the dynamic form
    is compiled and compared only when the fixed one is under ``FIXED_BATCH_FLOOR_DB``), else as converted; and
    what was measured on the images ``x`` (fed ``batch`` at a time)."""
    import numpy as np

    from edgevit.validate.accuracy import compare_logits
    from edgevit.validate.latency import int8_dot_saturates
    from edgevit.validate.runners import OrtRunner

    if batch is None or _fixed_batch(model) is not None:
        return model, {"batch": _fixed_batch(model), "reason": "batch: null" if batch is None else
                       f"the graph's input is already fixed to batch {_fixed_batch(model)}"}
    x = np.concatenate([x] * -(-batch // len(x)))[:max(batch, len(x) // batch * batch)]  # whole batches
    chunks = [x[i:i + batch] for i in range(0, len(x), batch)]
    ort = OrtRunner(graph, 1, exact_integers=int8_dot_saturates())  # the graph's own sums, not a saturated copy
    ref = np.concatenate([ort(c) for c in chunks])
    fixed = with_batch(model, batch)

    def sqnr_db(m) -> float:
        compiled = _compiled(m, "CPU", hint, 1)
        out = np.concatenate([compiled(np.ascontiguousarray(c, dtype=np.float32))[compiled.output(0)] for c in chunks])
        return min(compare_logits(out, ref)["sqnr_db"], FIXED_BATCH_CAP_DB)

    sqnr = {"fixed": sqnr_db(fixed)}
    if sqnr["fixed"] < FIXED_BATCH_FLOOR_DB:  # only then does the dynamic form's closeness decide (a compile saved)
        sqnr["dynamic"] = sqnr_db(model)
    ok = "dynamic" not in sqnr or fixed_form_ok(sqnr["fixed"], sqnr["dynamic"])
    facts = {"batch": batch if ok else None, "sqnr_db_vs_onnx": {k: round(v, 1) for k, v in sqnr.items()},
             "images": int(len(x))}
    measured = f"{sqnr['fixed']:.1f} dB logit SQNR " + (
        f"against {sqnr['dynamic']:.1f} dB dynamic" if "dynamic" in sqnr else
        f"(at least {FIXED_BATCH_FLOOR_DB:g} dB)") + f", on {len(x)} images"
    facts["reason"] = f"fixed to batch {batch}: OpenVINO computes it close to the ONNX graph ({measured})" if ok \
        else f"batch left dynamic: OpenVINO computes the IR fixed to batch {batch} further from the ONNX graph " \
             f"({measured})"
    if not ok:
        log.info("%s", facts["reason"])
    return (fixed if ok else model), facts


class OpenVINORunner:
    """An IR compiled on an OpenVINO device (the precision stored in it unless ``hint`` is given), on ``threads``
    (default: the threads the process is given). An IR whose input is fixed to one batch is compiled again,
    reshaped, for a call with another batch size (once per size)."""

    runtime = "openvino"

    def __init__(self, path: Path | str, device: str = "CPU", threads: int | None = None, hint: str | None = None):
        from edgevit.validate.runners import process_threads

        self.model = _openvino().Core().read_model(str(path))
        self._compile = lambda batch: _compiled(self.model, device, hint, threads or process_threads(), batch=batch)
        self.compiled = self._compile(None)
        self._requests: dict[int, tuple] = {}

    def _request(self, batch: int) -> tuple:
        if batch not in self._requests:
            compiled = self.compiled if _fixed_batch(self.compiled) in (None, batch) else self._compile(batch)
            self._requests[batch] = (compiled.create_infer_request(), compiled.output(0))
        return self._requests[batch]

    def __call__(self, x):
        import numpy as np

        request, output = self._request(len(x))
        return np.array(request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})[output], dtype=np.float32)


def node_times(path: Path, device: str, threads: int, x, runs: int, warmup: int = 5) -> dict[str, float]:
    """Mean milliseconds per call of each node OpenVINO executed (its performance counters), by node name
    (OpenVINO keeps the ONNX node names; a fused node carries one of them)."""
    import numpy as np

    request = _compiled(path, device, None, threads, profile=True, batch=len(x)).create_infer_request()
    feed = {0: np.ascontiguousarray(x, dtype=np.float32)}
    for _ in range(warmup):
        request.infer(feed)
    totals: Counter = Counter()
    for _ in range(runs):
        request.infer(feed)
        for p in request.profiling_info:
            totals[p.node_name] += p.real_time.total_seconds() * 1e3 / runs
    return dict(totals)


def default_precision(device: str = "CPU") -> str:
    """The inference precision OpenVINO compiles in on ``device`` without a config (bf16 on CPUs with AMX)."""
    return _openvino().Core().get_property(device, "INFERENCE_PRECISION_HINT").to_string()


def plain_compile(xml: Path, compiled_in: str | None = None) -> tuple[str, str | None]:
    """What an app gets that compiles ``xml`` on the CPU with no config (OpenVINO does not apply the precision
    stored in the IR): the CPU's default inference precision, and OpenVINO's error if that compile fails (on
    CPUs whose default is bf16 some INT8 IRs that compile in f32 do not). ``compiled_in``: a precision the IR
    already compiled in; when it is the default, that compile answers and none is repeated."""
    default = default_precision()
    if default == compiled_in:
        return default, None
    try:
        _openvino().Core().compile_model(str(xml), "CPU")
    except RuntimeError as e:
        return default, _first_reason(str(e))
    return default, None


def _first_reason(message: str, most: int = 300) -> str:
    """OpenVINO's error on one line without its chain of 'Exception from <file>' lines."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip() and not ln.startswith("Exception from")]
    return cut(" ".join(lines) or message.strip(), most)


def layer_precisions(compiled) -> dict:
    """Compute layers of the compiled (runtime) model by the precision they execute in."""
    return dict(sorted(Counter(precision for _, precision in _compute_layers(compiled)).items()))


def int8_count(layers: dict) -> int:
    """How many compute layers of a ``layer_precisions`` table execute in integers."""
    return sum(n for p, n in layers.items() if p in ("i8", "u8"))


def _compute_layers(compiled) -> list[tuple[list[str], str]]:
    """Each compute layer of the compiled model: the graph nodes it was made from, its precision."""
    out = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) in COMPUTE_LAYERS:
            out.append((info["originalLayersNames"].astype(str).split(","), info["runtimePrecision"].astype(str)))
    return out


def float_quantized_layers(compiled, quantized: list[str]) -> list[str]:
    """The graph's quantized layers (``quantized``: node names) that the compiled model runs in float."""
    wanted = set(quantized)
    return sorted(name for names, precision in _compute_layers(compiled) if precision not in ("i8", "u8")
                  for name in names if name in wanted)


def _openvino_form(graph: Path, facts: dict, int8: bool) -> tuple[onnx.ModelProto, Path | None]:
    """The graph OpenVINO is handed, rewritten in place into the form it computes right and fast: each
    quantized Concat joins integers (``quantize_concat_inputs``: equal values, a form OpenVINO computes right),
    each channel Split of a conv's output is one conv per part (``split_conv_outputs``: equal values, without the
    reference-kernel Split) and each float qkv projection unbound by a 5-D transpose is three projections
    (``split_qkv_projections``: equal up to float rounding, without the 5-D transpose and the scale multiplies).
    Also returns the graph without the qkv rewrite, saved beside it, when there was one (``_fixed_form``)."""
    proto = onnx.load(str(graph))
    facts["concat_quantizers_moved"] = quantize_concat_inputs(proto) if int8 else 0
    facts["conv_splits"] = split_conv_outputs(proto)
    split = onnx.ModelProto()
    split.CopyFrom(proto)
    facts["qkv_splits"] = split_qkv_projections(split)
    unsplit = graph.with_name(graph.stem + "-unsplit.onnx") if facts["qkv_splits"] else None
    if unsplit is not None:
        onnx.save(proto, str(unsplit))
    if facts["concat_quantizers_moved"] or facts["conv_splits"] or facts["qkv_splits"]:
        onnx.save(split, str(graph))
    return split, unsplit


def _fixed_form(graph: Path, unsplit: Path | None, convert, cfg, x, facts: dict) -> tuple[object, dict]:
    """The IR converted (by ``convert``) from ``graph``, fixed to ``cfg.batch`` where OpenVINO computes that form
    right (``fixed_batch``). OpenVINO 2026.4 computes some attention forms wrongly at a fixed batch, which form
    depending on the precision (the built-in hybrid's 32 px attention: the graph as exported in f32, the qkv
    rewrite in bf16, 24 dB from the ONNX graph): where only the graph without the qkv rewrite (``unsplit``)
    can be fixed, that one ships, and ``facts`` say so."""
    model, batch = fixed_batch(convert(graph), cfg.batch, cfg.hint, graph, x)
    if unsplit is None or batch["batch"] is not None or "sqnr_db_vs_onnx" not in batch:
        return model, batch
    other, other_batch = fixed_batch(convert(unsplit), cfg.batch, cfg.hint, unsplit, x)
    if other_batch["batch"] is None:
        return model, batch
    db = batch["sqnr_db_vs_onnx"]
    facts["qkv_splits_left"] = (
        f"{facts['qkv_splits']} qkv projection(s) left as exported: OpenVINO computes the IR with them split, fixed "
        f"to batch {cfg.batch}, {db['fixed']:.1f} dB from its ONNX graph ({db['dynamic']:.1f} dB dynamic), and "
        f"this one {other_batch['sqnr_db_vs_onnx']['fixed']:.1f} dB")
    facts["qkv_splits"] = 0
    log.info("%s", facts["qkv_splits_left"])
    return other, other_batch


def fp16_float_weights(model, least: int = 256) -> int:
    """Store an INT8 IR's float weights (the layers left in float, biases) as FP16 constants converted to f32, as
    ``compress_to_fp16`` does for a float IR (OpenVINO 2026.4 skips IRs that hold FakeQuantize); returns how many.
    Constants of fewer than ``least`` values and those of quantization (FakeQuantize ranges, weight
    dequantization scales and zero points) stay f32."""
    ov = _openvino()
    from openvino import opset13

    n = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Constant" or op.get_element_type() != ov.Type.f32 or \
                math.prod(op.get_output_shape(0)) < least:
            continue
        targets = list(op.output(0).get_target_inputs())
        if any(t.get_node().get_type_name() in ("FakeQuantize", "Multiply", "Subtract") for t in targets):
            continue
        weights = opset13.convert(opset13.constant(op.get_data().astype("float16")), ov.Type.f32)
        weights.set_friendly_name(op.get_friendly_name())
        for t in targets:
            t.replace_source_output(weights.output(0))
        n += 1
    return n


_GENERATED_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*(_\d+)+")  # Reshape_15, Reshape_15_1


def _number_generated_names(model) -> None:
    """OpenVINO names the nodes its ONNX frontend and passes create ``<Type>_<n>``, ``n`` a counter of every node
    the process has made, so the same graph converted after other models (the placement's candidates, an earlier
    run in a test or a Ray worker) got other names in its .xml. Those names are numbered by the node's place in
    the graph instead: the same recipe and seed give the same IR bytes. Names from the ONNX graph (module paths)
    are kept."""
    for i, op in enumerate(model.get_ordered_ops()):
        name = op.get_friendly_name()
        if _GENERATED_NAME.fullmatch(name):
            op.set_friendly_name(f"{name.split('_', 1)[0]}_{i}")


@register
class OpenVINO(Runtime):
    name, label, format, suffix, config = "openvino", "OpenVINO", "openvino", ".xml", OpenVINOExport
    file_kind, file_noun, short = "FP32 IR", "OpenVINO IR", "OpenVINO"
    lowering = ONNXRUNTIME  # the same QDQ graph as ONNX Runtime's: one simulated model serves both
    device_runner = "openvino_runner.py"
    local_device = True
    profiles = True
    int8_kernels_saturate = True  # oneDNN's (the built-in hybrid on AVX2: 92.3 % agreement with its simulation)

    def unavailable(self, cfg=None) -> str | None:
        try:
            _openvino()
        except ImportError as e:
            return f"OpenVINO is not installed ({e}); pip install 'edgevit[openvino]'"
        return None

    def export(self, job, ctx) -> dict:
        ov = _openvino()
        cfg = job.cfg
        graph = OnnxExport(precision="int8" if cfg.precision == "int8" else "fp32", lowering=cfg.lowering,
                           opset=cfg.opset, simplify=cfg.simplify, dynamic_batch=cfg.dynamic_batch)
        tmp = ctx.stage / f".{job.file}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            facts = write_graph(job, ctx, f"{tmp.name}/graph.onnx", graph)
            proto, unsplit = _openvino_form(tmp / "graph.onnx", facts, cfg.precision == "int8")
            quantized = quantized_layers(proto) if cfg.precision == "int8" else []

            def convert(graph: Path):
                model = convert_onnx(graph)
                for key, value in artifact_metadata(ctx.info, ctx.recipe.name, cfg.precision).items():
                    model.set_rt_info(value, ["edgevit", key])
                model.set_rt_info(cfg.hint, ["runtime_options", "INFERENCE_PRECISION_HINT"])
                return model

            model, batch = _fixed_form(tmp / "graph.onnx", unsplit, convert, cfg, _check_images(ctx), facts)
            if cfg.fp16_weights and cfg.precision == "int8":
                facts["fp16_float_weights"] = fp16_float_weights(model)
            _number_generated_names(model)
            ov.save_model(model, str(tmp / job.file), compress_to_fp16=cfg.fp16_weights)
            xml, bin_ = ctx.stage / job.file, ctx.stage / job.file.replace(".xml", ".bin")
            os.replace(tmp / bin_.name, bin_)
            os.replace(tmp / job.file, xml)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        compiled = _compiled(xml, "CPU", cfg.hint, 1)
        layers = layer_precisions(compiled)
        # what an app's plain compile gives is said of a shipped IR; a placement candidate is compiled as validated
        default, plain_error = (None, None) if job.candidate else plain_compile(xml, compiled_in=cfg.hint)
        facts |= {"openvino": ov.__version__, "inference_precision": cfg.hint, "weights": bin_.name, "batch": batch,
                  "default_inference_precision": default, "default_compile_error": plain_error,
                  "runtime_layers": layers, "graph_nodes": facts.pop("nodes"), "graph_ops": facts.pop("ops")}
        if cfg.precision == "int8":
            facts |= {"quantized_layers": len(quantized),
                      "quantized_layers_in_float": float_quantized_layers(compiled, quantized)}
        int8 = int8_count(layers)
        facts["details"] = [
            f"OpenVINO {ov.__version__} IR with weights in `{bin_.name}`, converted from the {graph.precision.upper()} "
            f"ONNX graph ({facts['graph_nodes']} nodes, simplifier: {facts['simplifier']}); inference precision "
            f"{cfg.hint} (stored in the IR); input {batch['reason']}",
            "compute layers on CPU by precision: " + (", ".join(f"{n} {p}" for p, n in layers.items()) or "none")
            + (f" ({int8} in INT8)" if cfg.precision == "int8" else "")]
        if facts["conv_splits"]:
            facts["details"].append(f"{facts['conv_splits']} channel splits of a conv's output computed as one conv "
                                    "per part (OpenVINO's CPU runs such a split with its reference kernel)")
        if facts["qkv_splits"]:
            facts["details"].append(f"{facts['qkv_splits']} qkv projection(s) computed as separate q, k and v "
                                    "projections, the attention's scale folded into q's (OpenVINO's CPU runs the 5-D "
                                    "transpose that splits one with its generic permute kernel)")
        if facts.get("qkv_splits_left"):
            facts["details"].append(facts["qkv_splits_left"])
        if facts.get("fp16_float_weights"):
            facts["details"].append(f"weights of the layers left in float stored FP16 ({facts['fp16_float_weights']} "
                                    f"constants; computed in {cfg.hint})")
        if default not in (None, cfg.hint):
            plain = (f"OpenVINO compiles it in {default} and fails on this CPU ({plain_error})" if plain_error
                     else f"this IR runs in {default} on this CPU")
            facts["details"].append(
                f"OpenVINO {ov.__version__.split('-')[0]} does not apply the stored precision by itself: compiled "
                f"without a config {plain}; compile it with "
                f"`{{\"INFERENCE_PRECISION_HINT\": \"{cfg.hint}\"}}` to run what was validated")
        size = sum(p.stat().st_size for p in self.files(xml))
        log.info("exported %s + %s (%.2f MB, inference precision %s)", xml.name, bin_.name, size / 1e6, cfg.hint)
        return artifact_row(job, self, job.file, size, facts)

    def local_runner(self, path: Path, device):
        if self.unavailable() is not None:
            return None
        options = device.options if device is not None and device.runtime == self.name else {}
        return OpenVINORunner(path, str(options.get("device", "CPU")), device.threads if device else None)

    def float_precisions(self, cfg, device) -> list[str]:
        # bf16 where OpenVINO picks it by default (AVX-512 BF16, AMX): an INT8 IR's float layers (LayerNorm, softmax,
        # GELU, the regions left in float) then run at bf16 speed; a device's CPU is not known here
        if cfg.precision != "int8" or cfg.inference_precision != "auto" or device is None or \
                device.kind != "local" or str(device.options.get("device", "CPU")) != "CPU" or \
                self.unavailable() is not None or default_precision() != "bf16":
            return []
        return ["bf16"]

    def error_reason(self, error: Exception) -> str:
        return _first_reason(str(error))

    def profile(self, path: Path, device, x, runs: int) -> dict[str, float]:
        return node_times(path, str(device.options.get("device", "CPU")), device.threads, x, runs)

    def read_metadata(self, path: Path) -> dict[str, str]:
        model = _openvino().Core().read_model(str(path))
        keys = ("labels", "mean", "std", "input_size", "crop_pct", "interpolation", "resize", "model_source",
                "precision")
        return {k: model.get_rt_info(["edgevit", k]).astype(str) for k in keys if model.has_rt_info(["edgevit", k])}

    def input_shape(self, runner) -> list:
        shape = runner.compiled.input(0).get_partial_shape()
        return [d.get_length() if d.is_static else None for d in shape]

    def files(self, path: Path) -> list[Path]:
        return [p for p in (path, path.with_suffix(".bin")) if p.exists()]

    def int8_layers(self, row: dict) -> int | None:
        layers = row["export"].get("runtime_layers")
        return None if layers is None else int8_count(layers)

    def checks(self, row: dict) -> list[dict]:
        if row["precision"] != "int8":
            return []
        e = row["export"]
        layers = e["runtime_layers"]
        int8, total = int8_count(layers), sum(layers.values())
        left = e.get("quantized_layers_in_float", [])
        detail = f"{int8} of {total} compute layers execute in INT8 on CPU " \
                 f"({', '.join(f'{n} {p}' for p, n in layers.items())})"
        if left:
            detail += f"; {len(left)} of the graph's {e['quantized_layers']} quantized layers run in float: " + \
                ", ".join(left[:4]) + (", ..." if len(left) > 4 else "")
        ok = int8 > 0 and len(left) <= FLOAT_SHARE_OK * e.get("quantized_layers", 0)
        return [{"name": f"{row['name']}: OpenVINO runs the quantized layers in INT8", "ok": ok,
                 "detail": detail + (f" (at most {100 * FLOAT_SHARE_OK:g} % may)" if left else "")}]
