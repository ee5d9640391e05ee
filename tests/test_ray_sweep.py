"""`edgevit sweep --executor ray` on a real two-node Ray cluster on this machine (two raylets on 127.0.0.1, one CPU
each): runs spread over both nodes, every timing under the machine's bench lock and none overlapping another, a
bad run recorded beside the ones that finish, a worker killed mid-run retried with nothing partial left, runs
started longest first by earlier sweeps' durations, and a restarted sweep skipping what is done (one sweep exercises all of it: a Ray worker costs seconds to start); a
sweep writing into a shared ``runs_dir`` interrupted with Ctrl-C and finished by the same command."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run_cli
from edgevit.results import STATUS_EXIT
from edgevit.sweeps.durations import DurationHistory
from edgevit.sweeps.plan import expand, load_plan
from test_sweep_plan import SMALL

pytest.importorskip("ray", reason="the Ray tests need the ray extra: pip install 'edgevit[ray]'")
pytestmark = pytest.mark.alone  # its start-order and Ctrl-C checks failed beside a busy test worker

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([RAY, "start", "--block", "--num-cpus", "1", "--disable-usage-stats", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head node and a second node joined to it, both on this machine; yields the head's address and the
    workers' scratch folder (their bench lock is the file beside it)."""
    port = _free_port()
    scratch = tmp_path_factory.mktemp("ray-scratch")
    # a loopback cluster: no token authentication (with a token in ~/.ray, which a local ray.init() leaves,
    # Ray 2.60 turns it on and clients connecting by 127.0.0.1 are refused)
    env = os.environ | {"EDGEVIT_SWEEP_SCRATCH": str(scratch), "RAY_USAGE_STATS_ENABLED": "0",
                        "EDGEVIT_BENCH_LOCK": str(scratch.parent / "bench.lock"), "RAY_AUTH_MODE": "disabled"}
    session = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    head = _start(["--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--include-dashboard", "false",
                   "--temp-dir", session], env)
    nodes = [head]
    try:
        address = f"127.0.0.1:{port}"
        _wait_for_nodes(address, 1)
        nodes.append(_start(["--address", address, "--node-ip-address", "127.0.0.1", "--temp-dir", session], env))
        _wait_for_nodes(address, 2)
        yield address, scratch
    finally:
        for p in reversed(nodes):
            os.killpg(p.pid, signal.SIGTERM)
        for p in nodes:
            try:
                p.wait(2)
            except subprocess.TimeoutExpired:
                pass
            try:  # what is left of the node's processes (they share the `ray start` session)
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(session, ignore_errors=True)


def _wait_for_nodes(address: str, n: int, timeout: float = 90) -> None:
    code = ("import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); "
            "print(sum(x['Alive'] for x in ray.nodes()))")
    deadline = time.time() + timeout
    while time.time() < deadline:
        res = subprocess.run([sys.executable, "-c", code, address], capture_output=True, text=True, timeout=60)
        if res.returncode == 0 and int(res.stdout.split()[-1]) >= n:
            return
        time.sleep(1)
    raise TimeoutError(f"Ray at {address} did not reach {n} nodes")


def _plan(tmp_path: Path, **kw) -> str:
    plan = {"name": "ray-zoo", "recipes": ["recipes/int8_ptq.yaml"],
            "overrides": SMALL + ["export=[export/onnx-fp32.yaml,export/onnx-int8.yaml]"]} | kw
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return str(path)


def _wait_for_a_running_task(proc: subprocess.Popen, out: Path, in_progress, timeout: float = 120) -> dict | None:
    """A run that sweep.json shows running (the driver keeps its worker's pid there), at least 2 s into it and
    still ``in_progress`` (its scratch or partial folder exists: a worker runs one task after another, so a
    finished run's pid may already be another run's, or idle); None when none was seen running."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            runs = json.loads((out / "sweep.json").read_text())["runs"]
        except (OSError, ValueError, KeyError):
            runs = []
        for r in runs:
            if (r["status"] == "running" and r.get("pid") and time.time() - r["started"] > 2
                    and in_progress(r)):
                return r
        time.sleep(0.1)
    return None


def test_runs_spread_over_both_nodes_survive_a_killed_worker_and_resume(cluster, tmp_path):
    """Four runs, two that fail in their worker on bad input (a checkpoint that is not one) and six of a recipe
    that does not validate: the four finish, on both nodes, each timed under the machine's bench lock, no two
    timings at once; the bad ones are failed with their one-line error. One worker is SIGKILLed mid-run: Ray runs it again, the retry discards the dead
    attempt's scratch folder, and every run folder is whole. The same command again skips the finished runs."""
    address, scratch = cluster
    (tmp_path / "garbage.safetensors").write_bytes(b"not a checkpoint")
    (tmp_path / "bad.yaml").write_text("base: recipes/int8_ptq.yaml\nname: bad\nquantize: {activations: {bits: 9}}\n")
    path = _plan(tmp_path, recipes=["recipes/int8_ptq.yaml", "bad.yaml"], models=["builtin:hybrid-cifar10", "builtin:vit-cifar10",
                                   {"source": "builtin:hybrid-cifar10", "checkpoint": "garbage.safetensors"}],
                 set={"seed": [0, 1]})
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "edgevit.cli", "sweep", path, "--executor", "ray", "--address", address,
           "--out", str(out)]
    # earlier sweeps' durations that make the plan's last valid run the longest: Ray is handed them reversed
    history = DurationHistory(tmp_path / "history.json")
    valid = [s for s in expand(*load_plan(path)) if not s.error]
    for i, spec in enumerate(valid):
        history.record(spec.id, spec.labels, 10.0 * (i + 1))
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ | {"EDGEVIT_SWEEP_HISTORY": str(history.path)})
    victim = _wait_for_a_running_task(proc, out, lambda r: (scratch / r["id"]).is_dir())
    if victim:
        os.kill(victim["pid"], signal.SIGKILL)
    _, err = proc.communicate(timeout=600)
    assert victim, f"no run seen running: {err[-2000:]}"
    killed = victim["id"]
    assert proc.returncode == 1, err[-3000:]  # the bad checkpoint's runs failed
    sweep = json.loads((out / "sweep.json").read_text())
    done = [r for r in sweep["runs"] if r["status"] == "complete"]
    failed = [r for r in sweep["runs"] if r["status"] == "failed"]
    assert len(done) == 4 and len(failed) == 8, [(r["folder"], r["status"], r["error"]) for r in sweep["runs"]]
    assert all("\n" not in r["error"] for r in failed)
    assert sum("garbage.safetensors" in r["error"] for r in failed) == 2
    assert sum("bad.yaml: quantize.activations.bits" in r["error"] and r["node"] is None for r in failed) == 6
    assert len({r["node"] for r in done}) == 2  # both raylets ran work
    lock = str(scratch.parent / "bench.lock")
    for r in done:
        assert r["timed"] and all(t["lock"] == lock and t["node"] == r["node"] for t in r["timed"])
        assert "validate" in {t["step"] for t in r["timed"]}
        assert (out / "runs" / r["folder"] / "report.json").is_file()
    held = sorted((t["start"], t["end"]) for r in done for t in r["timed"])  # runs on both nodes at once...
    assert all(end <= nxt for (_, end), (nxt, _) in zip(held, held[1:]))  # ...but never timing at once
    retried = [r for r in done if r["attempts"] == 2]  # the one killed (its scratch folder is checked just before)
    assert len(retried) == 1 and retried[0]["id"] == killed and retried[0]["discarded_partial"]
    assert all(r["attempts"] == 1 and not r["discarded_partial"] for r in done if r["id"] != killed)
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(r["folder"] for r in done)
    assert not list(scratch.iterdir())  # every attempt's scratch folder is gone
    queue = [s.folder for s in reversed(valid)]
    assert sweep["order"] | {"history": None} == {"rule": "longest-first", "history": None, "estimated": 6,
                                                  "runs": 6, "queue": queue}
    started = {r["folder"]: r["started"] for r in sweep["runs"] if r["node"] and r["id"] != killed}
    ranked = [started[f] for f in queue if f in started]  # two CPUs: a run starts after all but one before it
    assert all(a < b for i, a in enumerate(ranked) for b in ranked[i + 2:]), (queue, started)
    again = run_cli(*cmd[3:])
    assert again.returncode == 1
    resumed = json.loads((out / "sweep.json").read_text())
    assert [r["status"] for r in resumed["runs"]] == [r["status"] for r in sweep["runs"]]
    assert all(r.get("resumed") for r in resumed["runs"] if r["status"] == "complete")


def test_ctrl_c_on_a_shared_runs_dir_keeps_nothing_partial_and_the_rerun_finishes_there(cluster, tmp_path):
    """A plan with ``runs_dir`` (a folder every node sees): SIGINT to the driver while a worker writes its run there
    -> exit 130 within seconds, that worker gone (its task cancelled), no run shown running, no partial folder on
    the shared path. The same command again runs the rest there (nothing under OUT/runs, nothing sent back), and
    a partial folder a dead node left on the shared path is discarded by the run's next attempt."""
    address, scratch = cluster
    shared = tmp_path / "shared-runs"
    path = _plan(tmp_path, models=["builtin:hybrid-cifar10"], set={"seed": [0, 1]}, runs_dir="shared-runs")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "edgevit.cli", "sweep", path, "--executor", "ray", "--address", address, "--out",
           str(out)]
    # SIGINT as a terminal's Ctrl-C reaches a command: not ignored (a shell ignores it in what it starts with &,
    # and a child inherits that, so a suite run in the background would otherwise send a signal nobody hears)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    running = _wait_for_a_running_task(proc, out, lambda r: any(shared.glob(f".{r['folder']}.partial-*")))
    assert running, proc.communicate()[1][-2000:]
    pid = running["pid"]
    t0 = time.time()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and time.time() - t0 < 30, err[-2000:]
    assert "interrupted" in err and "run the same command again" in err and "shared-runs" in err
    time.sleep(3)
    with pytest.raises(ProcessLookupError):  # the cancelled task's worker is gone
        os.kill(pid, 0)
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["runs_dir"] == str(shared) and not any(r["status"] == "running" for r in sweep["runs"])
    finished = sorted(r["folder"] for r in sweep["runs"] if r["status"] == "complete")
    assert sorted(p.name for p in shared.iterdir()) == finished  # no partial folder left on the shared path
    assert not (out / "runs").exists() and not list(scratch.iterdir())
    todo = [r for r in sweep["runs"] if r["status"] != "complete"]
    stale = shared / f".{todo[0]['folder']}.partial-{pid}"  # as a node that died mid-run would leave it
    (stale / "onnx").mkdir(parents=True)
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    again = json.loads((out / "sweep.json").read_text())
    assert [r["status"] for r in again["runs"]] == ["complete"] * 2, res.stderr[-3000:]
    # tiny runs may fail a check (INT8 timing, agreement on 24 images): the exit code says so, as compress's
    codes = {STATUS_EXIT[r["run_status"]] for r in again["runs"]}
    assert res.returncode == (1 if 1 in codes else max(codes)), res.stderr[-3000:]
    assert sorted(p.name for p in shared.iterdir()) == sorted(r["folder"] for r in again["runs"])
    assert all((shared / r["folder"] / "report.json").is_file() for r in again["runs"])
    assert not (out / "runs").exists() and not list(scratch.iterdir())
    redone = {r["folder"]: r for r in again["runs"] if not r.get("resumed")}
    assert set(redone) == {r["folder"] for r in todo} and redone[todo[0]["folder"]]["discarded_partial"]

