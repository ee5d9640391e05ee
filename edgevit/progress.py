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


def setup_logging(debug: bool = False) -> None:
    """Route the ``edgevit`` logger to stderr through rich, once."""
    logger = logging.getLogger("edgevit")
    if not any(isinstance(h, RichHandler) for h in logger.handlers):
        handler = RichHandler(console=console, show_time=False, show_path=False, markup=False)
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False
