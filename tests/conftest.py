"""Shared fixtures: small real image folders made from the shipped CIFAR-10 sample."""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EVAL_DIR = ROOT / "calibration" / "builtin-eval"
CALIB_DIR = ROOT / "calibration" / "builtin-calib"


def deployable_weights() -> dict:
    """Weight settings under which ONNX Runtime's int8 kernels compute what was simulated, as
    quantize.weights.overflow_fix: auto chooses: 7 bits on an x86 CPU without VNNI (its kernels add
    pairs of uint8 x int8 products in 16 bits, which 8-bit weights overflow), 8 elsewhere."""
    from edgevit.quant.lowering import WEIGHT_BITS_IN_INT8
    from edgevit.validate.latency import int8_dot_saturates

    return {"bits": WEIGHT_BITS_IN_INT8} if int8_dot_saturates() else {}


_MACHINE_LOCK = "EDGEVIT_TEST_MACHINE_LOCK"


def pytest_configure(config):
    """On pytest-xdist workers (the suite's default, ``-n 2``), before any worker starts: each worker's share of
    the cores for torch's, ONNX Runtime's and OpenVINO's thread pools (a pool per core in every worker makes
    their threads wait on each other: block reconstruction ran 10x slower), and the lock file that lets a module
    marked ``alone`` run with no other test running."""
    config.addinivalue_line("markers", "alone: the module runs while no other test module runs (under xdist)")
    workers = getattr(config.option, "numprocesses", None) or 0
    if workers and not os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // workers)))
        lock_dir = tempfile.mkdtemp(prefix="edgevit-tests-")
        os.environ[_MACHINE_LOCK] = str(Path(lock_dir) / "machine.lock")


def pytest_unconfigure(config):
    """The controller removes the lock file's folder it made."""
    path = os.environ.get(_MACHINE_LOCK)
    if path and not os.environ.get("PYTEST_XDIST_WORKER"):
        shutil.rmtree(Path(path).parent, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """Modules marked ``alone`` first, then the others by their number of tests, largest first (xdist's own order
    under ``--dist loadscope``, which ``--no-loadscope-reorder`` hands to this hook). First, an ``alone`` module
    waits only for the other worker's first ``alone`` module; later, it waited for whichever long module the other
    worker had just begun, with its own worker idle."""
    sizes: dict[str, int] = {}
    for item in items:
        sizes[item.module.__name__] = sizes.get(item.module.__name__, 0) + 1
    # stable: modules of equal size keep their order, and tests their order inside a module
    items.sort(key=lambda item: (item.get_closest_marker("alone") is None, -sizes[item.module.__name__]))


@contextlib.contextmanager
def _machine(exclusive: bool):
    """A readers-writer lock over the test workers: shared for a test module, exclusive for an ``alone`` one. The
    gate is a turnstile: a worker waiting for the exclusive lock holds it, so the other worker's next module
    waits rather than starving it."""
    path = os.environ.get(_MACHINE_LOCK)  # set only for xdist workers
    if not path:
        yield
        return
    with open(path + ".gate", "a") as gate, open(path, "a") as lock:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="module", autouse=True)
def machine_share(request):
    """Every test module holds the machine shared; one marked ``alone`` (a real Ray cluster whose scheduling order
    a test checks; a verdict read from measured times) holds it alone, from before its module fixtures start to after they stop."""
    with _machine(exclusive=request.node.get_closest_marker("alone") is not None):
        yield


@pytest.fixture(scope="session", autouse=True)
def sweep_history(tmp_path_factory):
    """The sweeps' duration history in a file of this test session (not the user's cache); Ray workers and
    CLI subprocesses inherit it."""
    path = tmp_path_factory.mktemp("history") / "sweep-durations.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEVIT_SWEEP_HISTORY", str(path))
        yield path


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """A real sshd on 127.0.0.1 (tests/loopback_sshd.py), for the tests of the SSH device path."""
    from loopback_sshd import loopback_sshd

    with loopback_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture
def small_imagefolder(tmp_path: Path) -> Path:
    """An ImageFolder with 3 real JPEGs for each of the 10 CIFAR-10 classes."""
    out = tmp_path / "images"
    for cls in sorted(d.name for d in EVAL_DIR.iterdir()):
        (out / cls).mkdir(parents=True)
        for f in sorted((EVAL_DIR / cls).iterdir())[:3]:
            shutil.copy(f, out / cls / f.name)
    return out


def fast(eval_num: int | None = 200, calib_num: int | None = 64, iters: int = 3, devices: bool = True) -> list[str]:
    """``--set`` arguments for a quick run of a recipe in a test that does not measure speed: few timing
    iterations on the recipe's first device (or no device), fewer evaluation and calibration images
    (None: the recipe's own)."""
    sets = [f"validate.devices.0.iters={iters}", "validate.devices.0.warmup=1",
            "validate.devices.0.throughput_batch=4"] if devices else ["validate.devices=[]"]
    sets += [f"validate.eval.num={eval_num}"] if eval_num is not None else []
    sets += [f"calibration.num={calib_num}"] if calib_num is not None else []
    return [a for s in sets for a in ("--set", s)]


def run_cli(*args: str, cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the real `edgevit` command line in a subprocess."""
    return subprocess.run([sys.executable, "-m", "edgevit.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """The real `edgevit` command line run in this process (typer's runner on edgevit.cli's app, from ``cwd``):
    the same parsing, one-line errors, runs and exit codes as :func:`run_cli` without starting Python and
    importing torch again (3-4 s a command). :func:`run_cli` stays for what needs a process of its own: the
    README's command, tracebacks (--debug), signals and kills, Ray drivers."""
    from typer.testing import CliRunner

    from edgevit.cli import app

    with contextlib.chdir(cwd):
        res = CliRunner().invoke(app, list(args))
    return subprocess.CompletedProcess(list(args), res.exit_code, res.stdout, res.stderr)


def speed_only_failures(report: dict) -> list[str]:
    """The failed checks of a run, asserting that they are only "not slower than FP32" ones (how a tiny model's
    INT8 timing compares with FP32 on a shared 2-core machine varies from run to run; FP16 / BF16 files run
    slower than FP32 on CPUs without native FP16 / BF16 arithmetic)."""
    failed = [c["name"] for c in report["checks"] if not c["ok"]]
    assert all(re.search(r": (INT8|FP16|BF16) not slower than ", n) for n in failed), failed
    return failed
