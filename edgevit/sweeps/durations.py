"""How long a sweep's runs will take, from the runs this machine's earlier sweeps finished, and the order a
parallel executor starts them in: longest first.

Started in plan order, a sweep whose longest run comes last ends with one worker busy and the others idle;
starting the longest first (LPT list scheduling, Graham 1969) bounds the makespan at 4/3 of the optimum. The
durations are a cache, ``~/.cache/edgevit/sweep-durations.json`` (``EDGEVIT_SWEEP_HISTORY``: another file, or
``off``), written by the driver when a run completes. A run seen before is estimated by its own last
durations; a new one by the recipe, model and device it shares with runs seen before (each a factor against
the typical run: a new ``--set`` value of a known recipe on a known model is estimated from both); a run
with neither its recipe nor its model in the history has no estimate and starts before the estimated ones, in
plan order.
"""
from __future__ import annotations

import json
import logging
import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from edgevit.paths import user_path

log = logging.getLogger("edgevit")

FACTORS = ("recipe", "model", "device")  # what a new run shares with earlier ones, each a multiplicative factor
IDENTIFYING = ("recipe", "model")  # a new run needs one of these in common with earlier ones to be estimated
KEEP_RUNS = 5000  # the oldest entries beyond this are dropped
KEEP_TIMES = 3  # per run: its last few durations, of which the median is its estimate


def history_path() -> Path | None:
    """The durations file (None: switched off with ``EDGEVIT_SWEEP_HISTORY=off``)."""
    env = os.environ.get("EDGEVIT_SWEEP_HISTORY")
    if env is not None:
        return None if env.strip().lower() in ("", "off", "none") else user_path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgevit" / "sweep-durations.json"


@dataclass
class Estimate:
    """A run's expected duration and where it came from: ``run`` (this run's earlier durations), ``similar``
    (runs sharing its recipe or model) or ``none`` (seconds is None)."""

    seconds: float | None
    source: str


class DurationHistory:
    """Finished runs' durations by run identity, with the labels that let a new run be estimated."""

    def __init__(self, path: Path | None):
        self.path = path
        self.runs: dict[str, dict] = self._read() if path else {}
        self._means: tuple[float, dict[str, dict[str, float]]] | None = None  # made when first needed

    def _read(self) -> dict[str, dict]:
        try:
            runs = json.loads(self.path.read_text()).get("runs", {})
        except (OSError, ValueError, AttributeError):
            return {}  # no history, or a damaged one: estimates start again
        return {k: v for k, v in runs.items() if isinstance(v, dict) and v.get("seconds")}

    def estimate(self, run_id: str, labels: dict[str, str]) -> Estimate:
        """This run's median of its last durations; else, when its recipe or model was seen, the typical run's
        duration times the factor of each label it shares with earlier runs (that label's runs' geometric mean
        over the typical run's)."""
        if run_id in self.runs:
            return Estimate(round(statistics.median(self.runs[run_id]["seconds"]), 1), "run")
        if not self.runs:
            return Estimate(None, "none")
        typical, by_label = self._log_means()
        log_s, shared = typical, 0
        for factor in FACTORS:
            if (mean := by_label[factor].get(labels.get(factor))) is not None:
                log_s += mean - typical
                shared += factor in IDENTIFYING
        return Estimate(round(math.exp(log_s), 1), "similar") if shared else Estimate(None, "none")

    def _log_means(self) -> tuple[float, dict[str, dict[str, float]]]:
        """The mean log duration of all runs, and per factor and label of the runs with that label (made once)."""
        if self._means is None:
            logs = {k: math.log(statistics.median(v["seconds"])) for k, v in self.runs.items()}
            groups: dict[str, dict[str, list[float]]] = {f: {} for f in FACTORS}
            for k, v in self.runs.items():
                for f in FACTORS:
                    groups[f].setdefault(v.get(f), []).append(logs[k])
            self._means = (statistics.mean(logs.values()),
                           {f: {label: statistics.mean(x) for label, x in g.items()} for f, g in groups.items()})
        return self._means

    def record(self, run_id: str, labels: dict[str, str], seconds: float) -> None:
        """Add a completed run's duration and save the file (merged with what other sweeps wrote meanwhile)."""
        if self.path is None or seconds <= 0:
            return
        try:
            self._record(run_id, labels, seconds)
        except OSError as e:  # a cache: a read-only home must not stop the sweep
            log.warning("sweep durations not saved to %s: %s", self.path, e)

    def _record(self, run_id: str, labels: dict[str, str], seconds: float) -> None:
        # re-read first: another sweep may have written since (two writing in the same instant lose one entry,
        # which a cache can afford; the file itself is always whole)
        self.runs, self._means = self._read(), None
        entry = self.runs.pop(run_id, {"seconds": []})
        entry |= {f: labels.get(f) for f in FACTORS} | {"seconds": (entry["seconds"] + [seconds])[-KEEP_TIMES:],
                                                        "last": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.runs[run_id] = entry  # re-inserted: the dict's order is oldest first
        self.runs = dict(list(self.runs.items())[-KEEP_RUNS:])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"runs": self.runs}, indent=0))
        os.replace(tmp, self.path)


def longest_first(ids: list[str], estimates: dict[str, Estimate]) -> list[str]:
    """``ids`` in the order to start them: those without an estimate first (they may be the long ones), in their
    given order, then the others by estimated duration, longest first (ties in their given order)."""
    unknown = [i for i in ids if estimates[i].seconds is None]
    known = sorted((i for i in ids if estimates[i].seconds is not None), key=lambda i: -estimates[i].seconds)
    return unknown + known
