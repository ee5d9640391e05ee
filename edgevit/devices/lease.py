"""Exclusive use of a device while timing on it.

Every place that times artifacts or models wraps the timing in ``with timing_lease(device, step):``. For a
profile that runs on this machine the lease is an exclusive lock on one file per machine
(``$EDGEVIT_BENCH_LOCK``, default ``<tmp>/edgevit-bench.lock``): two edgevit processes (two runs of a sweep
on one node, or two users) never time at once, and the kernel frees the lock when its holder dies, even by
SIGKILL. An SSH device is locked on the device itself, by the runner that times there
(edgevit/devices/device_bench.py). The lock is taken outside any scheduler on purpose: a Ray task that
waits on a Ray call lends its CPUs to another task, which would then compress on the cores being timed.
"""
from __future__ import annotations

import os
import socket
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

_depth = 0  # nested leases in this process: the outer one holds the lock
_records: list[dict] | None = None


def bench_lock_path() -> Path:
    """The file whose lock stands for this machine's cores while something times on them."""
    return Path(os.environ.get("EDGEVIT_BENCH_LOCK") or Path(tempfile.gettempdir()) / "edgevit-bench.lock")


@contextmanager
def _machine_lock() -> Iterator[float]:
    """Hold the machine's bench lock; yields the seconds spent waiting for it."""
    global _depth
    if _depth:
        _depth += 1
        try:
            yield 0.0
        finally:
            _depth -= 1
        return
    t0 = time.monotonic()
    fd = os.open(bench_lock_path(), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            import fcntl
        except ImportError:  # no POSIX locks (Windows): timing is not guarded against other processes
            fcntl = None
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        _depth = 1
        try:
            yield time.monotonic() - t0
        finally:
            _depth = 0
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextmanager
def timing_lease(device, step: str) -> Iterator[None]:
    """Hold ``device`` (a device profile) while timing ``step``: this machine's bench lock for a local
    profile (re-entrant); nothing here for an SSH device, whose runner locks the device."""
    local = getattr(device, "kind", "local") == "local"
    with _machine_lock() if local else nullcontext(0.0) as waited:
        record = {"device": device.name, "step": step, "lock": str(bench_lock_path()) if local else "on the device",
                  "host": socket.gethostname(), "waited_s": round(waited, 2), "start": time.time()}
        try:
            yield
        finally:
            if _records is not None:
                _records.append(record | {"end": time.time()})


@contextmanager
def recording_leases() -> Iterator[list[dict]]:
    """Collect a record of every lease taken inside this block (device, step, lock, host, seconds waited, and
    when it was held: ``start`` / ``end``, seconds since the epoch)."""
    global _records
    previous, _records = _records, []
    try:
        yield _records
    finally:
        _records = previous
