"""Benchmark artifacts on the machine this script runs on; copied to a device by the remote runner.

Self-contained on purpose: it needs Python 3.8+, numpy and the runtime (onnxruntime, coremltools on
macOS, or tensorrt + cuda-python on a Jetson), nothing from edgevit. It reads a job (JSON), times
every artifact interleaved round by round (so their ratios are measured under the same load), runs
the bundled evaluation sample through each for accuracy, and prints one JSON object on stdout.

    python3 device_bench.py job.json

Exit codes: 0 done, 3 the runtime is missing on this machine (the JSON says which), 1 other failure.
"""
import json
import os
import platform
import sys
import time

import numpy as np

MISSING_RUNTIME = 3


class _Ort:
    def __init__(self, path, job):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = job["threads"]
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # fair on a shared machine
        self.s = ort.InferenceSession(path, so, providers=job.get("providers") or ["CPUExecutionProvider"])
        self.name = self.s.get_inputs()[0].name
        self.version = "onnxruntime " + ort.__version__

    def __call__(self, x):
        return self.s.run(None, {self.name: x})[0]


class _CoreML:
    """An edgevit CoreML classifier: 0-255 RGB image in, probabilities per label out."""

    def __init__(self, path, job):
        import coremltools as ct
        from PIL import Image

        self.Image = Image
        units = {"all": ct.ComputeUnit.ALL, "cpu_only": ct.ComputeUnit.CPU_ONLY,
                 "cpu_and_gpu": ct.ComputeUnit.CPU_AND_GPU, "cpu_and_ne": ct.ComputeUnit.CPU_AND_NE}
        self.m = ct.models.MLModel(path, compute_units=units[job.get("compute_units", "all")])
        self.labels = job["labels"]
        self.mean = np.asarray(job["mean"], dtype=np.float32).reshape(1, 3, 1, 1)
        self.std = np.asarray(job["std"], dtype=np.float32).reshape(1, 3, 1, 1)
        self.version = "coremltools " + ct.__version__

    def __call__(self, x):
        pixels = np.clip(np.rint((x * self.std + self.mean) * 255), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
        out = []
        for im in pixels:  # the package has a batch-1 image input
            probs = self.m.predict({"image": self.Image.fromarray(im)})["classLabel_probs"]
            out.append([probs[label] for label in self.labels])
        return np.asarray(out, dtype=np.float32)


class _TensorRT:
    """A serialized engine, buffers through cuda-python (no torch needed on a Jetson)."""

    def __init__(self, path, job):
        import tensorrt as trt
        from cuda import cudart

        self.trt, self.cudart = trt, cudart
        with open(path, "rb") as f:
            self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(f.read())
        self.ctx = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inp = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.out = next(n for n in names if n != self.inp)
        self.stream = cudart.cudaStreamCreate()[1]
        self.bufs, self.shape = {}, None
        self.version = "tensorrt " + trt.__version__

    def _bind(self, shape):
        if shape == self.shape:
            return
        for ptr in self.bufs.values():
            self.cudart.cudaFree(ptr)
        self.ctx.set_input_shape(self.inp, shape)
        self.out_shape = tuple(self.ctx.get_tensor_shape(self.out))
        self.bufs = {n: self.cudart.cudaMalloc(int(np.prod(s)) * 4)[1]
                     for n, s in ((self.inp, shape), (self.out, self.out_shape))}
        for n, ptr in self.bufs.items():
            self.ctx.set_tensor_address(n, ptr)
        self.shape = shape

    def __call__(self, x):
        x = np.ascontiguousarray(x, dtype=np.float32)
        self._bind(tuple(x.shape))
        h2d, d2h = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.cudart.cudaMemcpyAsync(self.bufs[self.inp], x.ctypes.data, x.nbytes, h2d, self.stream)
        self.ctx.execute_async_v3(self.stream)
        y = np.empty(self.out_shape, dtype=np.float32)
        self.cudart.cudaMemcpyAsync(y.ctypes.data, self.bufs[self.out], y.nbytes, d2h, self.stream)
        self.cudart.cudaStreamSynchronize(self.stream)
        return y


RUNTIMES = {"onnxruntime": _Ort, "coreml": _CoreML, "tensorrt": _TensorRT}


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


def run(job):
    data = np.load(job["sample"])
    x, y = data["x"].astype(np.float32), data["y"] if "y" in data.files else None
    try:
        runners = {a["name"]: RUNTIMES[job["runtime"]](a["path"], job) for a in job["artifacts"]}
    except ImportError as e:
        return MISSING_RUNTIME, {"error": "missing_runtime", "runtime": job["runtime"], "detail": str(e),
                                 "python": sys.executable}
    result = {"machine": {"platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
                          "cpu_count": os.cpu_count(), "hostname": platform.node()},
              "runtime_version": next(iter(runners.values())).version if runners else None, "artifacts": {}}
    one = x[:1]
    big = np.concatenate([x] * (-(-job["throughput_batch"] // len(x))))[:job["throughput_batch"]]
    load_before = _load_average()
    times = {n: {"b1": [], "bt": []} for n in runners}
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
