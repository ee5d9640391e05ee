"""The recipes, export presets, device profiles and calibration images that ship inside the package.

Read through :func:`root` (``importlib.resources``), so an installed edgevit (not only a source
checkout) runs ``edgevit compress --recipe int8_ptq`` from any folder.
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def root() -> Path:
    """The folder holding ``recipes/``, ``export/``, ``devices/`` and ``calibration/``."""
    return Path(str(files(__name__)))
