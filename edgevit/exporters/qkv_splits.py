"""Separate q, k and v projections instead of one qkv projection split by a 5-D transpose (a graph form for OpenVINO).

timm's attention (ViT, DeiT, MobileViT and the built-in models) computes q, k and v with one Linear, views its output
as ``(B, N, 3, heads, head_dim)``, permutes it to ``(3, B, heads, N, head_dim)`` and unbinds the first axis; the
exported scaled-dot-product attention then multiplies q and the transposed k by the square root of the scale.
OpenVINO 2026.4's CPU plugin runs the 5-D Transpose with its generic permute kernel (80 us per block at 256 tokens on
timm ``mobilevit_xxs`` in bf16) and keeps the two multiplications outside its fused attention. Three projections,
each viewed as ``(B, N, heads, head_dim)`` and transposed to ``(B, heads, N, head_dim)``, with both scale factors
folded into q's weights and bias, give the same values up to float rounding (4-7 % less time for the BF16 IR of
``mobilevit_xxs``, 1.5-3 % for DeiT-Tiny). Only float projections are rewritten: a quantized one is left as it is.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgevit.exporters.qdq import constants, drop_stale_value_info, drop_unused, node_attr

_UNBIND_PERM = [2, 0, 3, 1, 4]  # (B, N, 3, h, d) -> (3, B, h, N, d)


def _projection(node, values: dict) -> tuple[np.ndarray, int] | None:
    """A float Linear's weight as (in, out) and which axis of the stored tensor is ``out``, or None when the node
    is not a float projection by a constant (a dequantized weight is not a constant)."""
    w = values.get(node.input[1]) if len(node.input) > 1 else None
    if w is None or w.ndim != 2 or w.dtype != np.float32:
        return None
    if node.op_type == "MatMul":
        return w, 1
    if node.op_type == "Gemm" and node_attr(node, "alpha", 1.0) == 1.0 and node_attr(node, "beta", 1.0) == 1.0 \
            and not node_attr(node, "transA", 0):
        return w, 0 if node_attr(node, "transB", 0) else 1
    return None


def _bias(node, values: dict, width: int) -> tuple[str, int] | None:
    """The bias input of a Gemm or a bias Add (its name and which input it is) when it is a float vector."""
    inputs = node.input[2:3] if node.op_type == "Gemm" else node.input
    for i, name in enumerate(inputs):
        v = values.get(name)
        if v is not None and v.shape == (width,) and v.dtype == np.float32:
            return name, i + (2 if node.op_type == "Gemm" else 0)
    return None


def _squeezed_axes(node, values: dict) -> list | None:
    axes = values.get(node.input[1]) if len(node.input) > 1 and node.input[1] else node_attr(node, "axes")
    return None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]


def split_qkv_projections(model: onnx.ModelProto) -> int:
    """Rewrite, in place, each ``MatMul|Gemm -> [Add bias] -> Reshape(.., .., 3, h, d) -> Transpose(2, 0, 3, 1, 4)
    -> Split(axis 0) -> Squeeze(0) x 3`` with a constant float weight into three projections, each ``-> [Add] ->
    Reshape(.., .., h, d) -> Transpose(0, 2, 1, 3)``; where q and the transposed k are then each multiplied by a
    constant scalar and both feed one MatMul, the two factors are folded into q's weights and bias. Returns how many
    qkv projections were rewritten. The new nodes are named after the ones they replace (``<name>_q``, ``_k``,
    ``_v``), so they keep the module path that profiles and regions go by."""
    g = model.graph
    values = constants(g)
    producer = {o: n for n in g.node for o in n.output}
    readers: dict[str, list] = defaultdict(list)
    for n in g.node:
        for i in n.input:
            readers[i].append(n)
    outputs = {o.name for o in g.output}

    def only_reader(tensor: str, op: str):
        r = readers.get(tensor, [])
        return r[0] if len(r) == 1 and r[0].op_type == op and tensor not in outputs else None

    def scalar_mul(tensor: str):
        """The Mul by a constant scalar that alone reads ``tensor``, and the scalar."""
        mul = only_reader(tensor, "Mul")
        if mul is None:
            return None, None
        other = mul.input[1] if mul.input[0] == tensor else mul.input[0]
        v = values.get(other)
        return (mul, float(v.reshape(-1)[0])) if v is not None and v.size == 1 else (None, None)

    removed, added_after, new_inits, rewritten = set(), {}, [], 0
    for tr in [n for n in g.node if n.op_type == "Transpose" and list(node_attr(n, "perm", [])) == _UNBIND_PERM]:
        view = producer.get(tr.input[0])
        split = only_reader(tr.output[0], "Split")
        if view is None or view.op_type != "Reshape" or split is None or len(split.output) != 3 \
                or only_reader(view.output[0], "Transpose") is not tr or node_attr(split, "axis", 0) != 0:
            continue
        sizes = values.get(split.input[1]) if len(split.input) > 1 and split.input[1] else node_attr(split, "split")
        shape = values.get(view.input[1])
        if sizes is not None and list(np.asarray(sizes).reshape(-1)) != [1, 1, 1] or shape is None \
                or shape.shape != (5,) or shape[2] != 3 or min(shape[3], shape[4]) <= 0:
            continue
        squeezes = [only_reader(o, "Squeeze") for o in split.output]
        if any(s is None or _squeezed_axes(s, values) != [0] for s in squeezes):
            continue
        heads, dim = int(shape[3]), int(shape[4])
        width = heads * dim
        source = producer.get(view.input[0])
        add = source if source is not None and source.op_type == "Add" else None
        bias = _bias(add, values, 3 * width) if add is not None else None
        proj = producer.get(add.input[1 - bias[1]]) if bias is not None else source
        if proj is None or (add is not None and (bias is None or proj.op_type != "MatMul")) or any(
                len(readers[o]) != 1 or o in outputs for o in [*proj.output, *((add.output) if add else [])]):
            continue
        found = _projection(proj, values)
        if found is None:
            continue
        w, axis = found
        if w.shape[axis] != 3 * width:
            continue
        if proj.op_type == "Gemm" and len(proj.input) > 2 and proj.input[2]:
            bias = _bias(proj, values, 3 * width)
            if bias is None:
                continue
        # the attention's scale, applied to q and to the transposed k, folded into q's projection
        folded, factor = [], 1.0
        q_mul, q_scale = scalar_mul(squeezes[0].output[0])
        k_t = only_reader(squeezes[1].output[0], "Transpose")
        k_mul, k_scale = scalar_mul(k_t.output[0]) if k_t is not None and list(node_attr(k_t, "perm", [])) == \
            [0, 1, 3, 2] else (None, None)
        if q_mul is not None and k_mul is not None and (scores := only_reader(q_mul.output[0], "MatMul")) is not None \
                and list(scores.input) == [q_mul.output[0], k_mul.output[0]]:
            folded, factor = [(q_mul, squeezes[0].output[0]), (k_mul, k_t.output[0])], q_scale * k_scale

        nodes = []
        view_shape = f"{view.name}_per_part_shape_{rewritten}"
        new_inits.append(numpy_helper.from_array(np.array([shape[0], shape[1], heads, dim], np.int64), view_shape))
        for part, tag in enumerate("qkv"):
            scale = np.float32(factor if part == 0 else 1.0)
            lo, hi = part * width, (part + 1) * width
            weight = f"{proj.input[1]}_{tag}{rewritten}"
            new_inits.append(numpy_helper.from_array(np.ascontiguousarray(
                (w[:, lo:hi] if axis == 1 else w[lo:hi]) * scale), weight))
            biased = []
            if bias is not None:
                biased = [f"{bias[0]}_{tag}{rewritten}"]
                new_inits.append(numpy_helper.from_array(values[bias[0]][lo:hi] * scale, biased[0]))
            projected = f"{proj.output[0]}_{tag}"
            if proj.op_type == "Gemm":
                nodes.append(helper.make_node("Gemm", [proj.input[0], weight, *biased], [projected],
                                              name=f"{proj.name}_{tag}", transB=int(axis == 0)))
            else:
                nodes.append(helper.make_node("MatMul", [proj.input[0], weight], [projected],
                                              name=f"{proj.name}_{tag}"))
                if add is not None:
                    nodes.append(helper.make_node("Add", [projected, *biased], [f"{add.output[0]}_{tag}"],
                                                  name=f"{add.name}_{tag}"))
                    projected = f"{add.output[0]}_{tag}"
            nodes.append(helper.make_node("Reshape", [projected, view_shape], [f"{view.output[0]}_{tag}"],
                                          name=f"{view.name}_{tag}"))
            nodes.append(helper.make_node("Transpose", [f"{view.output[0]}_{tag}"], [squeezes[part].output[0]],
                                          name=f"{tr.name}_{tag}", perm=[0, 2, 1, 3]))
        for mul, unscaled in folded:
            for reader in readers[mul.output[0]]:
                reader.input[:] = [unscaled if i == mul.output[0] else i for i in reader.input]
        removed |= {id(n) for n in [proj, *([add] if add else []), view, tr, split, *squeezes,
                                    *(m for m, _ in folded)]}
        added_after[id(tr)] = nodes
        rewritten += 1
    if rewritten:
        kept = []
        for n in g.node:
            kept += [] if id(n) in removed else [n]
            kept += added_after.get(id(n), [])
        del g.node[:]
        g.node.extend(kept)
        g.initializer.extend(new_inits)
        drop_stale_value_info(g)
        drop_unused(model)
    return rewritten

