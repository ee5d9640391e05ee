"""Runs an edgevit .mlpackage classifier in CoreML on a Mac (copied there beside device_bench.py)."""
import numpy as np


class Runner:
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
