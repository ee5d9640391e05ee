"""Sparsity of the weights in an exported ONNX file, read back from the file itself.

A weight is the initializer feeding a Conv, Gemm or MatMul, directly or through a DequantizeLinear
(INT8 QDQ: zero means code == zero point). It is laid out as [out, in] with the input channels of
one kernel position consecutive, the grouping of TensorRT's 2:4 rule.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


def _weights(model: onnx.ModelProto) -> list[tuple[str, str, np.ndarray]]:
    """(node, initializer, nonzero mask as [out, in]) for every Conv/Gemm/MatMul weight."""
    inits = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}

    def nonzero(name: str) -> np.ndarray | None:
        if name in inits:
            return numpy_helper.to_array(inits[name]) != 0
        node = producers.get(name)
        if node is not None and node.op_type == "DequantizeLinear" and node.input[0] in inits:
            q = numpy_helper.to_array(inits[node.input[0]]).astype(np.int32)
            zp = numpy_helper.to_array(inits[node.input[2]]).astype(np.int32) if len(node.input) > 2 and \
                node.input[2] in inits else np.zeros(1, np.int32)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            if zp.ndim == 1 and zp.size > 1:
                shape = [1] * q.ndim
                shape[axis] = zp.size
                zp = zp.reshape(shape)
            return q != zp
        return None

    out = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        nz = nonzero(node.input[1])
        if nz is None or nz.ndim < 2:
            continue
        if node.op_type == "Conv":
            nz = nz.transpose(0, 2, 3, 1).reshape(nz.shape[0], -1)
        elif node.op_type == "MatMul" or not any(a.name == "transB" and a.i for a in node.attribute):
            nz = nz.reshape(-1, nz.shape[-1]).T if nz.ndim == 2 else None
        if nz is not None:
            out.append((node.name, node.input[1], nz))
    return out


def weight_sparsity(path: Path, n: int = 2, m: int = 4) -> dict:
    """Per-layer zero fraction and n:m check of an ONNX file's weights."""
    layers = []
    for node, name, nz in _weights(onnx.load(str(path))):
        rows, cols = nz.shape
        row = {"node": node, "weight": name, "shape": [rows, cols], "sparsity": float(1 - nz.mean())}
        if cols % m == 0:
            per_group = nz.reshape(rows, cols // m, m).sum(-1)
            row["nm_violations"] = int((per_group > n).sum())
        layers.append(row)
    nm_layers = [r for r in layers if r.get("nm_violations") == 0 and r["sparsity"] >= 1 - n / m - 1e-9]
    total = sum(r["shape"][0] * r["shape"][1] for r in layers)
    zeros = sum(r["sparsity"] * r["shape"][0] * r["shape"][1] for r in layers)
    return {"pattern": f"{n}:{m}", "layers": layers, "nm_layers": len(nm_layers),
            "weights": int(total), "zero_weights": int(round(zeros)), "weight_sparsity": zeros / max(total, 1)}
