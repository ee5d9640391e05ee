"""`edgevit sweep --executor ray` on a real two-node Ray cluster on this machine (two raylets on 127.0.0.1, one CPU
and one `edgevit-bench` timing resource each): runs spread over both nodes, timing held on the node's bench, a
bad run recorded beside the ones that finish, a worker killed mid-run retried with nothing partial left, and a
restarted sweep skipping what is done."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run_cli
from test_sweep_plan import SMALL

pytest.importorskip("ray", reason="the Ray tests need the ray extra: pip install 'edgevit[ray]'")

RAY = str(Path(sys.executable).with_name("ray"))
BENCH = '{"edgevit-bench": 1}'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([RAY, "start", "--block", "--num-cpus", "1", "--resources", BENCH,
                             "--disable-usage-stats", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head node and a second node joined to it, both on this machine; yields the head's address."""
    port = _free_port()
    scratch = tmp_path_factory.mktemp("ray-scratch")
    env = os.environ | {"EDGEVIT_SWEEP_SCRATCH": str(scratch), "RAY_USAGE_STATS_ENABLED": "0"}
    head = _start(["--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--include-dashboard", "false"],
                  env)
    nodes = [head]
    try:
        address = f"127.0.0.1:{port}"
        _wait_for_nodes(address, 1)
        nodes.append(_start(["--address", address, "--node-ip-address", "127.0.0.1"], env))
        _wait_for_nodes(address, 2)
        yield address, scratch
    finally:
        for p in reversed(nodes):
            os.killpg(p.pid, signal.SIGTERM)
        for p in nodes:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


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
    plan = {"name": "ray-zoo", "recipes": ["recipes/int8_ptq.yaml"], "overrides": SMALL} | kw
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return str(path)


def test_runs_spread_over_both_nodes_and_time_on_their_bench(cluster, tmp_path):
    """Four runs and one that fails in its worker on bad input (a checkpoint that is not one): the four finish,
    on both nodes, each timed while holding the bench of the node that ran it; the bad one is failed with its
    one-line error. A second identical command skips the finished runs."""
    address, _ = cluster
    (tmp_path / "garbage.safetensors").write_bytes(b"not a checkpoint")
    path = _plan(tmp_path, models=["builtin:hybrid-cifar10", "builtin:vit-cifar10",
                                   {"source": "builtin:hybrid-cifar10", "checkpoint": "garbage.safetensors"}],
                 set={"seed": [0, 1]})
    out = tmp_path / "out"
    res = run_cli("sweep", path, "--executor", "ray", "--address", address, "--out", str(out))
    assert res.returncode == 1, res.stderr[-3000:]  # the bad checkpoint's runs failed
    sweep = json.loads((out / "sweep.json").read_text())
    done = [r for r in sweep["runs"] if r["status"] == "complete"]
    failed = [r for r in sweep["runs"] if r["status"] == "failed"]
    assert len(done) == 4 and len(failed) == 2, [(r["folder"], r["status"], r["error"]) for r in sweep["runs"]]
    assert all("garbage.safetensors" in r["error"] and "\n" not in r["error"] for r in failed)
    assert len({r["node"] for r in done}) == 2  # both raylets ran work
    for r in done:
        assert r["timed"] and all(t["resource"] == "edgevit-bench" and t["node"] == r["node"] for t in r["timed"])
        assert {t["step"] for t in r["timed"]} >= {"validate"} and r["attempts"] == 1
        assert (out / "runs" / r["folder"] / "report.json").is_file()
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(r["folder"] for r in done)
    again = run_cli("sweep", path, "--executor", "ray", "--address", address, "--out", str(out))
    assert again.returncode == 1
    resumed = json.loads((out / "sweep.json").read_text())
    assert all(r.get("resumed") for r in resumed["runs"] if r["status"] == "complete")
    assert sum(r["status"] == "complete" for r in resumed["runs"]) == 4


def test_a_worker_killed_mid_run_is_retried_and_leaves_nothing_partial(cluster, tmp_path):
    """SIGKILL the worker of a running run (its pid from sweep.json, which the driver keeps current): Ray runs it
    again, the retry discards the dead attempt's scratch folder, the sweep completes with every run folder whole."""
    address, scratch = cluster
    path = _plan(tmp_path, models=["builtin:hybrid-cifar10"], set={"seed": [0, 1]})
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "edgevit.cli", "sweep", path, "--executor", "ray", "--address",
                             address, "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    killed = None
    deadline = time.time() + 120
    while killed is None and time.time() < deadline and proc.poll() is None:
        try:
            runs = json.loads((out / "sweep.json").read_text())["runs"]
        except (OSError, ValueError, KeyError):
            runs = []
        running = [r for r in runs if r["status"] == "running" and r.get("pid")]
        if running and (scratch / running[0]["id"]).is_dir():
            time.sleep(2)  # into the run
            os.kill(running[0]["pid"], signal.SIGKILL)
            killed = running[0]["id"]
        time.sleep(0.2)
    _, err = proc.communicate(timeout=300)
    assert killed, f"no run seen running: {err[-2000:]}"
    sweep = json.loads((out / "sweep.json").read_text())
    assert all(r["status"] == "complete" for r in sweep["runs"]), err[-3000:]
    assert proc.returncode in (0, 1, 3)  # 1 or 3: a tiny run's own check (its status is in the table)
    victim = next(r for r in sweep["runs"] if r["id"] == killed)
    assert victim["attempts"] == 2 and victim["discarded_partial"]
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(r["folder"] for r in sweep["runs"])
    assert not list(scratch.iterdir())
