"""Paths as the user writes them: a leading ``~`` or ``~user`` expanded and the name's length checked, or one line
saying why it cannot be used (where the OS would raise ``RuntimeError`` or ``OSError: File name too long``)."""
from __future__ import annotations

import os
from pathlib import Path

from edgevit.errors import BadInput


def _limit(name: str, default: int) -> int:
    try:
        return os.pathconf("/", name)
    except (OSError, ValueError):
        return default


NAME_MAX, PATH_MAX = _limit("PC_NAME_MAX", 255), _limit("PC_PATH_MAX", 4096)


def cut(text: str, most: int = 120) -> str:
    """``text``, cut in the middle when longer than ``most`` characters (an error message stays short)."""
    return text if len(text) <= most else f"{text[:most // 2]}...{text[-most // 4:]} ({len(text)} characters)"


def shown(text: str, most: int = 120) -> str:
    """``text`` for an error message: as is, or quoted with escapes when it holds a newline or another unprintable
    character (the message stays one line), cut in the middle when longer than ``most`` characters."""
    return cut(text if text.isprintable() else repr(text), most)


def user_path(text: str | os.PathLike) -> Path:
    """``text`` as a Path with a leading ``~`` / ``~user`` expanded; BadInput when that user has no home directory
    on this machine, or when the path or one of its names is longer than the file system allows."""
    raw = os.fspath(text)
    expanded = os.path.expanduser(raw)
    if expanded.startswith("~"):
        user = raw[1:].split("/", 1)[0]
        whose = f"user {shown(user, 40)!r}" if user else "the current user"
        raise BadInput(f"path {shown(raw)}: no home directory for {whose} on this machine; write the path in full")
    longest = max((len(part.encode(errors="surrogateescape")) for part in expanded.split("/")), default=0)
    if longest > NAME_MAX or len(expanded.encode(errors="surrogateescape")) > PATH_MAX:
        raise BadInput(f"path {shown(raw)}: too long for the file system (at most {NAME_MAX} bytes a name, "
                       f"{PATH_MAX} the whole path)")
    return Path(expanded)
