"""ONNX Runtime's own format (``.ort``): an ONNX graph optimized offline and saved as ONNX Runtime loads it.

ONNX Runtime Mobile and other reduced (minimal) builds load only this format; every ONNX Runtime loads it
faster than the ``.onnx`` it came from, since the graph optimizations (QDQ groups fused into integer
kernels, constant folding, op fusions) are already applied. The optimizations are ONNX Runtime's "all"
level without its NCHWc layout transformer, whose x86-specific layouts would tie the file to x86 (ONNX
Runtime's own converter leaves it out unless asked for amd64); on an x86 CPU float convs then run slower than
from the ``.onnx``, which ONNX Runtime lays out in NCHWc at load. The file is made by the ONNX Runtime
installed here; an older ONNX Runtime may not read it. Beside it, ``<name>.required_operators.config`` lists
the operators the file uses, the input of ONNX Runtime's reduced-build script (``--include_ops_by_config``).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

#: the one graph optimization left out: NCHWc layouts exist for x86 kernels only
EXCLUDED_OPTIMIZERS = ("NchwcTransformer",)


def required_operators_file(ort_path: Path) -> Path:
    """Where the reduced-build operator list of ``ort_path`` is written."""
    return ort_path.with_name(ort_path.name.removesuffix(".ort") + ".required_operators.config")


def save_ort_format(onnx_path: Path, ort_path: Path) -> dict:
    """Write ``onnx_path`` optimized and in ORT format to ``ort_path`` (written beside, then renamed), and its
    operator list beside it; returns facts for the report: the operators by domain and opset, sizes, and the
    session-creation time of both files (interleaved, median of 7, this machine's threads)."""
    import onnxruntime as ort

    from edgevit.report.writers import atomic_write

    tmp = ort_path.with_name(f".tmp-{ort_path.name}")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(tmp)
    so.add_session_config_entry("session.save_model_format", "ORT")
    so.log_severity_level = 3
    try:
        ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"],
                             disabled_optimizers=list(EXCLUDED_OPTIMIZERS))
        ops = required_operators(tmp)
        os.replace(tmp, ort_path)
    finally:
        tmp.unlink(missing_ok=True)
    config = required_operators_file(ort_path)
    atomic_write(config, "".join(f"{domain};{opset};{','.join(names)}\n" for domain, opset, names in ops))
    load = session_creation_ms([onnx_path, ort_path])
    return {"ort_version": ort.__version__, "optimization": "all, without " + ", ".join(EXCLUDED_OPTIMIZERS),
            "required_operators": config.name, "operators": [f"{d};{o};{','.join(n)}" for d, o, n in ops],
            "onnx_bytes": onnx_path.stat().st_size, "load_ms": load[str(ort_path)],
            "onnx_load_ms": load[str(onnx_path)]}


def required_operators(ort_path: Path) -> list[tuple[str, int, list[str]]]:
    """(domain, opset, sorted op types) an ORT-format file uses, as ONNX Runtime's reduced-build config lists
    them."""
    from onnxruntime.tools.ort_format_model.utils import _extract_ops_and_types_from_ort_models

    required, _ = _extract_ops_and_types_from_ort_models([Path(ort_path)], enable_type_reduction=False)
    return [(domain, opset, sorted(required[domain][opset])) for domain in sorted(required)
            for opset in sorted(required[domain]) if required[domain][opset]]


def session_creation_ms(paths: list[Path], rounds: int = 7) -> dict[str, float]:
    """Median milliseconds to create an ONNX Runtime CPU session of each file, the files taken in turn each
    round (what an app pays at start before its first prediction)."""
    import onnxruntime as ort

    times: dict[str, list[float]] = {str(p): [] for p in paths}
    for _ in range(rounds):
        for p in paths:
            so = ort.SessionOptions()
            so.log_severity_level = 3
            t0 = time.perf_counter()
            ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
            times[str(p)].append((time.perf_counter() - t0) * 1e3)
    return {k: round(float(np.median(v)), 2) for k, v in times.items()}
