"""Latency: warm-up, then timed runs; median / p90 / p99 and throughput.

Other jobs share small machines, so each figure is a median over many runs, and the load
average is recorded beside it (on a shared 2-core machine, timings under load swing up to 10x).
"""
from __future__ import annotations

import functools
import os
import platform
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np


def time_runs(run: Callable[[np.ndarray], object], x: np.ndarray, warmup: int, iters: int,
              on_iter: Callable[[], None] | None = None) -> np.ndarray:
    """Wall-clock milliseconds of ``iters`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run(x)
    times = np.empty(iters)
    for i in range(iters):
        t0 = time.perf_counter()
        run(x)
        times[i] = (time.perf_counter() - t0) * 1e3
        if on_iter:
            on_iter()
    return times


def summarize(times_ms: np.ndarray, batch: int) -> dict[str, float]:
    """Median, p90, p99, mean in ms per call and images per second at the median."""
    med = float(np.median(times_ms))
    return {"batch": batch, "median_ms": med, "p90_ms": float(np.percentile(times_ms, 90)),
            "p99_ms": float(np.percentile(times_ms, 99)), "mean_ms": float(times_ms.mean()),
            "min_ms": float(times_ms.min()), "images_per_s": batch * 1e3 / med if med > 0 else None,
            "runs": int(len(times_ms))}


def load_average() -> float | None:
    """1-minute load average (None where the OS does not report it)."""
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):
        return None


#: the instruction-set features INT8 and BF16 speeds depend on, as /proc/cpuinfo names them
SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_facts(cpuinfo: str = "/proc/cpuinfo") -> dict:
    """The CPU's model name and which of ``SPEED_FLAGS`` it has: speed ratios between INT8, BF16 and FP32
    depend on them (on a CPU with AMX, OpenVINO runs BF16 on it), so figures from two machines compare only
    when these match. Empty values where the OS does not say (no /proc/cpuinfo)."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {"model": platform.processor() or None, "flags": []}
    fields = dict(line.split(":", 1) for line in text.split("\n\n")[0].splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    have = set(fields.get("flags", "").split())
    return {"model": fields.get("model name") or None, "flags": [f for f in SPEED_FLAGS if f in have]}


#: x86 instructions that add int8 products in 32 bits; without one of them, x86 int8 kernels (ONNX Runtime's, and
#: oneDNN's under OpenVINO) add each pair of uint8 x int8 products in 16 bits (vpmaddubsw), which saturates
EXACT_INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def int8_dot_saturates(facts: dict | None = None, machine: str | None = None) -> bool:
    """Whether this CPU's uint8 x int8 kernels can saturate: on x86 without VNNI or AMX, a pair of products
    above 32,767 (255 x 127 x 2 can reach 64,770) is clipped, so an INT8 file computes otherwise than its
    simulation unless its weights use 7 bits (2 x 255 x 63 = 32,130 fits). False where the OS does not say
    (``cpu_facts`` empty) and on other architectures (ARM's int8 dot products add in 32 bits)."""
    if facts is None and machine is None:
        return _this_cpu_saturates()
    facts = cpu_facts() if facts is None else facts
    machine = (machine or platform.machine()).lower()
    return machine in ("x86_64", "amd64") and bool(facts["flags"]) and \
        not set(EXACT_INT8_FLAGS) & set(facts["flags"])


@functools.cache
def _this_cpu_saturates() -> bool:  # read /proc/cpuinfo once: every runner and check asks
    return int8_dot_saturates(cpu_facts(), platform.machine())


def measure(run: Callable[[np.ndarray], object], sample: np.ndarray, device,
            on_iter: Callable[[], None] | None = None) -> dict:
    """Batch-1 latency and throughput-batch latency of one runner on one device profile."""
    return measure_interleaved({"run": run}, sample, device, on_iter)["run"]


def measure_interleaved(runs: dict[str, Callable[[np.ndarray], object]], sample: np.ndarray, device,
                        on_iter: Callable[[], None] | None = None, per_round: int = 5) -> dict[str, dict]:
    """:func:`measure` for several runners at once, interleaved round by round (``per_round`` batch-1
    calls and one throughput call each per round, in a shuffled order each round), so that every
    artifact - the FP32 baseline included - is timed under the same load and their ratios hold on a busy
    machine."""
    one = sample[:1]
    reps = -(-device.throughput_batch // len(sample))
    big = np.concatenate([sample] * reps)[:device.throughput_batch]
    for run in runs.values():
        for _ in range(device.warmup):
            run(one)
        for _ in range(max(1, device.warmup // 5)):
            run(big)
    b1 = {k: [] for k in runs}
    bt = {k: [] for k in runs}
    load_before = load_average()
    n_big = _throughput_iters(device)
    order = list(runs)
    rng = random.Random(0)
    while any(len(v) < device.iters for v in b1.values()) or any(len(v) < n_big for v in bt.values()):
        rng.shuffle(order)  # no runner always follows the same one (a PyTorch row's threads can linger)
        for k in order:
            run = runs[k]
            for _ in range(min(per_round, device.iters - len(b1[k]))):
                b1[k].append(_timed(run, one))
                if on_iter:
                    on_iter()
            if len(bt[k]) < n_big:
                bt[k].append(_timed(run, big))
                if on_iter:
                    on_iter()
    loads = [load_before, load_average()]
    return {k: {"device": device.name, "threads": device.threads, "interleaved_with": len(runs),
                "batch1": summarize(np.asarray(b1[k]), 1), "throughput": summarize(np.asarray(bt[k]), len(big)),
                "load_average": loads} for k in runs}


def _timed(run: Callable[[np.ndarray], object], x: np.ndarray) -> float:
    t0 = time.perf_counter()
    run(x)
    return (time.perf_counter() - t0) * 1e3


def _throughput_iters(device) -> int:
    return max(5, device.iters // 5)


def timed_iterations(device) -> int:
    """How many timed calls :func:`measure` makes (for progress bars)."""
    return device.iters + _throughput_iters(device)
