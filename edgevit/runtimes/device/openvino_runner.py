"""Runs an OpenVINO IR (.xml with its .bin beside it) on the device (copied there beside device_bench.py).
The profile's ``options: {device: CPU|GPU|NPU}`` picks the OpenVINO device; the inference precision
stored in the IR applies. An IR fixed to one batch is reshaped and compiled again for another batch size."""
import numpy as np


class Runner:
    def __init__(self, path, job):
        import openvino as ov

        core = ov.Core()
        self.model = core.read_model(path)
        device = str(job.get("options", {}).get("device", "CPU"))
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if self.model.has_rt_info(["runtime_options", "INFERENCE_PRECISION_HINT"]):
            config["INFERENCE_PRECISION_HINT"] = self.model.get_rt_info(["runtime_options",
                                                                         "INFERENCE_PRECISION_HINT"]).astype(str)
        if device == "CPU":
            config["INFERENCE_NUM_THREADS"] = job["threads"]
        self.compile = lambda model: core.compile_model(model, device, config)
        self.compiled = self.compile(self.model)
        self.requests = {}
        self.version = "openvino " + ov.__version__

    def request(self, batch):
        if batch not in self.requests:
            first = self.compiled.input(0).get_partial_shape()[0]
            compiled = self.compiled
            if first.is_static and first.get_length() != batch:
                model = self.model.clone()
                shape = model.input(0).get_partial_shape()
                shape[0] = batch
                model.reshape({model.input(0): shape})
                compiled = self.compile(model)
            self.requests[batch] = (compiled.create_infer_request(), compiled.output(0))
        return self.requests[batch]

    def __call__(self, x):
        request, output = self.request(len(x))
        return np.array(request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})[output])
