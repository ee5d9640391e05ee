"""Float PyTorch models timed as the FP32 artifacts a device runs: each exported by the device profile's
runtime and timed against the others at batch 1 and at the profile's throughput batch (interleaved round
by round on this machine, or in one session on an SSH device)."""
from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgevit.devices.lease import timing_lease
from edgevit.runtimes import runtime
from edgevit.stages.jobs import ExportJob
from edgevit.validate.profiling import interleaved_medians, rounds_for

SECONDS = 3.0  # timing per batch size and model set (a few rounds of a large model, hundreds of a small one)


@dataclass
class ModelTimer:
    """Times float models on one device profile; ``where`` says which, for the report."""

    ctx: Any
    device: Any
    seconds: float = SECONDS

    @property
    def where(self) -> str:
        d = self.device
        return (f"{d.name} ({runtime(d.runtime).label} FP32, {d.threads} threads; batch 1 and "
                f"{d.throughput_batch})")

    def __call__(self, models: dict[str, Any], x: np.ndarray) -> dict[str, dict[str, float]]:
        """Median milliseconds per call of each model's FP32 artifact, ``{"batch1": ms, "throughput": ms}``
        (the latter for a batch of ``device.throughput_batch``); ``x``: at least one preprocessed image."""
        rt = runtime(self.device.runtime)
        big = np.concatenate([x] * -(-self.device.throughput_batch // len(x)))[:self.device.throughput_batch]
        with tempfile.TemporaryDirectory(prefix="edgevit-timing-") as tmp:
            scratch = dataclasses.replace(self.ctx, stage=Path(tmp))
            files = {}
            for name, model in models.items():
                job = ExportJob(cfg=rt.config(precision="fp32"), file=f"{len(files)}{rt.suffix}", source=model)
                rt.export(job, scratch)
                files[name] = Path(tmp) / job.file
            if self.device.kind == "ssh":
                with timing_lease(self.device, "tokens"):
                    return self._remote(files, big)
            runners = {k: rt.local_runner(f, self.device) for k, f in files.items()}
            first = next(iter(runners.values()))
            out: dict[str, dict[str, float]] = {k: {} for k in runners}
            with timing_lease(self.device, "tokens"):
                for key, batch in (("batch1", x[:1]), ("throughput", big)):
                    rounds = rounds_for(first, batch, len(runners), self.seconds, least=5)
                    for k, ms in interleaved_medians(runners, batch, rounds, warmup=2).items():
                        out[k][key] = round(ms, 4)
            return out

    def _remote(self, files: dict[str, Path], sample: np.ndarray) -> dict[str, dict[str, float]]:
        from edgevit.devices.remote import measure_remote

        res = measure_remote(self.device, list(files.items()), sample, None, self.ctx.info)["artifacts"]
        return {k: {"batch1": round(res[k]["batch1"]["median_ms"], 4),
                    "throughput": round(res[k]["throughput"]["median_ms"], 4)} for k in files}


def model_timer(ctx) -> tuple[ModelTimer | None, str]:
    """The timer of the run's target device: the first SSH device profile, else the first local one whose
    runtime runs here; (None, why) when the recipe has neither."""
    devices = ctx.recipe.validation.devices
    device = next((d for d in devices if d.kind == "ssh"), None) or next(
        (d for d in devices if d.kind == "local" and runtime(d.runtime).can_run_here()), None)
    if device is None:
        return None, "no device profile in validate.devices whose runtime runs here"
    timer = ModelTimer(ctx, device)
    return timer, timer.where
