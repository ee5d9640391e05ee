"""The same 8-run sweep (W8A8 through `int8_ptq` and `hybrid_w8a8` on the two built-in models and two timm
hybrids) three ways on this machine, one after another: `--executor local` (one process, in order), Ray with one
worker (`--num-cpus 1`) and Ray with two (`--num-cpus 2`). Each run uses 1 thread, so two workers can each hold
a core. Prints wall times, the Ray path's overhead per run against local, and the 2-worker speed-up.

    .venv/bin/python benchmarks/sweep_scaling.py [--eval-images 1000] [--calib-images 256]

Writes benchmarks/results/sweep_scaling.json.
"""
from __future__ import annotations

import argparse
import json
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
                          "validate.devices.0.threads=1", "budget=null"]}


def sweep(plan_file: Path, out: Path, extra: list[str]) -> tuple[float, dict]:
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "edgevit.cli", "sweep", str(plan_file), "--out", str(out), *extra],
                         cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - t0
    summary = json.loads((out / "sweep.json").read_text())
    bad = [r for r in summary["runs"] if r["status"] != "complete"]
    if bad:
        raise SystemExit(f"{extra}: {len(bad)} runs did not complete: {bad[0].get('error')}\n{res.stderr[-2000:]}")
    return wall, summary


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--eval-images", type=int, default=1000)
    ap.add_argument("--calib-images", type=int, default=256)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sweep_scaling.json")
    args = ap.parse_args()
    ways = {"local": [], "ray, 1 worker": ["--executor", "ray", "--num-cpus", "1"],
            "ray, 2 workers": ["--executor", "ray", "--num-cpus", "2"]}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        plan_file = Path(tmp) / "plan.yaml"
        plan_file.write_text(yaml.safe_dump(plan(args)))
        for i, (name, extra) in enumerate(ways.items()):
            wall, summary = sweep(plan_file, Path(tmp) / f"out{i}", extra)
            per_run = [r["elapsed_s"] for r in summary["runs"]]
            results[name] = {"wall_s": round(wall, 1), "runs": len(per_run), "run_s_sum": round(sum(per_run), 1),
                             "nodes": sorted({r["node"] for r in summary["runs"]}),
                             "rows": [{k: r.get(k) for k in ("folder", "top1", "speed_vs_fp32", "elapsed_s")}
                                      for r in summary["runs"]]}
            print(f"{name}: {wall:.1f} s wall, runs {sum(per_run):.1f} s in all", flush=True)
    local, one, two = (results[k]["wall_s"] for k in ways)
    n = results["local"]["runs"]
    results["overhead_per_run_s"] = round((one - local) / n, 2)
    results["overhead_vs_mean_run"] = round((one - local) / local, 3)
    results["speedup_2_vs_1"] = round(one / two, 2)
    results["date"] = time.strftime("%Y-%m-%d")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\n| way | wall (s) | runs |\n|---|---|---|")
    for k in ways:
        print(f"| {k} | {results[k]['wall_s']} | {results[k]['runs']} |")
    print(f"\nRay overhead per run vs local: {results['overhead_per_run_s']} s "
          f"({100 * results['overhead_vs_mean_run']:.1f} % of the local sweep); 2 workers vs 1: "
          f"{results['speedup_2_vs_1']}x")


if __name__ == "__main__":
    main()
