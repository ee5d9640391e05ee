"""The run context: what the stages read and change, with the images each size of sample loaded once."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgevit.data import Preprocess, open_image_set
from edgevit.exporters.fp16 import layernorm_policy
from edgevit.progress import new_progress
from edgevit.validate import map_labels

log = logging.getLogger("edgevit")


@dataclass
class EvalSet:
    """The evaluation images, preprocessed, with labels mapped to the model's classes (None: unlabeled)."""

    x: np.ndarray
    labels: np.ndarray | None
    batch_size: int
    summary: dict


@dataclass
class RunContext:
    """One run's state: the model each stage hands to the next, the simulated models to compare artifacts
    with, and the stage records for the report."""

    recipe: Any
    stage: Path  # the run folder being written
    info: Any
    pre: Preprocess
    model: Any  # the current float model (pruned / token-reduced copies replace it)
    dense: Any  # the model as loaded: the FP32 reference
    evalset: EvalSet | None = None
    sims: dict = field(default_factory=dict)  # PyTorch rows beside the reference, by name
    float_sim: str | None = None  # the last float stage's row: what FP32/FP16 artifacts are compared with
    plan: Any = None  # the quantization plan (after the accuracy budget, if any)
    full_plan: Any = None  # the plan before the budget kept layers in float (when it did)
    sim_base: str | None = None
    records: dict = field(default_factory=dict)  # report section -> StageRecord
    calibration_summary: dict | None = None  # the report's data.calibration (set by the quantize stage)
    policies: dict = field(default_factory=dict)  # FP16 LayerNorm decision by mode (the report's fp16_layernorm)
    placements: dict = field(default_factory=dict)  # INT8 artifact name -> its Placement (placement.json)
    searches: dict = field(default_factory=dict)  # placement search key -> (plan searched, plan shipped, Placement)
    _calibration: dict = field(default_factory=dict)
    _placements: dict = field(default_factory=dict)

    @property
    def nm_layers(self) -> int | None:
        """How many layers the pruning stage left N:M sparse (None without N:M pruning)."""
        return len(self.records["pruning"].layers) if self.recipe.prune and self.recipe.prune.nm else None

    def layernorm_policy(self, mode: str) -> dict:
        """The FP16 LayerNorm decision for ``mode``, measured once per run on up to 64 calibration (else
        eval) images; see exporters.fp16."""
        if mode not in self.policies:
            images = self.sample_images(64) if mode == "auto" else None
            self.policies[mode] = layernorm_policy(self.model, images, mode)
            log.info("FP16 LayerNorm: %s (%s)", "kept in FP32" if self.policies[mode]["keep_fp32"] else "FP16",
                     self.policies[mode]["reason"])
        return self.policies[mode]

    def sample_images(self, n: int) -> torch.Tensor | None:
        """Up to ``n`` of the run's images, preprocessed: the calibration sample, else the evaluation images,
        else None."""
        if self.recipe.calibration is not None:
            return self.calibration_images(n)
        if self.evalset is not None:
            return torch.from_numpy(self.evalset.x[:n])
        return None

    def calibration_images(self, n: int) -> torch.Tensor:
        """The seeded sample of ``n`` calibration images (no more than calibration.num), preprocessed, classes
        interleaved; each sample size is read from disk once per run."""
        cfg = self.recipe.calibration
        n = min(n, cfg.num or n)
        if n not in self._calibration:
            self._calibration[n] = torch.from_numpy(self._calibration_sample(n).load(self.pre)[0])
        return self._calibration[n]

    def saved_placements(self, path: str) -> dict:
        """The placements of ``quantize.placement``'s file, by artifact name (read once per run)."""
        if path not in self._placements:
            from edgevit.stages.placement import saved_placements

            self._placements[path] = saved_placements(Path(path))
        return self._placements[path]

    def calibration_set(self):
        """The calibration image set (opened, not loaded: the quantize stage streams it)."""
        return self._calibration_sample(self.recipe.calibration.num)

    def _calibration_sample(self, n: int | None):
        """The seeded sample of ``n`` calibration images (None: all), classes interleaved: the searches calibrate
        on the first images streamed (quantize.search_images, calibration_batches), and in folder order those
        would be one or two classes."""
        cfg = self.recipe.calibration
        return open_image_set(cfg.path, n, cfg.seed).interleaved(cfg.seed)


def load_eval(recipe, pre: Preprocess, info) -> EvalSet | None:
    """The recipe's evaluation images, preprocessed and held in memory (None without validate.eval)."""
    cfg = recipe.validation.eval
    if cfg is None:
        return None
    # interleaved: the sample checks and a device's eval_images take the first images
    images = open_image_set(cfg.path, cfg.num, cfg.seed).interleaved(cfg.seed)
    with new_progress() as progress:
        task = progress.add_task("load eval images", total=len(images))
        x, y = images.load(pre, cfg.batch_size, on_file=lambda: progress.advance(task))
    labels, mapping = map_labels(images.classes, y, info.labels)
    if images.skipped:
        log.warning("%d unreadable image(s) skipped in %s", len(images.skipped), cfg.path)
    return EvalSet(x=x, labels=labels, batch_size=cfg.batch_size,
                   summary={"path": str(cfg.path), "images": int(len(x)), "listed": len(images),
                            "skipped": len(images.skipped),
                            "skipped_files": [{"file": f, "error": e} for f, e in images.skipped[:20]],
                            "labeled": labels is not None, "label_mapping": mapping})
