"""Where the bytes of an INT8 ONNX file go, next to its FP32 file: the built-in models quantized as
``recipes/int8_ptq.yaml`` does (all regions INT8), both exported by the product's exporter.

    .venv/bin/python benchmarks/onnx_graph_bytes.py [--models hybrid-cifar10 vit-cifar10]

Prints one Markdown row per model: FP32 and INT8 bytes, their ratio, and the INT8 file split into int8
weights, float parameters (biases, LayerNorm, per-channel weight scales), node names, and the rest of the
graph; and the ratio the file would have without node names (kept: profiles, audits and error messages
name nodes). Writes benchmarks/results/onnx_graph_bytes.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _split(path: Path) -> dict:
    import onnx

    m = onnx.load(str(path))
    g = m.graph
    int8 = sum(len(t.raw_data) for t in g.initializer if t.data_type == onnx.TensorProto.INT8)
    params = sum(t.ByteSize() for t in g.initializer) - int8
    names = sum(len(n.name) for n in g.node)
    total = path.stat().st_size
    return {"bytes": total, "int8_weights": int8, "other_parameters": params, "node_names": names,
            "graph_rest": total - int8 - params - names, "nodes": len(g.node)}


def export_graphs(name: str, folder: Path) -> tuple[Path, Path]:
    """The FP32 and INT8 ONNX files of built-in model ``name`` in ``folder``, quantized as
    ``recipes/int8_ptq.yaml`` does (every region INT8), both from the product's exporter."""
    import torch

    from edgevit.data import Preprocess, open_image_set
    from edgevit.exporters.onnx import export_onnx
    from edgevit.models import load_model
    from edgevit.quant import quantize
    from edgevit.recipe import ExportConfig, ModelConfig, load_recipe

    recipe = load_recipe(ROOT / "recipes" / "int8_ptq.yaml")
    model, info = load_model(ModelConfig(source=f"builtin:{name}"))
    x, _ = open_image_set(ROOT / "calibration" / "builtin-calib", num=256, seed=0).load(
        Preprocess(info.input_size, info.mean, info.std))
    fp32, int8 = folder / f"{name}-fp32.onnx", folder / f"{name}-int8.onnx"
    export_onnx(model, info, ExportConfig(precision="fp32"), fp32, recipe.name)
    qmodel, _ = quantize(model, recipe.quantize, [torch.from_numpy(x)])
    export_onnx(qmodel, info, ExportConfig(precision="int8"), int8, recipe.name)
    return fp32, int8


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["hybrid-cifar10", "vit-cifar10"])
    args = ap.parse_args()
    rows = {}
    print("| model | FP32 bytes | INT8 bytes | ratio | int8 weights | other parameters | node names | rest of graph "
          "| ratio without node names |\n|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            fp32, int8 = export_graphs(name, Path(tmp))
            r = {"fp32_bytes": fp32.stat().st_size, **_split(int8)}
            r["ratio"] = r["bytes"] / r["fp32_bytes"]
            r["ratio_without_node_names"] = (r["bytes"] - r["node_names"]) / r["fp32_bytes"]
            rows[name] = r
            print(f"| {name} | {r['fp32_bytes']:,} | {r['bytes']:,} | {r['ratio']:.4f} | {r['int8_weights']:,} | "
                  f"{r['other_parameters']:,} | {r['node_names']:,} | {r['graph_rest']:,} | "
                  f"{r['ratio_without_node_names']:.4f} |", flush=True)
    out = ROOT / "benchmarks" / "results" / "onnx_graph_bytes.json"
    out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
