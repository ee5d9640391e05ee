"""Paths as the user writes them: a leading ``~`` or ``~user`` expanded, or one line saying it cannot be."""
from __future__ import annotations

import os
from pathlib import Path

from edgevit.errors import BadInput


def user_path(text: str | os.PathLike) -> Path:
    """``text`` as a Path with a leading ``~`` / ``~user`` expanded; BadInput when that user has no home directory
    on this machine (where pathlib's ``expanduser`` raises a bare RuntimeError)."""
    raw = os.fspath(text)
    expanded = os.path.expanduser(raw)
    if expanded.startswith("~"):
        user = raw[1:].split("/", 1)[0]
        whose = f"user {user!r}" if user else "the current user"
        raise BadInput(f"path {raw!r}: no home directory for {whose} on this machine; write the path in full")
    return Path(expanded)
