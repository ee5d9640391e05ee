"""Whole pipelines (prune -> merge -> quantize -> every exporter) on the built-in models, evaluated on the
CIFAR-10 test images, with what each stage cost and saved (the report's first table) and what the planners
chose (layers pruned, merge rate per stage).

    .venv/bin/python benchmarks/pipeline_chains.py [--only hybrid_full ...] [--limit N]

Each chain is one `edgevit compress` run (the recipe as shipped, or with the overrides listed) whose
validate.eval is the test folder (default: all 10,000 images, unpacked from ../shared/data/cifar10 into
~/.cache/edgevit); calibration stays the shipped 256 images. Writes benchmarks/results/pipeline_chains.json
and prints Markdown tables. ~3 min per chain on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST = Path.home() / ".cache" / "edgevit" / "cifar10-images" / "test"
EVERYTHING = ["prune.nm.max_disagreement=null", "prune.reconstruct=null", "tokens.max_disagreement=null",
              "tokens.min_saving=null", "tokens.min_time_saving=null"]
LEVIT = Path.home() / ".cache" / "edgevit" / "checkpoints" / "levit_128s-cifar10-64"


def trained_timm(card: Path) -> list[str]:
    """The overrides that load a timm checkpoint written by benchmarks/train_reference.py (its card gives
    the size, normalization and label order)."""
    c = json.loads(card.with_suffix(".json").read_text())
    return [f"model={{source: 'timm:{c['arch']}', input_size: {c['input_size']}, checkpoint: "
            f"'{card.with_suffix('.safetensors')}', mean: {c['mean']}, std: {c['std']}, labels: {c['labels']}}}"]


CHAINS = {
    "hybrid_full": ("hybrid_full", []),  # pruning allowance 3 %
    "hybrid_full, allowance 1 %": ("hybrid_full", ["prune.nm.max_disagreement=1.0"]),
    "hybrid_full, allowance 2 %": ("hybrid_full", ["prune.nm.max_disagreement=2.0"]),
    "hybrid_full, every layer and stage (no planner, no reconstruction)": ("hybrid_full", EVERYTHING),
    "hybrid_full on the built-in ViT": ("hybrid_full", ["model=builtin:vit-cifar10"]),
    "sparse24_int8 (ViT)": ("sparse24_int8", []),
    "tome_int8 (ViT)": ("tome_int8", []),
    # needs `benchmarks/train_reference.py --model timm:levit_128s --input-size 64 --epochs 8 --threads 2`;
    # ToMe does not take LeViT (its attention blocks downsample), so the tokens section is off
    "hybrid_full on timm levit_128s 64 px (trained here), tokens off": ("hybrid_full", ["tokens=null", LEVIT]),
}
STEPS = {"pytorch-fp32": "FP32", "pytorch-pruned": "pruning", "pytorch-tokens": "token reduction",
         "pytorch-int8-sim": "quantization (sim)"}


def run_chain(recipe: str, overrides: list[str], test: Path, limit: int | None, out: Path) -> dict:
    sets = [*overrides, f"validate.eval.path={test}"] + ([f"validate.eval.num={limit}"] if limit else [])
    cmd = [str(ROOT / ".venv" / "bin" / "edgevit"), "compress", "--recipe", recipe, "--out", str(out), "--overwrite"]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    report = json.loads((out / "report.json").read_text())
    return {"exit": proc.returncode, "seconds": round(time.time() - t0), "status": report["status"],
            "status_line": proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "",
            "command": "edgevit compress --recipe " + recipe + "".join(f" --set '{s}'" for s in sets), "report": report}


def summary(r: dict) -> dict:
    rep = r["report"]
    rows = {x["name"]: x for x in rep["results"]}
    steps = []
    for name, label in STEPS.items():
        x = rows.get(name)
        if x:
            acc = x.get("accuracy") or {}
            steps.append({"step": label, "top1": acc.get("top1"), "agreement": acc.get("top1_agreement"),
                          "flops": x.get("flops"), "nonzero_weights": x.get("nonzero_weights")})
    fp32 = rows["pytorch-fp32"]
    base = {x["runtime"]: x for x in rep["results"] if x.get("reference")} | {"torch": fp32}
    artifacts = []
    for x in rep["results"]:
        if not x.get("file") or x.get("reference") or "-before-fallback" in x["name"]:
            continue
        acc = x.get("accuracy") or {}
        lat = (x.get("latency") or [None])[0]
        b = base.get(x["runtime"]) or {}
        blat = (b.get("latency") or [None])[0]
        speed = blat["batch1"]["median_ms"] / lat["batch1"]["median_ms"] if lat and blat else None
        artifacts.append({"name": x["name"], "top1": acc.get("top1"),
                          "size_ratio": x["size_bytes"] / fp32["size_bytes"], "size_bytes": x["size_bytes"], "speed_vs_fp32": speed,
                          "shipped": (x.get("placement") or {}).get("shipped")})
    budget = [c for c in rep["checks"] if c.get("kind") == "budget"]
    p, t = rep.get("pruning") or {}, rep.get("tokens") or {}
    choice = p.get("choice") or {}
    return {"exit": r["exit"], "status": r["status"], "command": r["command"], "seconds": r["seconds"],
            "steps": steps, "artifacts": artifacts, "within_budget": all(c["ok"] for c in budget) if budget else None,
            "pruned_layers": len(p.get("layers", [])) if p else None,
            "eligible_layers": len(choice.get("layers", [])) if choice else None,
            "weight_sparsity": (p.get("summary") or {}).get("weight_sparsity"),
            "merge": {c["stage"]: c.get("r_chosen") for c in t.get("choice", [])} if t else None,
            "merge_time_saving": {c["stage"]: c.get("time_saving") for c in t.get("choice", [])} if t else None,
            "merge_timing": t.get("timing") if t else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", default=None, help="chain labels (default: all)")
    ap.add_argument("--test", type=Path, default=TEST)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pipeline_chains.json")
    args = ap.parse_args()
    results = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv), "chains": {}}
    if args.out.is_file():  # keep the chains not rerun
        results["chains"] = json.loads(args.out.read_text()).get("chains", {})
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, (recipe, overrides)) in enumerate(CHAINS.items()):
            if args.only and not any(o == label or o == recipe for o in args.only):
                continue
            overrides = [o for o in overrides if not isinstance(o, Path)] + \
                [x for o in overrides if isinstance(o, Path) for x in trained_timm(o)]
            r = run_chain(recipe, overrides, args.test, args.limit, Path(tmp) / f"run{i}")
            results["chains"][label] = s = summary(r) | {"date": results["date"]}
            print(f"\n### {label}: exit {s['exit']} ({s['status']}), {s['seconds']} s\n`{s['command']}`\n")
            print("| step | top-1 | agreement | FLOPs | non-zero weights |\n|---|---|---|---|---|")
            for st in s["steps"]:
                print(f"| {st['step']} | {100 * st['top1']:.2f} % | {100 * st['agreement']:.2f} % | "
                      f"{st['flops'] / 1e6:.1f} M | {st['nonzero_weights']:,} |")
            print("\n| artifact | top-1 | size vs FP32 | speed vs FP32 (b1, same runtime) | shipped |\n"
                  "|---|---|---|---|---|")
            for a in s["artifacts"]:
                top1 = f"{100 * a['top1']:.2f} %" if a["top1"] is not None else "not run here"
                speed = f"{a['speed_vs_fp32']:.2f}x" if a["speed_vs_fp32"] else "n/a"
                print(f"| {a['name']} | {top1} | {a['size_ratio']:.3f}x | {speed} | {a['shipped'] or ''} |")
            print(f"\npruned {s['pruned_layers']} of {s['eligible_layers']} layers, weight sparsity "
                  f"{s['weight_sparsity']}; merge rates {s['merge']} (time saved alone, b1 / throughput: "
                  f"{s['merge_time_saving']}); within budget: {s['within_budget']}")
            args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
