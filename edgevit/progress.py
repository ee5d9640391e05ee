"""Progress bars and log output on stderr (stdout stays free for machine-readable output)."""
from __future__ import annotations

import logging

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)


def new_progress() -> Progress:
    """A rich progress display for long steps (calibration, export, evaluation, benchmarking)."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=False)


class Steps:
    """One progress bar task for a long step made of phases (``phase(label, total)`` restarts the bar with its
    own description and length); calling it advances one unit. Passed where an ``on_layer(name)`` callback is
    taken, so code that knows its phases names them and other code only advances."""

    def __init__(self, progress: Progress, prefix: str):
        self.progress, self.prefix = progress, prefix
        self.task = progress.add_task(prefix, total=None)

    def __call__(self, _name: str | None = None) -> None:
        self.progress.advance(self.task)

    def phase(self, label: str, total: int | None) -> None:
        self.progress.update(self.task, description=f"{self.prefix}: {label}", total=total, completed=0)


def phase(on_step, label: str, total: int | None) -> None:
    """Start phase ``label`` of ``total`` steps on ``on_step`` when it is a :class:`Steps` (else nothing)."""
    if hasattr(on_step, "phase"):
        on_step.phase(label, total)


def setup_logging(debug: bool = False) -> None:
    """Route the ``edgevit`` logger to stderr through rich, once."""
    logger = logging.getLogger("edgevit")
    if not any(isinstance(h, RichHandler) for h in logger.handlers):
        handler = RichHandler(console=console, show_time=False, show_path=False, markup=False)
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False
