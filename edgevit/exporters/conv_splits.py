"""One convolution per part instead of a channel Split of a convolution's output (a graph form for OpenVINO).

EfficientViT's cascaded group attention computes each head's q, k and v with one 1x1 convolution and splits its
output along the channels. OpenVINO 2026.4's CPU plugin runs that Split with its reference kernel on the
convolution's blocked layout: 12-35 us per split on timm ``efficientvit_m0`` at 224 px, a quarter of the BF16 IR's
node time. Three convolutions, each computing its own channels, give the same values without the Split; ONNX
Runtime runs that form slower (its Split is cheap), so only the OpenVINO export rewrites it.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgevit.exporters.qdq import constants, drop_stale_value_info, drop_unused, node_attr

# between the conv and the split: per-tensor quantization (the conv's output quantizer) and a view that keeps the
# shape (EfficientViT's ``view(B, -1, H, W)``)
_PASSING = ("QuantizeLinear", "DequantizeLinear", "Reshape")


def _dims(value_info) -> list | None:
    if not value_info.type.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]


def _shapes_at(model: onnx.ModelProto, batch: int) -> dict[str, list | None]:
    """Every tensor's shape with the inputs' first dimension set to ``batch`` (values of shape arithmetic
    propagated: a view's target computed from ``x.shape`` is known then, which it is not symbolically)."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for i in fixed.graph.input:
        dims = i.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_value = batch
    g = onnx.shape_inference.infer_shapes(fixed, data_prop=True).graph
    return {v.name: _dims(v) for v in [*g.value_info, *g.input, *g.output]}


def _keeps_shape(reshape, shapes: list[dict]) -> bool:
    """Whether ``reshape`` gives its input's shape back at every batch size tried."""
    return all(s.get(reshape.input[0]) is not None and None not in s[reshape.input[0]]
               and s.get(reshape.output[0]) == s[reshape.input[0]] for s in shapes)


def _drop_dead(g: onnx.GraphProto) -> None:
    """Remove the nodes nothing reads any more (a removed view's shape arithmetic)."""
    outputs = {o.name for o in g.output}
    while True:
        used = {i for n in g.node for i in n.input} | outputs
        dead = [n for n in g.node if not any(o in used for o in n.output)]
        if not dead:
            return
        for n in dead:
            g.node.remove(n)


def split_conv_outputs(model: onnx.ModelProto) -> int:
    """Rewrite, in place, each ``Conv -> [QuantizeLinear -> DequantizeLinear] -> [Reshape keeping the shape] ->
    Split(axis=1)`` with constant split sizes and weights into one Conv (and its quantizer pair) per part; returns
    how many splits were rewritten. Weights, their per-channel dequantization scales and zero points and the bias
    are sliced by output channel; a per-tensor output quantizer is repeated for each part. The new convs are named
    after the old one (``<name>_part<i>``), so they belong to the same module path."""
    g = model.graph
    shapes: list[dict] = []  # inferred when a view is met (most graphs have none before a split)
    values = constants(g)
    producer = {o: n for n in g.node for o in n.output}
    readers = Counter(i for n in g.node for i in n.input)
    outputs = {o.name for o in g.output}

    def const(name: str) -> np.ndarray | None:
        return values.get(name)

    def per_channel(name: str, cout: int) -> bool:
        v = const(name)
        return v is not None and v.ndim == 1 and v.shape[0] == cout

    def scalar(name: str) -> bool:
        v = const(name)
        return v is not None and v.size == 1

    rewritten, new_inits = 0, []
    for split in [n for n in g.node if n.op_type == "Split"]:
        sizes = const(split.input[1]) if len(split.input) > 1 and split.input[1] else node_attr(split, "split")
        if sizes is None or node_attr(split, "axis", 0) != 1:
            continue
        chain, t = [], split.input[0]
        while (p := producer.get(t)) is not None and p.op_type in _PASSING and readers[t] == 1 and t not in outputs:
            chain.append(p)
            t = p.input[0]
        conv = producer.get(t)
        if conv is None or conv.op_type != "Conv" or readers[t] != 1 or t in outputs \
                or node_attr(conv, "group", 1) != 1:
            continue
        quant = [p for p in chain if p.op_type != "Reshape"]
        if len(quant) < len(chain) and not shapes:
            shapes += [_shapes_at(model, b) for b in (2, 3)]
        if any(not all(scalar(i) for i in p.input[1:]) for p in quant) or any(
                not _keeps_shape(p, shapes) for p in chain if p.op_type == "Reshape"):
            continue
        w = const(conv.input[1])
        wdq = producer.get(conv.input[1]) if w is None else None
        if wdq is not None and (wdq.op_type != "DequantizeLinear" or (w := const(wdq.input[0])) is None
                                or node_attr(wdq, "axis", 1) != 0 and not all(scalar(i) for i in wdq.input[1:])):
            continue
        cout = w.shape[0] if w is not None else None
        bias = conv.input[2] if len(conv.input) > 2 and conv.input[2] else None
        if cout is None or sum(int(s) for s in sizes) != cout or (bias is not None and not per_channel(bias, cout)) \
                or wdq is not None and not all(scalar(i) or per_channel(i, cout) for i in wdq.input[1:]):
            continue

        def sliced(name: str, lo: int, hi: int, part: int) -> str:
            if scalar(name):
                return name
            new = f"{name}_split{rewritten}_part{part}"  # an initializer may be shared by several convs
            new_inits.append(numpy_helper.from_array(const(name)[lo:hi], new))
            return new

        nodes, lo = [], 0
        for part, (size, out) in enumerate(zip((int(s) for s in sizes), split.output)):
            hi = lo + size
            weight = sliced(conv.input[1] if wdq is None else wdq.input[0], lo, hi, part)
            if wdq is not None:
                deq = f"{wdq.output[0]}_part{part}"
                nodes.append(helper.make_node("DequantizeLinear", [weight, *(sliced(i, lo, hi, part) if i else i
                                                                             for i in wdq.input[1:])],
                                              [deq], name=f"{wdq.name}_part{part}", axis=0))
                weight = deq
            ins = [conv.input[0], weight] + ([sliced(bias, lo, hi, part)] if bias else [])
            y = f"{conv.output[0]}_part{part}"
            node = helper.make_node("Conv", ins, [y], name=f"{conv.name}_part{part}")
            node.attribute.extend(conv.attribute)
            nodes.append(node)
            for p in reversed(quant):  # the output quantizer pair, per part (one scale for every element)
                z = f"{p.output[0]}_part{part}"
                copy = helper.make_node(p.op_type, [y, *p.input[1:]], [z], name=f"{p.name}_part{part}")
                copy.attribute.extend(p.attribute)
                nodes.append(copy)
                y = z
            nodes[-1].output[0] = out
            lo = hi
        at = list(g.node).index(split)
        for k, node in enumerate(nodes):
            g.node.insert(at + k, node)
        for old in [split, *chain, conv]:
            g.node.remove(old)
        rewritten += 1
    if rewritten:
        g.initializer.extend(new_inits)
        _drop_dead(g)
        drop_unused(model)
        drop_stale_value_info(g)
    return rewritten
