"""Benchmark artifacts on the machine this script runs on; copied to a device by the remote runner.

Self-contained on purpose: it needs Python 3.8+, numpy and the runtime (onnxruntime, coremltools on
macOS, tensorrt + cuda-python on a Jetson, openvino), nothing from edgevit. The runtime's runner
file (``edgevit/runtimes/device/<runtime>_runner.py``, a ``Runner`` class) is copied beside it and
named in the job. It reads a job (JSON), times every artifact interleaved round by round (so their ratios are measured under the same load), runs
the bundled evaluation sample through each for accuracy, and prints one JSON object on stdout.

    python3 device_bench.py job.json

Exit codes: 0 done, 3 the runtime is missing on this machine (the JSON says which), 1 other failure.
"""
import contextlib
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

MISSING_RUNTIME = 3


def _runner_class(job):
    """The Runner class of the job's runtime, from the runner file copied beside this script."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), job["runner"])
    spec = importlib.util.spec_from_file_location("edgevit_device_runner", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Runner


def _stats(times_ms, batch):
    t = np.asarray(times_ms)
    med = float(np.median(t))
    return {"batch": batch, "median_ms": med, "p90_ms": float(np.percentile(t, 90)),
            "p99_ms": float(np.percentile(t, 99)), "mean_ms": float(t.mean()), "min_ms": float(t.min()),
            "images_per_s": batch * 1e3 / med if med > 0 else None, "runs": int(len(t))}


def _load_average():
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


@contextlib.contextmanager
def _device_lock():
    """An exclusive lock on one file of the device's temp folder while timing (two hosts, or two runs of a
    sweep, never time on the device at once; the kernel frees it if this process dies). Yields the seconds
    waited."""
    t0 = time.monotonic()
    try:
        import fcntl
    except ImportError:  # no POSIX locks on this device
        yield 0.0
        return
    with open(os.path.join(tempfile.gettempdir(), "edgevit-bench.lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield round(time.monotonic() - t0, 3)


def run(job):
    data = np.load(job["sample"])
    x, y = data["x"].astype(np.float32), data["y"] if "y" in data.files else None
    try:
        runner = _runner_class(job)
        runners = {a["name"]: runner(a["path"], job) for a in job["artifacts"]}
    except ImportError as e:
        return MISSING_RUNTIME, {"error": "missing_runtime", "runtime": job["runtime"], "detail": str(e),
                                 "python": sys.executable}
    result = {"machine": {"platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
                          "cpu_count": os.cpu_count(), "hostname": platform.node()},
              "runtime_version": next(iter(runners.values())).version if runners else None, "artifacts": {}}
    one = x[:1]
    big = np.concatenate([x] * (-(-job["throughput_batch"] // len(x))))[:job["throughput_batch"]]
    times = {n: {"b1": [], "bt": []} for n in runners}
    with _device_lock() as waited:  # one edgevit timing on this device at a time
        result["lock_wait_s"] = waited
        load_before = _load_average()
        for r in runners.values():  # warm-up
            for _ in range(job["warmup"]):
                r(one)
            r(big)
        rounds = max(1, job["iters"] // 10)
        for _ in range(rounds):  # interleaved: every artifact sees the same load
            for n, r in runners.items():
                for _ in range(10):
                    t0 = time.perf_counter()
                    r(one)
                    times[n]["b1"].append((time.perf_counter() - t0) * 1e3)
                t0 = time.perf_counter()
                r(big)
                times[n]["bt"].append((time.perf_counter() - t0) * 1e3)
    for n, r in runners.items():
        preds = np.concatenate([np.asarray(r(x[i:i + 16])).argmax(1) for i in range(0, len(x), 16)])
        entry = {"batch1": _stats(times[n]["b1"], 1), "throughput": _stats(times[n]["bt"], len(big)),
                 "predictions": preds.tolist()}
        if y is not None:
            entry["top1"] = float((preds == y).mean())
        result["artifacts"][n] = entry
    result["load_average"] = [load_before, _load_average()]
    return 0, result


def main():
    with open(sys.argv[1]) as f:
        job = json.load(f)
    try:
        code, out = run(job)
    except Exception as e:  # reported to the host as JSON; the host turns it into one clear line
        code, out = 1, {"error": "failed", "detail": f"{type(e).__name__}: {e}"}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.exit(code)


if __name__ == "__main__":
    main()
