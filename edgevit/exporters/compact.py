"""Making an ONNX file small without changing what it computes.

The TorchScript exporter names every tensor after its producing node's module path
("/stages/stages.2/.../DequantizeLinear_output_0"), keeps shape annotations (value_info) and writes
every scale and zero point as its own Constant node. On a 1 M-parameter INT8 model that structure
is about 30 % of the file. :func:`compact` keeps node names (profiles and audits refer to them) and
the graph's input/output names, and:

* drops value_info (runtimes infer shapes themselves),
* turns Constant nodes into initializers (Q/DQ nodes with equal scales / zero points share one),
* drops the redundant scope prefixes of node names ("/stages/stages.2/stages.2.1/attn/MatMul" ->
  "stages.2.1/attn/MatMul": each nested Sequential child repeats its parent's name) and abbreviates
  the op of Q/DQ nodes (".../input_quant/QuantizeLinear" -> ".../input_quant/Q"; the module path, which
  profiles are attributed by, stays), and the scope prefixes of tensor names, or renames tensors to
  short ids (INT8 artifacts),
* drops attributes that hold their default value (a Conv's unit strides and dilations, zero pads,
  ``group: 1``; a Reshape's ``allowzero: 0``).
"""
from __future__ import annotations

import itertools

import onnx
from onnx import numpy_helper


def _has_subgraphs(graph: onnx.GraphProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for n in graph.node for a in n.attribute)


def constants_to_initializers(graph: onnx.GraphProto) -> int:
    """Replace ``Constant`` nodes by initializers (equal scalars share one); returns how many."""
    # Only the scales and zero points of Q/DQ nodes are shared: a shared input of a compute node (a zero
    # bias, the constant of a Mul) trips tools that edit weights, e.g. ONNX Runtime's quantize_static.
    qdq_only = {o for o in (n.output[0] for n in graph.node if n.op_type == "Constant")}
    for n in graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            qdq_only.difference_update(n.input)
    by_value: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    keep = []
    for n in graph.node:
        attr = n.attribute[0] if n.op_type == "Constant" and len(n.attribute) == 1 else None
        if attr is None or attr.name != "value":
            keep.append(n)
            continue
        t = attr.t
        value = numpy_helper.to_array(t)
        key = (t.data_type, tuple(t.dims), value.tobytes())
        if n.output[0] in qdq_only and key in by_value:
            rename[n.output[0]] = by_value[key]
        else:
            if n.output[0] in qdq_only:
                by_value[key] = n.output[0]
            graph.initializer.append(numpy_helper.from_array(value, n.output[0]))
    removed = len(graph.node) - len(keep)
    del graph.node[:]
    graph.node.extend(keep)
    for n in graph.node:
        for k, i in enumerate(n.input):
            if i in rename:
                n.input[k] = rename[i]
    return removed


def shorten_tensor_names(graph: onnx.GraphProto) -> None:
    """Drop the redundant scope prefixes of tensor names too (graph inputs and outputs keep theirs)."""
    fixed = {v.name for v in graph.input} | {v.name for v in graph.output} | {""}
    taken = set(fixed) | {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if name in fixed or not name.startswith("/"):
            return name
        if name not in names:
            new = short_node_name(name)
            names[name] = new if new not in taken else name
            taken.add(names[name])
        return names[name]

    _rename_tensors(graph, short)


def _rename_tensors(graph: onnx.GraphProto, rename) -> None:
    for t in graph.initializer:
        t.name = rename(t.name)
    for n in graph.node:
        n.input[:] = [rename(i) for i in n.input]
        n.output[:] = [rename(o) for o in n.output]


_ID_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _short_id(k: int) -> str:
    out = ""
    while True:
        k, d = divmod(k, len(_ID_DIGITS))
        out = _ID_DIGITS[d] + out
        if k == 0:
            return out


def number_tensors(graph: onnx.GraphProto) -> None:
    """Rename every tensor except the graph's inputs and outputs to a short id ("1F": base 62, two
    characters up to 3,844 tensors)."""
    fixed = {v.name for v in graph.input} | {v.name for v in graph.output} | {""}
    names: dict[str, str] = {}
    ids = (i for i in map(_short_id, itertools.count()) if i not in fixed)

    def short(name: str) -> str:
        if name in fixed:
            return name
        if name not in names:
            names[name] = next(ids)
        return names[name]

    _rename_tensors(graph, short)


# ops whose list attributes strides/dilations default to ones and pads to zeros (the ONNX operator specs)
_WINDOW_OPS = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool"}


def drop_default_attributes(graph: onnx.GraphProto, opset: int) -> int:
    """Remove the attributes whose value is the one the op has without them; returns how many."""
    removed = 0
    for n in graph.node:
        keep = []
        for a in n.attribute:
            if _is_default(n, a, opset):
                removed += 1
            else:
                keep.append(a)
        if len(keep) < len(n.attribute):
            del n.attribute[:]
            n.attribute.extend(keep)
    return removed


def _is_default(node: onnx.NodeProto, attr: onnx.AttributeProto, opset: int) -> bool:
    value = onnx.helper.get_attribute_value(attr)
    if node.op_type in _WINDOW_OPS and attr.name in ("strides", "dilations", "pads"):
        return all(v == (0 if attr.name == "pads" else 1) for v in value)
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
    except onnx.defs.SchemaError:  # a custom op: its defaults are not known here
        return False
    spec = schema.attributes.get(attr.name)
    if spec is None or not spec.default_value.name:
        return False
    return onnx.helper.get_attribute_value(spec.default_value) == value


# Q/DQ nodes are about 40 % of an INT8 graph's nodes; their op names were a tenth of a 1 M-parameter file's graph
_ABBREVIATED_OPS = {"QuantizeLinear": "Q", "DequantizeLinear": "DQ"}


def short_node_name(name: str) -> str:
    """A node name without scope segments that the next segment repeats as its prefix, and with the op of
    a Q/DQ node abbreviated ("QuantizeLinear_2" -> "Q_2")."""
    parts = [p for p in name.split("/") if p]
    kept = [p for p, nxt in zip(parts, parts[1:] + [""]) if not nxt.startswith(p + ".")]
    if kept:
        op, sep, k = kept[-1].partition("_")
        kept[-1] = _ABBREVIATED_OPS.get(op, op) + sep + k
    return "/".join(kept)


def compact(model: onnx.ModelProto, numbered: bool = False) -> onnx.ModelProto:
    """Drop value_info, turn Constant nodes into initializers, shorten names, leave out default-valued
    attributes (in place).

    ``numbered`` replaces tensor names by ids (smallest file; for INT8 QDQ artifacts). FP32/FP16 files
    keep descriptive tensor names: with bare ids, ONNX Runtime's quantize_static fails on them
    ("shared mode is not supported for weight"), and users quantize those files with other tools."""
    g = model.graph
    del g.value_info[:]
    for n in g.node:
        n.doc_string = ""
        n.name = short_node_name(n.name)
    if _has_subgraphs(g):  # names inside subgraphs may refer to outer tensors: leave them alone
        return model
    constants_to_initializers(g)
    (number_tensors if numbered else shorten_tensor_names)(g)
    drop_default_attributes(g, next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17))
    return model
