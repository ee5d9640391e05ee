"""Exclusive use of a device while timing on it.

Every place that times artifacts or models wraps the timing in ``with timing_lease(device, step):``. A plain
run is alone on its machine and the lease costs nothing; a sweep whose runs share machines (Ray) installs a
provider that holds the device for the duration (a Ray resource), so no two runs time on one device at
once and timing does not share cores with another run's compression. The provider also records where
each step was timed, for the report.
"""
from __future__ import annotations

from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Callable, Iterator

LeaseProvider = Callable[[object, str], AbstractContextManager]

_provider: LeaseProvider | None = None
_held: dict[str, int] = {}


@contextmanager
def timing_lease(device, step: str) -> Iterator[None]:
    """Hold ``device`` (a device profile) while timing ``step``; re-entrant (a nested lease on the same
    device is the outer one)."""
    name = getattr(device, "name", str(device))
    if _provider is None or _held.get(name):
        cm: AbstractContextManager = nullcontext()
    else:
        cm = _provider(device, step)
    with cm:
        _held[name] = _held.get(name, 0) + 1
        try:
            yield
        finally:
            _held[name] -= 1


@contextmanager
def lease_provider(provider: LeaseProvider) -> Iterator[None]:
    """Use ``provider(device, step)`` for the leases taken inside this block."""
    global _provider
    previous, _provider = _provider, provider
    try:
        yield
    finally:
        _provider = previous
