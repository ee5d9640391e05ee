"""Sweeps: a plan (recipes x models x settings x devices) run by an executor (local, or Ray on this machine or a
cluster) into one leaderboard. ``compress --sweep KEY=V1,V2`` is the one-recipe plan."""
from edgevit.sweeps.driver import SweepResult, dry_run_lines, run_plan
from edgevit.sweeps.plan import Plan, RunSpec, expand, load_plan, one_recipe_plan, parse_sweep, runs_folder

__all__ = ["Plan", "RunSpec", "SweepResult", "dry_run_lines", "expand", "load_plan", "one_recipe_plan",
           "parse_sweep", "run_plan", "runs_folder"]
