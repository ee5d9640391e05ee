"""Run a sweep plan: expand it, skip the runs a previous attempt finished, hand the rest to the executor,
and keep ``OUT/sweep.json`` / ``sweep.md`` current while it runs (``OUT/runs/<run>/``, or the plan's shared
``runs_dir``, holds each finished run's full folder; a folder there is always complete)."""
from __future__ import annotations

import importlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from edgevit.errors import BadInput
from edgevit.results import STATUS_EXIT
from edgevit.runfolder import STATUS_FILE
from edgevit.sweeps.durations import DurationHistory, history_path, longest_first
from edgevit.sweeps.executors import EXECUTORS, Executor, Job, Outcome
from edgevit.sweeps.leaderboard import run_entry, write_leaderboard
from edgevit.sweeps.plan import Plan, RunSpec, expand, runs_folder

log = logging.getLogger("edgevit")


@dataclass
class SweepResult:
    """Where the sweep wrote its table and runs, and the table (sweep.json's content)."""

    out_dir: Path
    summary: dict

    @property
    def exit_code(self) -> int:
        """0: every run complete and ok; 1: a run failed or a finished run failed a check or its budget; 3:
        only "INT8 not faster" runs besides ok ones (as ``compress``)."""
        runs = self.summary["runs"]
        if any(r["status"] != "complete" for r in runs):
            return 1
        codes = {STATUS_EXIT.get(r.get("run_status"), 1) for r in runs}
        return 1 if 1 in codes else max(codes, default=0)


# executors whose module (and library) load only when chosen
_LAZY = {"ray": "edgevit.sweeps.ray_executor"}


def make_executor(name: str, address: str | None = None, num_cpus: int | None = None) -> Executor:
    """The executor registered as ``name``, with its options."""
    if name in _LAZY:
        importlib.import_module(_LAZY[name])
    if name not in EXECUTORS:
        raise BadInput(f"--executor {name!r}: unknown (known: {', '.join(sorted(set(EXECUTORS) | set(_LAZY)))})")
    return EXECUTORS[name](address=address, num_cpus=num_cpus)


def _prepare(out_dir: Path, runs_dir: Path, name: str, overwrite: bool) -> None:
    """Make ``out_dir`` this sweep's folder: new, resumed (same plan name) or replaced (``overwrite``; a shared
    ``runs_dir`` outside it is kept, its runs are redone)."""
    table = out_dir / "sweep.json"
    if out_dir.exists() and overwrite:
        shutil.rmtree(out_dir)
    elif out_dir.exists() and any(out_dir.iterdir()):
        try:
            previous = json.loads(table.read_text()).get("name")
        except (OSError, ValueError):
            previous = None
        if previous != name:
            what = f"the sweep {previous!r}" if previous else "something that is not a sweep"
            raise BadInput(f"{out_dir} holds {what}: choose another --out or pass --overwrite")
    out_dir.mkdir(parents=True, exist_ok=True)
    runs_dir.mkdir(parents=True, exist_ok=True)


def _finished_report(folder: Path) -> dict | None:
    try:
        if json.loads((folder / STATUS_FILE).read_text()).get("status") == "complete":
            return json.loads((folder / "report.json").read_text())
    except (OSError, ValueError):
        pass
    return None


def _stamp(folder: Path) -> tuple[int, int] | None:
    """Which write of ``folder``'s status file is there (a run swapped in anew gives another), or None."""
    try:
        st = (folder / STATUS_FILE).stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def dry_run_lines(specs: list[RunSpec]) -> list[str]:
    """One line per run of the plan (``--dry-run``), with its expected duration where this machine's earlier
    sweeps give one, and their sum."""
    history = DurationHistory(history_path())
    lines, total, known = [], 0.0, 0
    for s in specs:
        est = history.estimate(s.id, s.labels) if not s.error else None
        lines.append(f"{s.index + 1:3d}. {s.folder}" + (f"  INVALID: {s.error}" if s.error else "")
                     + (f"  ~{est.seconds:.0f} s" + (" (as before)" if est.source == "run" else " (like similar runs)")
                        if est and est.seconds is not None else ""))
        if est and est.seconds is not None:
            total, known = total + est.seconds, known + 1
    if known:
        lines.append(f"expected: {total / 60:.1f} min of runs for the {known} of {len(specs)} runs this machine's "
                     "earlier sweeps give a duration for (a parallel executor starts the longest first)")
    return lines


def run_plan(plan: Plan, out_dir: Path, plan_file: Path | None = None, executor: str = "local",
             address: str | None = None, overwrite: bool = False, strict: bool = False,
             num_cpus: int | None = None) -> SweepResult:
    """Run every run of ``plan`` not already finished in ``out_dir`` (``strict``: a run whose recipe does
    not validate stops the sweep before anything runs, instead of being recorded as failed; ``num_cpus``:
    what a Ray started here offers)."""
    specs = expand(plan, plan_file, strict=strict)
    ex = make_executor(executor, address, num_cpus)
    runs_dir = runs_folder(plan, plan_file, out_dir)
    _prepare(out_dir, runs_dir, plan.name, overwrite)
    sweep = {"name": plan.name, "plan": str(plan_file) if plan_file else None, "executor": executor,
             "address": address, "runs_dir": str(runs_dir), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
             "runs": []}
    history = DurationHistory(history_path())
    jobs, estimates = [], {}
    for spec in specs:
        base = spec.describe() | {"status": "pending", "error": None, "node": None, "attempts": 0}
        report = None
        if spec.error:
            base |= {"status": "failed", "error": spec.error}
        elif not overwrite and (report := _finished_report(runs_dir / spec.folder)) is not None:
            base |= {"status": "complete", "resumed": True}
        else:
            jobs.append(Job(spec.id, spec.folder, spec.recipe, plan.max_retries))
            estimates[spec.id] = history.estimate(spec.id, spec.labels)
            base |= {"estimated_s": estimates[spec.id].seconds, "estimate": estimates[spec.id].source}
        sweep["runs"].append(run_entry(base, report))
    at = {spec.id: i for i, spec in enumerate(specs)}  # a run's row in sweep["runs"]
    labels = {spec.id: spec.labels for spec in specs}
    if ex.parallel and plan.order == "longest-first":
        by_id = {j.id: j for j in jobs}
        jobs = [by_id[i] for i in longest_first(list(by_id), estimates)]
    sweep["order"] = {"rule": plan.order if ex.parallel else "plan", "history": str(history.path or "off"),
                      "estimated": sum(e.seconds is not None for e in estimates.values()), "runs": len(jobs),
                      "queue": [j.folder for j in jobs]}

    def update(job: Job, entry: dict) -> None:
        sweep["runs"][at[job.id]] = entry
        write_leaderboard(sweep, out_dir)

    def started(job: Job, where: dict) -> None:
        update(job, sweep["runs"][at[job.id]] | {"status": "running", **where})

    def done(job: Job, outcome: Outcome) -> None:
        facts = {k: v for k, v in asdict(outcome).items() if k not in ("status", "run_status")}
        if outcome.status == "complete":
            history.record(job.id, labels[job.id], outcome.elapsed_s)
        report = _finished_report(runs_dir / job.folder) if outcome.status == "complete" else None
        update(job, run_entry(sweep["runs"][at[job.id]] | facts | {"status": outcome.status}, report))
        p = sweep["progress"]
        (log.info if outcome.status == "complete" else log.error)(
            "sweep %s: %s %s%s (%d of %d done, %d failed, %d running)", plan.name, job.folder, outcome.status,
            f": {outcome.error}" if outcome.error else f" ({outcome.run_status})", p["complete"], p["total"],
            p["failed"], p["running"])

    write_leaderboard(sweep, out_dir)
    before = {j.id: _stamp(runs_dir / j.folder) for j in jobs}  # an --overwrite keeps a shared runs_dir's old runs
    try:
        ex.run(jobs, runs_dir, started, done, shared=plan.runs_dir is not None)
    finally:
        for job in jobs:  # interrupted: a run not done runs again when the sweep is restarted...
            r = sweep["runs"][at[job.id]]
            if r["status"] not in ("running", "pending"):
                continue
            # ...unless its folder landed before the executor could say so (a worker writing to a shared
            # runs_dir finishes while Ctrl-C reaches the driver): the table says what the disk holds
            fresh = _stamp(runs_dir / job.folder) not in (None, before[job.id])
            report = _finished_report(runs_dir / job.folder) if fresh else None
            sweep["runs"][at[job.id]] = run_entry(r | {"status": "complete"}, report) if report else r | {
                "status": "pending"}
        write_leaderboard(sweep, out_dir, final=True)
    return SweepResult(out_dir, sweep)
