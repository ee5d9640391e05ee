"""The two kinds of failure the CLI distinguishes (exit code 2 and 1)."""
from __future__ import annotations

import re


class BadInput(Exception):
    """The user's input is wrong (recipe, path, checkpoint, images): exit code 2, one clear line."""


class RunFailure(Exception):
    """Something failed while running a valid recipe: exit code 1."""


def one_line(text: str) -> str:
    """``text`` with control characters (newlines, NUL, ...) written as escapes: an error message that
    quotes user input (a YAML key, a file name) stays one line."""
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m.group())[1:-1], text)
