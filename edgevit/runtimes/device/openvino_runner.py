"""Runs an OpenVINO IR (.xml with its .bin beside it) on the device (copied there beside device_bench.py).
The profile's ``options: {device: CPU|GPU|NPU}`` picks the OpenVINO device; the inference precision
stored in the IR applies."""
import numpy as np


class Runner:
    def __init__(self, path, job):
        import openvino as ov

        core = ov.Core()
        model = core.read_model(path)
        device = str(job.get("options", {}).get("device", "CPU"))
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if model.has_rt_info(["runtime_options", "INFERENCE_PRECISION_HINT"]):
            config["INFERENCE_PRECISION_HINT"] = model.get_rt_info(["runtime_options",
                                                                    "INFERENCE_PRECISION_HINT"]).astype(str)
        if device == "CPU":
            config["INFERENCE_NUM_THREADS"] = job["threads"]
        self.compiled = core.compile_model(model, device, config)
        self.request = self.compiled.create_infer_request()
        self.output = self.compiled.output(0)
        self.version = "openvino " + ov.__version__

    def __call__(self, x):
        return np.array(self.request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})[self.output])
