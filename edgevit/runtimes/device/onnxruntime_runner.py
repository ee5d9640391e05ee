"""Runs an .onnx artifact in ONNX Runtime on the device (copied there beside device_bench.py)."""


class Runner:
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
