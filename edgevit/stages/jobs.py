"""One artifact to write: what the export stage, the placement search and the timers hand a runtime."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class ExportJob:
    """One artifact to write: its config, file name, and (for INT8) the plan to lower."""

    cfg: Any
    file: str
    plan: Any = None  # None: the run's plan
    suffix: str = ""  # appended to the row name ("-before-fallback")
    source: Any = None  # filled in: the PyTorch model the artifact is made from
    sim_name: str | None = None  # filled in: the row the artifact is compared with
    keep_layernorm_fp32: bool = False
    placement: Any = None  # filled in for INT8 artifacts: where INT8 runs (edgevit.stages.placement)
    candidate: bool = False  # a placement candidate: written to be timed and audited, never shipped

    @property
    def name(self) -> str:
        """The artifact's row name."""
        if self.suffix:
            return (self.cfg.name or self.file.rsplit(".", 1)[0]) + self.suffix
        return self.cfg.name or self.file
