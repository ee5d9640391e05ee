"""The same 8-run sweep (W8A8 through `int8_ptq` and `hybrid_w8a8` on the two built-in models and two timm
hybrids) five ways on this machine, interleaved round by round: `--executor local` (one process, in order, torch
on every core), the same with one torch thread (`OMP_NUM_THREADS=1`: the compute a one-CPU Ray worker does, since
Ray sets a task's OMP_NUM_THREADS to its num_cpus), Ray with one worker (`--num-cpus 1`), Ray with two
(`--num-cpus 2`) and Ray with two starting the runs in plan order (`order: plan`) instead of longest first. Each
run times on 1 thread, so two workers can each hold a core. The sweeps share one duration history of their own
(empty at the start), so every sweep after the first starts the runs longest first by what earlier ones took.
Prints wall times, the Ray path's overhead per run against local at the same thread count (and against default
local), and the 2-worker speed-ups, per round and over all rounds.

    .venv/bin/python benchmarks/sweep_scaling.py [--rounds 2] [--ways local,local-1t,ray-1,ray-2,ray-2-plan] [--no-timing]
        [--eval-path DIR --eval-images N]

Writes benchmarks/results/sweep_scaling.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
LEVIT = Path.home() / ".cache/edgevit/checkpoints/levit_128s-cifar10-64.safetensors"


def plan(args) -> dict:
    levit = ({"source": "timm:levit_128s", "checkpoint": str(LEVIT), "kwargs": {"img_size": 64}} if LEVIT.is_file()
             else {"source": "timm:levit_128s", "kwargs": {"img_size": 64}, "num_classes": 10})
    return {"name": "scaling", "recipes": ["recipes/int8_ptq.yaml", "recipes/hybrid_w8a8.yaml"],
            "models": ["builtin:hybrid-cifar10", "builtin:vit-cifar10", levit,
                       {"source": "timm:efficientvit_m0", "kwargs": {"img_size": 64}, "num_classes": 10}],
            "overrides": [f"validate.eval.num={args.eval_images}", f"calibration.num={args.calib_images}",
                          *([f"validate.eval.path={args.eval_path}"] if args.eval_path else []),
                          "validate.devices=[]" if args.no_timing else "validate.devices.0.threads=1", "budget=null"]}


def sweep(plan_file: Path, out: Path, extra: list[str], env: dict, history: Path) -> tuple[float, dict]:
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "edgevit.cli", "sweep", str(plan_file), "--out", str(out), *extra],
                         cwd=ROOT, capture_output=True, text=True,
                         env=os.environ | env | {"EDGEVIT_SWEEP_HISTORY": str(history)})
    wall = time.time() - t0
    summary = json.loads((out / "sweep.json").read_text())
    bad = [r for r in summary["runs"] if r["status"] != "complete"]
    if bad:
        raise SystemExit(f"{extra}: {len(bad)} runs did not complete: {bad[0].get('error')}\n{res.stderr[-2000:]}")
    return wall, summary


# way -> (arguments, environment, the plan's start order)
WAYS = {"local": ([], {}, "longest-first"), "local, 1 torch thread": ([], {"OMP_NUM_THREADS": "1"}, "longest-first"),
        "ray, 1 worker": (["--executor", "ray", "--num-cpus", "1"], {}, "longest-first"),
        "ray, 2 workers": (["--executor", "ray", "--num-cpus", "2"], {}, "longest-first"),
        "ray, 2 workers, plan order": (["--executor", "ray", "--num-cpus", "2"], {}, "plan")}
SHORT = dict(zip(["local", "local-1t", "ray-1", "ray-2", "ray-2-plan"], WAYS))


def ratios(wall: dict[str, float], n: int) -> dict:
    """Overheads and speed-ups from one set of wall times (one round, or the means over rounds), those whose
    ways ran."""
    local, local1, one, two, two_plan = (wall.get(k) for k in WAYS)
    out = {}
    if one and local1:
        out |= {"overhead_per_run_s": round((one - local1) / n, 2), "overhead_vs_local_1_thread": round(one / local1 - 1, 3)}
    if one and local:
        out |= {"overhead_per_run_vs_default_local_s": round((one - local) / n, 2),
                "overhead_vs_default_local": round(one / local - 1, 3)}
    if one and two:
        out["speedup_2_vs_1"] = round(one / two, 2)
    if one and two_plan:
        out["speedup_2_vs_1_plan_order"] = round(one / two_plan, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--ways", default=",".join(SHORT), help=f"some of {','.join(SHORT)} (each ratio needs its two ways)")
    ap.add_argument("--eval-images", type=int, default=1000)
    ap.add_argument("--eval-path", help="an ImageFolder to evaluate on [default: the recipes' own, 1,000 images]")
    ap.add_argument("--calib-images", type=int, default=256)
    ap.add_argument("--no-timing", action="store_true",
                    help="runs without a device profile: compression and accuracy only, nothing under the bench lock")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sweep_scaling.json")
    args = ap.parse_args()
    ways = {SHORT[w]: WAYS[SHORT[w]] for w in args.ways.split(",")}
    results = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv), "rounds": [],
               "ways": {k: {"wall_s": []} for k in ways}}
    with tempfile.TemporaryDirectory() as tmp:
        plan_files = {}
        for order in ("longest-first", "plan"):
            plan_files[order] = Path(tmp) / f"plan-{order}.yaml"
            plan_files[order].write_text(yaml.safe_dump(plan(args) | {"order": order}))
        # the durations the sweeps before record (this benchmark's own history, empty at the start): the first
        # sweep runs in plan order, each later one starts the runs it saw longest first
        history = Path(tmp) / "sweep-durations.json"
        for r in range(args.rounds):
            wall = {}
            for i, (name, (extra, env, order)) in enumerate(ways.items()):
                wall[name], summary = sweep(plan_files[order], Path(tmp) / f"out{r}-{i}", extra, env, history)
                per_run = [x["elapsed_s"] for x in summary["runs"]]
                way = results["ways"][name]
                way["wall_s"].append(round(wall[name], 1))
                way.setdefault("run_s_sum", []).append(round(sum(per_run), 1))
                # time under the machine's bench lock: two workers cannot overlap it, so it bounds their speed-up
                way.setdefault("locked_s", []).append(round(sum(t["end"] - t["start"] for x in summary["runs"]
                                                                for t in x.get("timed", [])), 1))
                way.setdefault("nodes", sorted({x["node"] for x in summary["runs"]}))
                way.setdefault("rows", []).append([{k: x.get(k) for k in ("folder", "top1", "speed_vs_fp32", "elapsed_s",
                                                                            "estimated_s")} for x in summary["runs"]])
                way.setdefault("queue", []).append(summary["order"]["queue"])
                print(f"round {r + 1}, {name}: {wall[name]:.1f} s wall, runs {sum(per_run):.1f} s in all, "
                      f"{way['locked_s'][-1]} s under the bench lock", flush=True)
            n = len(summary["runs"])
            results["rounds"].append(ratios(wall, n) | {"wall_s": {k: round(v, 1) for k, v in wall.items()}})
            print(f"round {r + 1}: {results['rounds'][-1]}", flush=True)
    mean = {k: statistics.mean(results["ways"][k]["wall_s"]) for k in ways}
    results["mean"] = ratios(mean, n) | {"wall_s": {k: round(v, 1) for k, v in mean.items()}, "runs": n}
    one, two = (results["ways"].get(k, {}).get("run_s_sum") for k in ("ray, 1 worker", "ray, 2 workers"))
    if one and two:  # the same runs take longer side by side (shared caches, clocks): the machine's own bound
        results["side_by_side"] = round(2 * sum(one) / sum(two), 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print("\n| way | " + " | ".join(f"round {r + 1} wall (s)" for r in range(args.rounds)) + " | mean (s) | runs in all (s) |")
    print("|---|" + "---|" * (args.rounds + 2))
    for k in ways:
        way = results["ways"][k]
        print(f"| {k} | " + " | ".join(map(str, way["wall_s"])) + f" | {mean[k]:.1f} | "
              + " / ".join(map(str, way["run_s_sum"])) + " |")
    m = results["mean"]
    if "overhead_per_run_s" in m and "overhead_per_run_vs_default_local_s" in m:
        print(f"\nRay (1 worker) against local with 1 torch thread: {m['overhead_per_run_s']} s per run "
              f"({100 * m['overhead_vs_local_1_thread']:.1f} %); against default local: "
              f"{m['overhead_per_run_vs_default_local_s']} s per run ({100 * m['overhead_vs_default_local']:.1f} %)")
    for key, what in (("speedup_2_vs_1", "longest first"), ("speedup_2_vs_1_plan_order", "plan order")):
        if key in m:
            print(f"2 workers vs 1, {what}: {m[key]}x")
    if "side_by_side" in results:
        print(f"two runs side by side do {results['side_by_side']}x the work of one run alone (the runs' own times, "
              "1 worker against 2): what 2 workers can reach at best on this machine")


if __name__ == "__main__":
    main()
