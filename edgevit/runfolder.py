"""Run folders that appear only when complete: built under a temporary name, renamed at the end."""
from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from edgevit.errors import BadInput
from edgevit.paths import NAME_MAX, shown, user_path

FINISHED_MARKER = "report.json"


def check_target(out: Path, overwrite: bool) -> None:
    """Refuse to replace an existing run (or any non-empty folder) unless ``overwrite``, and a folder name the
    file system cannot hold with the run's temporary sibling (``partial_path``) beside it."""
    user_path(out)
    staged = len(partial_path(out).name.encode(errors="surrogateescape"))
    if staged > NAME_MAX:
        most = NAME_MAX - (staged - len(out.name.encode(errors="surrogateescape")))
        raise BadInput(f"--out {shown(str(out))}: the run folder's name is too long (at most {most} bytes here: "
                       "the run is built beside it under a longer temporary name)")
    if out.exists() and not overwrite:
        if out.is_dir() and not any(out.iterdir()):
            return
        what = "a finished run" if (out / FINISHED_MARKER).is_file() else "a folder that is not empty"
        raise BadInput(f"{out} already holds {what}; pass --overwrite to replace it or --out to choose another folder")
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {out} is a file, not a folder")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def discard_partials(out: Path, any_process: bool = True) -> bool:
    """Delete the partial stages of ``out``: every one (``any_process``: for a caller that knows no other attempt at
    this run is alive, e.g. on a folder shared by several machines, where a pid says nothing), or only those whose
    process on this machine is gone (what a SIGKILL or a power loss left); True if any was deleted."""
    def gone(stage: Path) -> bool:
        pid = stage.name.rsplit("-", 1)[-1]
        return pid.isdigit() and not _pid_alive(int(pid))

    stale = [s for s in out.parent.glob(f".{out.name}.partial-*") if any_process or gone(s)]
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return bool(stale)


@contextmanager
def staged_run_folder(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``out``, on failure it is removed."""
    check_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    discard_partials(out, any_process=False)
    stage = partial_path(out)
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    swap_in(stage, out)


def partial_path(out: Path) -> Path:
    """The temporary sibling this process builds ``out`` in (``discard_partials`` knows its name)."""
    return out.with_name(f".{out.name}.partial-{os.getpid()}")


def swap_in(new: Path, out: Path) -> None:
    """Replace ``out`` (if it exists) by the folder ``new`` with renames only: ``out`` is never half-written."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(new, out)
    shutil.rmtree(old, ignore_errors=True)


STATUS_FILE = "run.json"


def mark(stage: Path, step: str, status: str = "running", **extra) -> None:
    """Write ``run.json`` (atomically): which step the run is in, or ``status: complete`` once all is
    written. A folder left by a killed run says ``running`` and the step it died in."""
    path = stage / STATUS_FILE
    try:
        first = json.loads(path.read_text())
    except (OSError, ValueError):
        first = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "pid": os.getpid()}
    data = first | {"status": status, "step": step, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")} | extra
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)
