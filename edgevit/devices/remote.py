"""Measure artifacts on a device over SSH: copy them with the self-contained benchmark script and an
evaluation sample, run it once for all of them (interleaved, so the FP32 baseline and each compressed
artifact share one session on the device), read its JSON, clean up."""
from __future__ import annotations

import json
import secrets
import tempfile
from pathlib import Path

import numpy as np

from edgevit.devices.device_bench import MISSING_RUNTIME
from edgevit.devices.ssh import DeviceError, SshDevice
from edgevit.runtimes import runtime
from edgevit.runtimes.base import DEVICE_RUNNERS

SCRIPT = Path(__file__).with_name("device_bench.py")


def runs_on(device, artifact: dict) -> bool:
    """Whether a device profile's runtime runs this artifact (by its runtime field)."""
    return artifact.get("runtime") == device.runtime and artifact.get("file") is not None


def measure_remote(device, artifacts: list[tuple[str, Path]], x: np.ndarray, y: np.ndarray | None,
                   info) -> dict:
    """Run ``artifacts`` (name, local path) on ``device``; returns the device's JSON result: per artifact
    batch-1 / throughput latency, predictions and top-1 on the sample, plus the machine and runtime."""
    dev = SshDevice(device.name, device.ssh)
    rt = runtime(device.runtime)
    if rt.device_runner is None:
        raise DeviceError(f"{dev.where}: edgevit has no device runner for {rt.label}")
    runner = DEVICE_RUNNERS / rt.device_runner
    remote = f"{device.work_dir.rstrip('/')}/edgevit-bench-{secrets.token_hex(4)}"
    job = {"runtime": device.runtime, "runner": runner.name, "options": device.options,
           "threads": device.threads, "providers": device.providers,
           "compute_units": device.compute_units, "warmup": device.warmup, "iters": device.iters,
           "throughput_batch": device.throughput_batch, "labels": list(info.labels), "mean": list(info.mean),
           "std": list(info.std), "sample": f"{remote}/sample.npz",
           "artifacts": [{"name": n, "path": f"{remote}/{p.name}"} for n, p in artifacts]}
    with tempfile.TemporaryDirectory() as tmp:
        sample, job_file = Path(tmp) / "sample.npz", Path(tmp) / "job.json"
        np.savez(sample, x=x.astype(np.float32), **({"y": y} if y is not None else {}))
        job_file.write_text(json.dumps(job))
        dev.run(["mkdir", "-p", "--", remote])
        try:
            dev.put([SCRIPT, runner, job_file, sample, *[f for _, p in artifacts for f in rt.files(p)]], remote)
            res = dev.run([device.python, f"{remote}/{SCRIPT.name}", f"{remote}/job.json"], check=False)
        finally:
            dev.run(["rm", "-rf", "--", remote], check=False)
    try:
        out = json.loads(res.stdout.strip().splitlines()[-1]) if res.stdout.strip() else {}
    except json.JSONDecodeError:
        out = {}
    if res.returncode == 127:
        raise DeviceError(f"{dev.where}: no Python at {device.python!r} on the device; set the profile's python: "
                          "to the interpreter path (it needs numpy and the runtime)")
    if res.returncode == MISSING_RUNTIME:
        raise DeviceError(f"{dev.where}: {device.runtime} is not importable by {device.python} on the device "
                          f"({out.get('detail', '')}); install it there (e.g. pip install {rt.name}) or set "
                          "the profile's python: to an interpreter that has it")
    if res.returncode != 0 or "artifacts" not in out:
        detail = out.get("detail") or (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise DeviceError(f"{dev.where}: the benchmark failed on the device ({res.returncode}): {detail}")
    return out
