"""Where a sweep's runs execute: chosen once per sweep by name (``--executor local|ray``).

An executor takes the runs to do and calls back when one starts and when one ends; the driver keeps the
table. ``local`` runs them one after another in this process; ``ray`` (edgevit.sweeps.ray_executor) runs
each as a Ray task on this machine or on a cluster.
"""
from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from edgevit.errors import BadInput, RunFailure, one_line
from edgevit.recipe import Recipe


@dataclass
class Job:
    """One run handed to an executor: its identity, its folder name under ``OUT/runs`` and its recipe."""

    id: str
    folder: str
    recipe: Recipe
    max_retries: int = 2

    @property
    def cpus(self) -> int:
        """Cores the run asks for: its local device profiles' threads (a Ray task's OMP_NUM_THREADS follows its
        num_cpus, so its compression uses as many)."""
        return max([d.threads for d in self.recipe.validation.devices if d.kind == "local"] or [1])


@dataclass
class Outcome:
    """How a run ended: ``complete`` (its folder is in place; ``run_status`` is the report's status) or
    ``failed`` with a one-line ``error``; where it ran and where each timing was made."""

    status: str
    run_status: str | None = None
    error: str | None = None
    node: str | None = None
    host: str | None = None
    attempts: int = 1
    elapsed_s: float = 0.0
    timed: list[dict] = field(default_factory=list)
    discarded_partial: bool = False


Started = Callable[[Job, dict], None]
Done = Callable[[Job, Outcome], None]


class Executor(Protocol):
    name: str
    parallel: bool  # runs at once: the driver hands it the jobs longest first

    def run(self, jobs: list[Job], runs_dir: Path, started: Started, done: Done, shared: bool = False) -> None:
        """Run every job into ``runs_dir / job.folder``, calling ``started`` and ``done`` for each (``shared``: every
        node sees ``runs_dir`` at that path, so a run is written there where it runs)."""


EXECUTORS: dict[str, Callable[..., Executor]] = {}  # name -> class taking (address=, num_cpus=)


def register_executor(name: str):
    """Class decorator: make an executor available as ``--executor NAME``."""
    def deco(cls):
        cls.name = name
        EXECUTORS[name] = cls
        return cls
    return deco


def execute_run(recipe: Recipe, dest: Path, node: str) -> Outcome:
    """Run one recipe into ``dest`` (atomically: the folder exists only when the run completed) on ``node``; a bad
    input or a failure becomes a ``failed`` outcome with its one-line message. The outcome lists every timing the
    run made under the machine's bench lock (step, wait, start, end)."""
    from edgevit.devices.lease import recording_leases
    from edgevit.pipeline import run

    t0 = time.time()
    with recording_leases() as timed:
        try:
            report = run(recipe, dest, overwrite=True).report
            outcome = Outcome("complete", run_status=report["status"])
        except (BadInput, RunFailure) as e:
            outcome = Outcome("failed", error=one_line(str(e)))
        except Exception as e:  # noqa: BLE001 - one run's bug must not stop the sweep; the table says what it was
            outcome = Outcome("failed", error=one_line(f"{type(e).__name__}: {e}"))
    outcome.elapsed_s, outcome.node, outcome.host = round(time.time() - t0, 1), node, socket.gethostname()
    outcome.timed = [t | {"node": node} for t in timed]
    return outcome


@register_executor("local")
class LocalExecutor:
    """One run after another in this process (timing never overlaps anything of this sweep)."""

    parallel = False

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        if address is not None or num_cpus is not None:
            raise BadInput("--address and --num-cpus are options of --executor ray")

    def run(self, jobs: list[Job], runs_dir: Path, started: Started, done: Done, shared: bool = False) -> None:
        host = socket.gethostname()
        for job in jobs:
            started(job, {"node": "local", "host": host})
            done(job, execute_run(job.recipe, runs_dir / job.folder, "local"))
