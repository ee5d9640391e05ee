"""Per-node time of an artifact on its runtime (the runtime's own profiler), and batch-1 medians of several
artifacts timed interleaved in a shuffled order each round."""
from __future__ import annotations

import json
import random
import re
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np


def ort_node_times(path: Path | str, threads: int, x: np.ndarray, runs: int, warmup: int = 5) -> dict[str, float]:
    """Mean milliseconds per call of every node ONNX Runtime ran (after its graph optimizations, so a fused
    node carries the name of the node it replaced) on ``x``, by node name."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "profile")
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)}
        for _ in range(warmup + runs):
            session.run(None, feed)
        events = kernel_events(Path(session.end_profiling()).read_text())
        scoped = _scoped_names(Path(so.optimized_model_filepath))
    totals: dict[str, list[float]] = defaultdict(list)
    for name, dur_us in events:
        totals[name].append(dur_us / 1e3)
    out: dict[str, float] = defaultdict(float)
    for name, v in totals.items():  # the warm-up calls of the profiled session are dropped (one-off allocations)
        out[scoped.get(name, name)] += float(np.sum(v[-runs:]) / runs)
    return dict(out)


#: one node's kernel event as ONNX Runtime writes its profile: one JSON object a line, these keys in this order
_KERNEL_EVENT = re.compile(r'^\{"cat" : "Node",[^\n]*?"dur" :(\d+),[^\n]*?"name" :"((?:[^"\\\n]|\\.)*)_kernel_time"',
                           re.M)


def kernel_events(profile: str) -> list[tuple[str, int]]:
    """(node name, microseconds) of each kernel call in an ONNX Runtime profile (its JSON text), in order.
    The profile of a small INT8 graph is ~20 MB (every event carries its shapes and thread statistics) and
    ``json.loads`` of it took 1 s here, longer than the profiled runs: the events are read off their lines,
    and the whole JSON is parsed only when that reading does not find every kernel event (another layout)."""
    found = [(json.loads(f'"{m.group(2)}"') if "\\" in m.group(2) else m.group(2), int(m.group(1)))
             for m in _KERNEL_EVENT.finditer(profile)]
    if len(found) == profile.count('_kernel_time"'):
        return found
    return [(e["name"][:-len("_kernel_time")], int(e["dur"])) for e in json.loads(profile)
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]


def _scoped_names(optimized: Path) -> dict[str, str]:
    """Node name -> a name with a module path, for the nodes ONNX Runtime created under names of its own
    (``Gemm_4``: a MatMul + Add fused, with Reshapes around it): the first module-path name (``a.b/c/Add``
    or a tensor ``a.b/c/Add_output_0``) found downstream within a few nodes, else among its inputs. Parameter
    names are not used: equal initializers (zero biases of random weights) are shared under one name."""
    import onnx

    try:
        graph = onnx.load(str(optimized), load_external_data=False).graph
    except Exception:  # noqa: BLE001 - the names only refine attribution; without them nodes keep their own
        return {}
    consumers: dict[str, list] = defaultdict(list)
    for n in graph.node:
        for i in n.input:
            consumers[i].append(n)

    def downstream(node, depth: int = 4) -> str | None:
        frontier = [node]
        for _ in range(depth):
            nxt = []
            for m in frontier:
                for t in m.output:
                    if "/" in t:
                        return t
                    for c in consumers.get(t, []):
                        if "/" in c.name:
                            return c.name
                        nxt.append(c)
            frontier = nxt
        return None

    out = {}
    for n in graph.node:
        if "/" in n.name:
            continue
        scoped = downstream(n) or next((t for t in n.input if "/" in t), None)
        if scoped is not None:
            out[n.name] = scoped
    return out


def interleaved_medians(runners: dict[str, Callable[[np.ndarray], object]], x: np.ndarray, rounds: int,
                        warmup: int = 5, seed: int = 0, per_round: int = 1) -> dict[str, float]:
    """Median batch-1 milliseconds of each runner, all timed in every round in a shuffled order (so no
    runner always follows the same one) on the same input; ``per_round`` calls in a row each round (as the
    pipeline's validation times: the later calls find the runner's weights in cache, as an app running one
    model does; with one call a round and many runners, each call starts cold)."""
    for run in runners.values():
        for _ in range(warmup):
            run(x)
    order = list(runners)
    rng = random.Random(seed)
    times: dict[str, list[float]] = {k: [] for k in order}
    for _ in range(rounds):
        rng.shuffle(order)
        for k in order:
            for _ in range(per_round):
                t0 = time.perf_counter()
                runners[k](x)
                times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: float(np.median(v)) for k, v in times.items()}


def rounds_for(runner: Callable[[np.ndarray], object], x: np.ndarray, n: int, seconds: float = 6.0,
               least: int = 30, most: int = 300) -> int:
    """Rounds of interleaved timing of ``n`` runners like ``runner`` on ``x`` that take about ``seconds``
    (between ``least`` and ``most``)."""
    est = min(interleaved_medians({"one": runner}, x, 5, warmup=2).values()) / 1e3
    return int(min(most, max(least, seconds / max(est * n, 1e-6))))
