"""Hybrid-backbone PTQ side by side: naive uniform PTQ vs the ViT recipe vs the hybrid recipes.

    .venv/bin/python benchmarks/hybrid_ptq.py [--models builtin:hybrid-cifar10 ...] [--limit N] [--threads 2]
                                              [--merge]

For every model and bit width (W8A8, W6A6, W4A8): top-1 of the simulated model (PyTorch fake quant,
which the deployed ONNX matches; see the recipes' checks) on the CIFAR-10 test images (default: all
10,000, unpacked from ../shared/data/cifar10 into ~/.cache/edgevit), and the quantization wall time.

* naive: uniform per-tensor activations (min-max), per-channel weights, no search;
* vit: the ViT recipe of the quantizer issue (AdaLog softmax/GELU, percentile ranges);
* hybrid: recipes/hybrid_w8a8.yaml's granularity/scheme search with bridge-block objectives
  (hybrid_w6a6's Hessian weighting at 6 bits);
* recon: recipes/hybrid_w4a8_recon.yaml's block reconstruction (W4A8 only).

Calibration: the shipped 256 images (calibration/builtin-calib). Stem and head stay 8-bit below
8 bits. Writes benchmarks/results/hybrid_ptq.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from edgevit.data import Preprocess, open_image_set  # noqa: E402
from edgevit.models import load_model  # noqa: E402
from edgevit.quant import QuantConfig, quantize  # noqa: E402
from edgevit.recipe import ModelConfig, load_recipe  # noqa: E402
from edgevit.validate import topk_accuracy  # noqa: E402

DEFAULT_TEST = Path.home() / ".cache" / "edgevit" / "cifar10-images" / "test"
KEEP_8BIT = ["stem*", "head*", "patch_embed*"]


def configs(wbits: int, abits: int, recon: dict | None = None) -> dict[str, QuantConfig]:
    """The methods compared at one bit width (``recon``: overrides of the recipe's reconstruct settings)."""
    low = {"keep_8bit": KEEP_8BIT} if min(wbits, abits) < 8 else {}
    hybrid = load_recipe(ROOT / "recipes" / ("hybrid_w6a6.yaml" if abits == 6 else "hybrid_w8a8.yaml")).quantize
    out = {
        "naive": QuantConfig(weights={"bits": wbits}, activations={"bits": abits, "method": "minmax"}, **low),
        "vit": QuantConfig(weights={"bits": wbits}, activations={"bits": abits, "method": "percentile",
                                                                 "percentile": 99.999},
                           softmax="adalog", gelu="adalog", **low),
        "hybrid": _with_bits(hybrid, wbits, abits, low),
    }
    if wbits < abits:
        q = load_recipe(ROOT / "recipes" / "hybrid_w4a8_recon.yaml").quantize
        if recon:
            q = q.model_copy(update={"reconstruct": q.reconstruct.model_copy(update=recon)})
        out["recon"] = _with_bits(q, wbits, abits, low)
    return out


def _with_bits(cfg: QuantConfig, wbits: int, abits: int, low: dict) -> QuantConfig:
    d = cfg.model_dump()
    d["weights"]["bits"], d["activations"]["bits"] = wbits, abits
    return QuantConfig.model_validate(d | low)


@torch.no_grad()
def logits(model, x: np.ndarray, batch: int = 500) -> np.ndarray:
    return np.concatenate([model(torch.from_numpy(x[i:i + batch])).numpy() for i in range(0, len(x), batch)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["builtin:hybrid-cifar10"])
    ap.add_argument("--test", type=Path, default=DEFAULT_TEST)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bits", nargs="+", default=["8/8", "6/6", "4/8"])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "hybrid_ptq.json")
    ap.add_argument("--merge", action="store_true", help="keep the other models' rows already in --out")
    ap.add_argument("--calib", type=Path, default=ROOT / "calibration" / "builtin-calib",
                    help="calibration images (default: the shipped 256)")
    ap.add_argument("--calib-num", type=int, default=None, help="use this many of them (seeded sample)")
    ap.add_argument("--recon", nargs="*", default=[], metavar="KEY=VALUE",
                    help="override the recipe's reconstruct settings, e.g. iters=500 images=1024")
    args = ap.parse_args()
    recon = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.recon)}
    torch.set_num_threads(args.threads)
    rows, runs = [], {}  # runs: model -> the runs whose rows are in the file
    if args.merge and args.out.exists():  # keep the rows of the (model, bits) pairs not rerun now
        old = json.loads(args.out.read_text())
        rerun = {(m, "W{}A{}".format(*b.split("/"))) for m in args.models for b in args.bits}
        rows = [r for r in old["rows"] if (r["model"], r["bits"]) not in rerun
                and not (r["model"] in args.models and r["bits"] == "fp32")]
        runs = old.get("runs") or {m: {"date": old.get("date"), "command": old.get("command")}
                                   for m in dict.fromkeys(r["model"] for r in old["rows"])}
        runs = {m: v if isinstance(v, list) else [v] for m, v in runs.items()}
    for source in args.models:
        torch.manual_seed(0)
        model, info = load_model(ModelConfig(source=source))
        pre = Preprocess(info.input_size, info.mean, info.std)
        calib, _ = open_image_set(args.calib, num=args.calib_num, seed=0).load(pre)
        batches = [torch.from_numpy(calib[i:i + 64]) for i in range(0, len(calib), 64)]
        x, y = open_image_set(args.test, num=args.limit, seed=0).load(pre, 500)
        runs.setdefault(source, []).append({
            "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv), "bits": args.bits,
            "test_images": len(y), "threads": args.threads, "calibration_images": len(calib),
            "recon_overrides": recon})
        fp = topk_accuracy(logits(model, x), y, 1)
        rows.insert(0, {"model": source, "bits": "fp32", "method": "fp32", "top1": fp})
        print(f"[{source}] fp32 {100 * fp:.2f} %", file=sys.stderr, flush=True)
        for spec in args.bits:
            w, a = (int(b) for b in spec.split("/"))
            for method, cfg in configs(w, a, recon).items():
                t0 = time.time()
                qm, _ = quantize(model, cfg, batches)
                seconds = time.time() - t0
                top1 = topk_accuracy(logits(qm, x), y, 1)
                rows.append({"model": source, "bits": f"W{w}A{a}", "method": method, "top1": top1,
                             "delta": top1 - fp, "quantize_s": round(seconds, 1)})
                print(f"[{source}] W{w}A{a} {method} {100 * top1:.2f} % ({seconds:.0f} s)", file=sys.stderr, flush=True)
    print("| model | bits | method | top-1 | Δ vs FP32 | quantize time |\n|---|---|---|---|---|---|")
    for r in rows:
        if r["method"] == "fp32":
            print(f"| {r['model']} | FP32 | | {100 * r['top1']:.2f} % | | |")
        else:
            print(f"| {r['model']} | {r['bits']} | {r['method']} | {100 * r['top1']:.2f} % | "
                  f"{100 * r['delta']:+.2f} | {r['quantize_s']:.0f} s |")
    recovery = recoveries(rows)
    for r in recovery:
        print(f"{r['model']} {r['bits']}: naive loses {100 * r['naive_loss']:.2f} pts; "
              + ", ".join(f"{m} recovers {100 * v:.0f} %" for m, v in r["recovered"].items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": runs, "rows": rows, "recovery": recovery}, indent=1) + "\n")


def recoveries(rows: list[dict]) -> list[dict]:
    """Where naive PTQ loses more than 2 points: the fraction of that loss each hybrid method wins back."""
    out = []
    for naive in (r for r in rows if r["method"] == "naive" and r["delta"] < -0.02):
        same = [r for r in rows if r["model"] == naive["model"] and r["bits"] == naive["bits"]]
        out.append({"model": naive["model"], "bits": naive["bits"], "naive_loss": -naive["delta"],
                    "recovered": {r["method"]: (r["top1"] - naive["top1"]) / -naive["delta"]
                                  for r in same if r["method"] in ("hybrid", "recon")}})
    return out


if __name__ == "__main__":
    main()
