"""Lowering a fake-quant model to a real INT8 QDQ ONNX graph, and auditing what runs in INT8.

The exporter turns every fake-quant op into QuantizeLinear -> DequantizeLinear. For weights the
QuantizeLinear has a constant float input: :func:`fold_weight_quantizers` replaces it by the int8
codes themselves (an int8 initializer feeding DequantizeLinear), which is what TensorRT's explicit
quantization expects and what makes the file about 4x smaller.
"""
from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

INT8_OPS = {"QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "MatMulIntegerToFloat",
            "QGemm", "DynamicQuantizeMatMul", "QAttention", "NhwcQLinearConv"}
FLOAT_COMPUTE_OPS = {"Conv", "MatMul", "Gemm", "FusedConv", "FusedMatMul", "FusedGemm", "NchwcConv"}
WEIGHT_ONLY_OPS = {"MatMulNBits"}  # quantized weights, activations quantized on the fly: not the simulation


def node_attr(node: onnx.NodeProto, name: str, default=None):
    """The value of a node's attribute, or ``default`` when it has none of that name."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """The value of every initializer and Constant node's output, by tensor name."""
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    values[n.output[0]] = numpy_helper.to_array(a.t)
    return values


def fold_weight_quantizers(model: onnx.ModelProto) -> int:
    """Replace QuantizeLinear(constant float) by its integer result; returns how many were folded."""
    g = model.graph
    consts = constants(g)
    folded, keep = 0, []
    for n in g.node:
        if n.op_type == "QuantizeLinear" and all(i in consts for i in n.input if i):
            x, scale = consts[n.input[0]].astype(np.float32), consts[n.input[1]].astype(np.float32)
            zp = consts[n.input[2]] if len(n.input) > 2 and n.input[2] else np.zeros((), np.uint8)
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            if scale.ndim == 1 and scale.size > 1:
                shape = [1] * x.ndim
                shape[axis] = -1
                scale, zpv = scale.reshape(shape), zp.reshape(shape).astype(np.int32)
            else:
                zpv = zp.astype(np.int32)
            info = np.iinfo(zp.dtype)
            q = np.clip(np.rint(x / scale) + zpv, info.min, info.max).astype(zp.dtype)
            g.initializer.append(numpy_helper.from_array(q, name=n.output[0]))
            folded += 1
        else:
            keep.append(n)
    del g.node[:]
    g.node.extend(keep)
    drop_unused(model)
    return folded


def fold_weight_transposes(model: onnx.ModelProto) -> int:
    """Store transposed int8 weights instead of DequantizeLinear -> Transpose (how the exporter writes
    a Linear on 3-D input), so every MatMul reads its weight straight from a DequantizeLinear."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    uses: dict[str, int] = Counter(i for n in g.node for i in n.input)
    renamed: dict[str, str] = {}  # a folded Transpose's output -> its DequantizeLinear's
    for n in g.node:
        if n.op_type != "Transpose":
            continue
        dq = producer.get(n.input[0])
        perm = next((list(a.ints) for a in n.attribute if a.name == "perm"), None)
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits or perm != [1, 0] \
                or uses[dq.output[0]] != 1 or uses[dq.input[0]] != 1:
            continue
        w = numpy_helper.to_array(inits[dq.input[0]])
        if w.ndim != 2:
            continue
        inits[dq.input[0]].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(w.T), dq.input[0]))
        axis = next((a for a in dq.attribute if a.name == "axis"), None)
        if axis is None:  # left out: the default, 1, which the transposed weight's channels are not on
            dq.attribute.append(onnx.helper.make_attribute("axis", 0))
        else:
            axis.i = 1 - (axis.i % 2)
        renamed[n.output[0]] = dq.output[0]
    if renamed:  # one pass over the graph for every transpose folded
        keep = [n for n in g.node if n.op_type != "Transpose" or n.output[0] not in renamed]
        for m in keep:
            for k, i in enumerate(m.input):
                if i in renamed:
                    m.input[k] = renamed[i]
        for o in g.output:
            o.name = renamed.get(o.name, o.name)
        del g.node[:]
        g.node.extend(keep)
    return len(renamed)


def drop_zero_weight_zero_points(model: onnx.ModelProto) -> int:
    """Leave out the all-zero zero point of each weight DequantizeLinear (the int8 weight sets the type and
    zero is the default); returns how many. OpenVINO 2026.4 runs a layer whose weight zero point is a constant
    shared with other layers (equal zero points share one initializer) as a float layer on decompressed
    weights: on DeiT-Tiny the attention projections and second MLP layers ran in BF16/FP32, not INT8."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    dropped = 0
    for n in g.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and len(n.input) == 3 and n.input[2] in inits \
                and inits[n.input[2]].data_type == inits[n.input[0]].data_type \
                and not numpy_helper.to_array(inits[n.input[2]]).any():
            del n.input[2]
            dropped += 1
    drop_unused(model)
    return dropped


def quantize_concat_inputs(model: onnx.ModelProto) -> int:
    """Move each per-tensor QuantizeLinear that reads a Concat (and is its only reader) onto the Concat's
    inputs, so the Concat joins integers: ``Q(Concat(a, b))`` -> ``Concat(Q(a), Q(b))``, equal values
    (one scale and zero point for every element). Returns how many were moved.

    OpenVINO 2026.4 computes Concat -> signed int8 QuantizeLinear (zero point 0) -> DequantizeLinear ->
    Conv wrongly on CPU: 15 dB logit SQNR against ONNX Runtime on a one-conv graph (uint8 with zero point
    128 there: exact), 11 dB on the built-in hybrid's symmetric INT8 graph; the integer Concat it computes
    right."""
    g = model.graph
    consts = constants(g)
    producer = {o: n for n in g.node for o in n.output}
    readers = Counter(i for n in g.node for i in n.input)
    outputs = {o.name for o in g.output}
    moved = 0
    for q in [n for n in g.node if n.op_type == "QuantizeLinear"]:
        cat = producer.get(q.input[0])
        if cat is None or cat.op_type != "Concat" or readers[q.input[0]] != 1 or q.input[0] in outputs \
                or q.input[1] not in consts or consts[q.input[1]].size != 1:
            continue
        at = list(g.node).index(cat)
        for k, x in enumerate(cat.input):
            part = onnx.helper.make_node("QuantizeLinear", [x, *q.input[1:]], [f"{q.output[0]}_{k}"],
                                         name=f"{q.name}_{k}")
            part.attribute.extend(q.attribute)
            g.node.insert(at + k, part)
            cat.input[k] = part.output[0]
        cat.output[0] = q.output[0]
        g.node.remove(q)
        moved += 1
    return moved


def _scalar(consts: dict, name: str, value: float) -> bool:
    return name in consts and consts[name].size == 1 and np.isclose(float(consts[name].reshape(())), value,
                                                                     rtol=1e-6, atol=0)


def fuse_erf_gelu(model: onnx.ModelProto) -> int:
    """Replace each exact GELU written out as ``0.5 * x * (1 + Erf(x / sqrt(2)))`` (the form PyTorch
    exports at opset < 20) by ONNX Runtime's ``com.microsoft.Gelu`` node: the op ONNX Runtime's own GELU
    fusion emits, and one OpenVINO reads. Returns how many were replaced.

    ONNX Runtime gives every consumer of a DequantizeLinear its own copy before it optimizes, so when ``x``
    is dequantized (a quantized conv output) the two readers of ``x`` no longer share it, its GELU fusion
    does not match, and the GELU runs as five elementwise ops over the full tensor: EfficientFormerV2-S0's
    INT8 graph ran 1.30x slower at batch 1 (1.62x at batch 32) for that alone."""
    g = model.graph
    consts = constants(g)
    producer = {o: n for n in g.node for o in n.output}
    readers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    outputs = {o.name for o in g.output}

    def only_reader(tensor: str, op: str):
        r = readers.get(tensor, [])
        return r[0] if len(r) == 1 and r[0].op_type == op and tensor not in outputs else None

    def other(node, tensor: str) -> str:
        return node.input[1] if node.input[0] == tensor else node.input[0]

    fused = 0
    for erf in [n for n in g.node if n.op_type == "Erf"]:
        scale = producer.get(erf.input[0])
        if scale is None or only_reader(erf.input[0], "Erf") is not erf:
            continue
        if scale.op_type == "Div" and _scalar(consts, scale.input[1], np.sqrt(2.0)):
            x = scale.input[0]
        elif scale.op_type == "Mul" and any(_scalar(consts, i, np.sqrt(0.5)) for i in scale.input):
            x = other(scale, next(i for i in scale.input if _scalar(consts, i, np.sqrt(0.5))))
        else:
            continue
        add = only_reader(erf.output[0], "Add")
        if add is None or not _scalar(consts, other(add, erf.output[0]), 1.0):
            continue
        mul = only_reader(add.output[0], "Mul")
        if mul is None or other(mul, add.output[0]) != x:
            continue
        half = only_reader(mul.output[0], "Mul")
        if half is None or not _scalar(consts, other(half, mul.output[0]), 0.5):
            continue
        scope, _, op = erf.name.rpartition("/")  # "blocks.0/mlp/act/Erf_1" -> "blocks.0/mlp/act/Gelu_1"
        name = scope + "/" * bool(scope) + op.replace("Erf", "Gelu", 1) if "Erf" in op else f"{erf.name}_gelu"
        gelu = onnx.helper.make_node("Gelu", [x], [half.output[0]], name=name, domain="com.microsoft")
        g.node.insert(list(g.node).index(half), gelu)
        for n in (scale, erf, add, mul, half):
            g.node.remove(n)
        fused += 1
    if fused:
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
        drop_unused(model)
    return fused


def drop_stale_value_info(graph: onnx.GraphProto) -> None:
    """Remove the shape annotations of tensors no node produces any more (after a graph rewrite)."""
    live = {o for n in graph.node for o in n.output}
    infos = [v for v in graph.value_info if v.name in live]
    del graph.value_info[:]
    graph.value_info.extend(infos)


def drop_unused(model: onnx.ModelProto) -> None:
    """Remove the initializers and Constant nodes nothing reads."""
    g = model.graph
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    alive = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(alive)
    nodes = [n for n in g.node if n.op_type != "Constant" or n.output[0] in used]
    del g.node[:]
    g.node.extend(nodes)


def ort_int8_audit(path, threads: int = 1) -> dict:
    """Which compute nodes ONNX Runtime runs in INT8 after its own graph optimizations.

    Optimizes the model in an ORT session, then counts integer kernels (QLinearConv,
    MatMulIntegerToFloat, ...) and the float Conv/MatMul/Gemm left, by name.
    """
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opt_path = str(Path(tmp) / "optimized.onnx")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = opt_path
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        opt = onnx.load(opt_path)
    ops = Counter(n.op_type for n in opt.graph.node)
    int8 = {k: v for k, v in ops.items() if k in INT8_OPS}
    left = [f"{n.op_type}:{n.name}" for n in opt.graph.node if n.op_type in FLOAT_COMPUTE_OPS]
    weight_only = [f"{n.op_type}:{n.name}" for n in opt.graph.node if n.op_type in WEIGHT_ONLY_OPS]
    return {"int8_nodes": sum(int8.values()), "int8_ops": dict(sorted(int8.items())),
            "float_nodes": len(left), "float_left": left, "weight_only": weight_only}


def quantized_layers(model: onnx.ModelProto) -> list[str]:
    """Names of the Conv/MatMul/Gemm nodes that read an int8 weight initializer through DequantizeLinear and
    a DequantizeLinear activation: the layers an integer runtime should run in INT8."""
    g = model.graph
    inits = {t.name for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}

    def dq(name: str) -> onnx.NodeProto | None:
        n = producer.get(name)
        return n if n is not None and n.op_type == "DequantizeLinear" else None

    out = []
    for n in g.node:
        if n.op_type in ("Conv", "MatMul", "Gemm") and len(n.input) >= 2:
            act, weight = dq(n.input[0]), dq(n.input[1])
            if act is not None and weight is not None and weight.input[0] in inits:
                out.append(n.name)
    return out


def tensorrt_qdq_problems(model: onnx.ModelProto) -> list[str]:
    """Where a QDQ graph breaks TensorRT's explicit-quantization rules (empty list: it follows them).

    Rules: Q/DQ are signed int8 with zero point 0; scales are positive constants; weights are int8
    initializers in [-127, 127] read through DequantizeLinear, per-tensor or per output channel;
    activations are quantized per tensor.
    """
    g = model.graph
    consts = constants(g)
    inits = {t.name for t in g.initializer}
    problems: list[str] = []
    for n in g.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        where = f"{n.op_type} {n.name or n.output[0]}"
        scale = consts.get(n.input[1])
        if scale is None:
            problems.append(f"{where}: scale is not a constant")
        elif np.any(scale <= 0):
            problems.append(f"{where}: scale <= 0")
        zp = consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if zp is None:
            problems.append(f"{where}: zero point missing or not constant (its type sets int8 vs uint8)")
        else:
            if zp.dtype != np.int8:
                problems.append(f"{where}: zero point type {zp.dtype} (TensorRT needs int8)")
            if np.any(zp != 0):
                problems.append(f"{where}: nonzero zero point (TensorRT quantization is symmetric)")
        is_weight = n.op_type == "DequantizeLinear" and n.input[0] in inits
        if is_weight:
            w = consts[n.input[0]]
            if w.dtype != np.int8:
                problems.append(f"{where}: weight stored as {w.dtype}, not int8")
            elif w.min(initial=0) < -127:
                problems.append(f"{where}: weight code -128 (TensorRT int8 weights are -127..127)")
        elif scale is not None and scale.size > 1:
            problems.append(f"{where}: per-channel quantization of an activation (TensorRT: per tensor only)")
    return problems
