"""The bench lock that timing holds: another process waits for it, a nested lease does not deadlock, and a holder
killed with SIGKILL leaves it free."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

from edgevit.devices.lease import recording_leases, timing_lease

HOLD = """
import sys, time
from types import SimpleNamespace
from edgevit.devices.lease import timing_lease
with timing_lease(SimpleNamespace(name="cpu", kind="local"), "hold"):
    print("held", flush=True)
    time.sleep(float(sys.argv[1]))
"""


def _holder(tmp_path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(seconds)], stdout=subprocess.PIPE, text=True,
                            env=os.environ | {"EDGEVIT_BENCH_LOCK": str(tmp_path / "bench.lock")})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_timing_waits_for_another_process_and_not_for_itself(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEVIT_BENCH_LOCK", str(tmp_path / "bench.lock"))
    cpu, ssh = SimpleNamespace(name="cpu", kind="local"), SimpleNamespace(name="pi", kind="ssh")
    holder = _holder(tmp_path, 1.5)
    with recording_leases() as records:
        with timing_lease(cpu, "validate"):
            with timing_lease(cpu, "nested"):  # re-entrant: the outer lease holds the lock
                pass
        with timing_lease(ssh, "validate"):  # an SSH device is locked on the device, not here
            pass
    holder.wait()
    outer = next(r for r in records if r["step"] == "validate" and r["device"] == "cpu")
    assert 0.8 < outer["waited_s"] < 10 and outer["lock"] == str(tmp_path / "bench.lock")
    assert next(r for r in records if r["step"] == "nested")["waited_s"] == 0.0
    assert next(r for r in records if r["device"] == "pi")["lock"] == "on the device"


def test_a_killed_holder_leaves_the_lock_free(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEVIT_BENCH_LOCK", str(tmp_path / "bench.lock"))
    holder = _holder(tmp_path, 60)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    t0 = time.monotonic()
    with timing_lease(SimpleNamespace(name="cpu", kind="local"), "validate"):
        pass
    assert time.monotonic() - t0 < 2
