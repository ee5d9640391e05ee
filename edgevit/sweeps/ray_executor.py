"""``--executor ray``: each run is a Ray task in its own worker process, on this machine (``ray.init()``
starts a local Ray) or on a cluster (``--address auto|HOST:PORT|ray://HOST:10001``).

- A task asks for as many CPUs as the run's device profiles use threads; it builds its run folder in a
  scratch folder on its node and returns it as one tar archive, which the driver unpacks beside
  ``OUT/runs/`` and renames into place: a run folder is never partial. With a plan's shared ``runs_dir``
  (seen by every node at the same path) the task builds the run there under a hidden name and renames it,
  and returns no archive.
- A worker that dies (killed, out of memory) is retried up to the plan's ``max_retries``; the retry
  discards the dead attempt's scratch (or partial shared) folder. A run that fails is not retried: it is
  recorded with its one-line error.
- Timing holds the node's bench lock (edgevit.devices.lease), so no two runs on a machine time at once, and
  an SSH device's own lock. A task never waits on a Ray call while it runs: Ray lends the CPUs of a task
  blocked in ``ray.get`` / ``ray.wait`` to the next task, which would put a second run on its cores.
"""
from __future__ import annotations

import io
import os
import shutil
import socket
import tarfile
import tempfile
import time
from pathlib import Path

from edgevit.errors import BadInput, one_line
from edgevit.runfolder import discard_partials, partial_path, swap_in
from edgevit.sweeps.executors import Done, Job, Outcome, Started, execute_run, register_executor


def _ray():
    try:
        import ray
    except ImportError as e:
        raise BadInput("--executor ray needs Ray: pip install 'edgevit[ray]'") from e
    return ray


class _Progress:
    """Driver-owned actor the tasks tell when they start (so the table shows what is running where)."""

    def __init__(self):
        self.started: dict[str, list[dict]] = {}

    def start(self, run_id: str, where: dict) -> None:
        self.started.setdefault(run_id, []).append(where)

    def snapshot(self) -> dict[str, list[dict]]:
        return self.started


_REMOTE: dict = {}


def _remote(obj):
    """``ray.remote(obj)``, made once per process (registering a function or class with Ray has a cost)."""
    if obj not in _REMOTE:
        _REMOTE[obj] = _ray().remote(obj)
    return _REMOTE[obj]


def _scratch_root() -> Path:
    return Path(os.environ.get("EDGEVIT_SWEEP_SCRATCH") or Path(tempfile.gettempdir()) / "edgevit-sweep")


def _task(recipe, run_id: str, progress, shared_dest: str | None = None) -> dict:
    """The body of one Ray task: run the recipe on this node and return its folder as a tar archive, or, with a
    ``shared_dest`` every node sees, write the run there (atomically) and return no archive."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    host = socket.gethostname()
    scratch = _scratch_root() / run_id
    if shared_dest:  # a dead attempt's partial folder, whichever node left it: this is the only live attempt
        dest, discarded = Path(shared_dest), discard_partials(Path(shared_dest))
    else:
        dest, discarded = scratch / "run", scratch.exists()  # a dead attempt's leftovers: never reused
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
    # not waited for: a task blocked on a Ray call lends its CPUs to another task
    where = {"node": node, "host": host, "pid": os.getpid(), "started": time.time()}
    progress.start.remote(run_id, where)
    try:
        outcome = execute_run(recipe, dest, node)
        outcome.discarded_partial = discarded
        archive = None
        if outcome.status == "complete" and not shared_dest:
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tar:
                tar.add(dest, arcname="run")
            archive = buf.getvalue()
        return {"outcome": outcome, "archive": archive, "where": where}
    finally:
        if not shared_dest:
            shutil.rmtree(scratch, ignore_errors=True)


def unpack_run(archive: bytes, dest: Path) -> None:
    """Unpack a run folder archived by a task into ``dest`` (replacing it), atomically."""
    partial = partial_path(dest)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(partial, filter="data")
        swap_in(partial / "run", dest)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


@register_executor("ray")
class RayExecutor:
    """Runs as Ray tasks on the cluster at ``address``, or on a Ray it starts here (``num_cpus``: its CPUs). Tasks
    are submitted in the order of ``jobs``, which Ray starts them in as CPUs free up."""

    parallel = True

    def __init__(self, address: str | None = None, num_cpus: int | None = None, poll_s: float = 0.5):
        self.address = address
        self.num_cpus = num_cpus
        self.poll_s = poll_s

    def _connect(self):
        ray = _ray()
        kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if self.address and self.num_cpus:
            raise BadInput("--num-cpus is for the Ray this command starts; a cluster's nodes say their own CPUs")
        if self.address:
            try:
                ray.init(address=self.address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise BadInput(one_line(f"--address {self.address}: cannot connect to Ray: {e}")) from e
        else:
            ray.init(num_cpus=self.num_cpus, **kwargs)
        return ray

    def run(self, jobs: list[Job], runs_dir: Path, started: Started, done: Done, shared: bool = False) -> None:
        if not jobs:
            return
        ray = self._connect()
        try:
            biggest = max(n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive"))
            for job in jobs:
                if job.cpus > biggest:
                    raise BadInput(f"run {job.folder} needs {job.cpus} CPUs (its device profile's threads) but the "
                                   f"largest Ray node has {biggest:g}: set validate.devices.0.threads in the plan")
            progress = _remote(_Progress).options(num_cpus=0).remote()
            task = _remote(_task)
            pending = {task.options(num_cpus=job.cpus, max_retries=job.max_retries, retry_exceptions=False,
                                    name=f"edgevit:{job.folder}").remote(
                job.recipe, job.id, progress, str(runs_dir / job.folder) if shared else None): job for job in jobs}
            seen: dict[str, int] = {}
            try:
                while pending:
                    ready, _ = ray.wait(list(pending), num_returns=1, timeout=self.poll_s)
                    starts = ray.get(progress.snapshot.remote())
                    for job in pending.values():
                        for where in starts.get(job.id, [])[seen.get(job.id, 0):]:
                            started(job, where)
                        seen[job.id] = len(starts.get(job.id, []))
                    for ref in ready:
                        job = pending.pop(ref)
                        attempts = len(starts.get(job.id, [])) or 1
                        outcome, where = self._finish(ray, ref, job, runs_dir, attempts)
                        if where is not None and not seen.get(job.id):  # done before its start reached the actor
                            started(job, where)
                        done(job, outcome)
            except KeyboardInterrupt:
                for ref in pending:
                    ray.cancel(ref, force=True)
                if shared:  # the killed workers' partial folders are on the shared path: remove them once dead
                    ray.wait(list(pending), num_returns=len(pending), timeout=10)
                    for job in pending.values():
                        discard_partials(runs_dir / job.folder)
                raise
        finally:
            ray.shutdown()

    @staticmethod
    def _finish(ray, ref, job: Job, runs_dir: Path, attempts: int) -> tuple[Outcome, dict | None]:
        """The finished task's outcome (its run unpacked into ``runs_dir``) and where it started (None if it died)."""
        try:
            payload = ray.get(ref)
        except ray.exceptions.RayError as e:  # the worker died more often than max_retries allows
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            return Outcome("failed", error=one_line(f"{type(e).__name__}: {msg}"), attempts=attempts), None
        outcome: Outcome = payload["outcome"]
        outcome.attempts = attempts
        if payload["archive"] is not None:
            unpack_run(payload["archive"], runs_dir / job.folder)
        return outcome, payload["where"]
