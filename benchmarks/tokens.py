"""Training-free token reduction on the built-in ViT: a sweep of ToMe's r and EViT's keep rate, each
point with its top-1, FLOPs and ONNX Runtime speed measured side by side with the unreduced model.

    .venv/bin/python benchmarks/tokens.py [--model vit-cifar10] [--limit N] [--rounds 10]

Top-1: the PyTorch model on the CIFAR-10 test images (default: all 10,000, unpacked from
../shared/data/cifar10 into ~/.cache/edgevit). Speed: each variant exported to FP32 ONNX (token counts
fixed in the graph) and run in ONNX Runtime CPU with --threads threads; batch-1 latency and batch-64
throughput, every variant interleaved with the others round by round (medians), so the ratios
to the unreduced model are measured under the same load. FLOPs: torch's flop counter, one image.
The last rows quantize merged models (W8A8, recipes/tome_int8.yaml's settings) and check the
exported INT8 QDQ model in ORT against the fake-quant simulation.
Writes benchmarks/results/tokens.json, benchmarks/results/tokens.png and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from edgevit.data import Preprocess, open_image_set  # noqa: E402
from edgevit.exporters.onnx import export_onnx  # noqa: E402
from edgevit.models import load_model  # noqa: E402
from edgevit.quant import QuantConfig, quantize  # noqa: E402
from edgevit.recipe import ExportConfig, ModelConfig  # noqa: E402
from edgevit.tokens import TokenConfig, apply_tokens, count_flops  # noqa: E402
from edgevit.validate import OrtRunner, topk_accuracy  # noqa: E402
from ptq_baselines import alternate_latency  # noqa: E402
from pruning import top1  # noqa: E402

DEFAULT_TEST = Path.home() / ".cache" / "edgevit" / "cifar10-images" / "test"
INT8 = QuantConfig(activations={"method": "percentile", "percentile": 99.999})
# Every tome/evit row computes only the class token in the last block (head_only, exact); "r=0 (head
# only)" shows what that alone gives and "r=8, every token to the end" what merging gives without it.
SWEEP = {"tome r=0 (head only)": TokenConfig(r=0)} | \
    {f"tome r={r}": TokenConfig(r=r) for r in (2, 4, 6, 7, 8, 9, 10, 12)} | \
    {"tome r=8, every token to the end": TokenConfig(r=8, head_only=False)} | \
    {f"tome r={r} decreasing": TokenConfig(r=r, schedule="decreasing") for r in (6, 8)} | \
    {"tome r=8 no prop. attn": TokenConfig(r=8, proportional_attention=False)} | \
    {f"evit keep {k}": TokenConfig(method="evit", keep_rate=k) for k in (0.9, 0.7, 0.5)}
WITH_INT8 = ("tome r=4", "tome r=8")
THROUGHPUT_BATCH = 64


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit-cifar10")
    ap.add_argument("--test", type=Path, default=DEFAULT_TEST)
    ap.add_argument("--limit", type=int, default=None, help="evaluate on this many test images (default: all)")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tokens.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    model, info = load_model(ModelConfig(source=f"builtin:{args.model}"))
    pre = Preprocess(info.input_size, info.mean, info.std)
    calib = torch.from_numpy(open_image_set(ROOT / "calibration" / "builtin-calib").load(pre)[0])
    x, y = open_image_set(args.test, num=args.limit, seed=0).load(pre, 500)
    one = torch.from_numpy(x[:1])
    variants = {"unreduced": model}
    for name, cfg in SWEEP.items():
        variants[name] = copy.deepcopy(model)
        apply_tokens(variants[name], cfg)
    rows = []
    flops0 = count_flops(model, one)
    correct = {}
    for name, m in variants.items():
        t0 = time.time()
        correct[name] = predictions(m, x) == y
        rows.append({"variant": name, "top1": float(correct[name].mean()), "flops": count_flops(m, one),
                     "config": SWEEP[name].model_dump() if name in SWEEP else None})
        print(f"{name}: {100 * rows[-1]['top1']:.2f} % ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    for r in rows:
        r["delta_top1_ci95"] = paired_ci(correct[r["variant"]], correct["unreduced"])
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, m in variants.items():
            paths[name] = Path(tmp) / f"{len(paths)}.onnx"
            export_onnx(m, info, ExportConfig(precision="fp32"), paths[name], "tokens")
        load = os.getloadavg()[0]
        lat = alternate_latency(paths, x[:1], args.threads, args.rounds, 10)
        thr = alternate_latency(paths, x[:THROUGHPUT_BATCH], args.threads, args.rounds, 2, keep_times=True)
        int8 = [quantized_row(model, name, SWEEP[name], info, calib, x, y, Path(tmp)) for name in WITH_INT8]
    for r in rows:
        r["latency_ms"] = lat[r["variant"]]["median_ms"]
        r["throughput"] = THROUGHPUT_BATCH / thr[r["variant"]]["median_ms"] * 1e3
    base = rows[0]
    for r in rows:
        r["delta_top1"] = r["top1"] - base["top1"]
        r["latency_speedup"] = base["latency_ms"] / r["latency_ms"]
        r["throughput_speedup"] = r["throughput"] / base["throughput"]
        r["throughput_speedup_rounds"] = per_round_speedups(thr[base["variant"]]["times_ms"],
                                                            thr[r["variant"]]["times_ms"], args.rounds)
        r["flops_ratio"] = r["flops"] / flops0
    for v in thr.values():
        v.pop("times_ms")
    results = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv), "model": args.model,
               "images": int(len(y)), "threads": args.threads, "load_average": [load, os.getloadavg()[0]],
               "rows": rows, "int8": int8}
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    plot(results, args.out.with_suffix(".png"))


def predictions(model, x: np.ndarray, batch: int = 500) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(x[i:i + batch])).argmax(1).numpy() for i in range(0, len(x), batch)])


def per_round_speedups(base_ms: list[float], ms: list[float], rounds: int) -> list[float]:
    """The throughput speedup in each round (median run of the round; the unreduced model ran in the same
    round, so each ratio shares its load): the spread says how far one run's ratio can be trusted."""
    base = np.median(np.reshape(base_ms, (rounds, -1)), axis=1)
    return (base / np.median(np.reshape(ms, (rounds, -1)), axis=1)).tolist()


def paired_ci(correct: np.ndarray, base: np.ndarray, draws: int = 2000) -> list[float]:
    """95 % interval of the top-1 difference to the unreduced model, by a paired bootstrap over the test
    images (the same resampled images for both): how much of a row's delta is which-images noise."""
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(base), size=(draws, len(base)))
    diff = correct.astype(np.float32) - base.astype(np.float32)
    means = diff[idx].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def quantized_row(model, name: str, cfg: TokenConfig, info, calib, x, y, tmp: Path) -> dict:
    """Merge, then W8A8: simulated top-1, and the exported QDQ model in ORT against the simulation."""
    merged = copy.deepcopy(model)
    apply_tokens(merged, cfg)
    qmodel, _ = quantize(merged, INT8, [calib])
    path = tmp / f"int8-{name.replace(' ', '_')}.onnx"
    export_onnx(qmodel, info, ExportConfig(precision="int8"), path, "tokens")
    sub = x[:1000]
    ort_logits = OrtRunner(path, 2)(sub)
    with torch.no_grad():
        sim = qmodel(torch.from_numpy(sub)).numpy()
    row = {"variant": name + " + INT8", "top1_sim": top1(qmodel, x, y),
           "ort_top1": topk_accuracy(ort_logits, y[:1000], 1), "sim_top1_same_images": topk_accuracy(sim, y[:1000], 1),
           "agreement": float((ort_logits.argmax(1) == sim.argmax(1)).mean()), "images_ort": len(sub)}
    print(f"{row['variant']}: sim {100 * row['top1_sim']:.2f} %, ORT vs sim agreement {100 * row['agreement']:.2f} %",
          file=sys.stderr, flush=True)
    return row


def print_table(r: dict) -> None:
    print(f"\n{r['model']}, {r['images']} test images, ORT CPU {r['threads']} threads\n")
    print("| variant | top-1 | Δ | Δ 95 % interval | FLOPs | batch-1 latency | speedup | throughput (batch 64) | "
          "speedup | per-round speedups, 10th-90th pct |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for x in r["rows"]:
        lo, hi = x["delta_top1_ci95"]
        p10, p90 = np.percentile(x["throughput_speedup_rounds"], [10, 90])
        print(f"| {x['variant']} | {100 * x['top1']:.2f} % | {100 * x['delta_top1']:+.2f} | "
              f"[{100 * lo:+.2f}, {100 * hi:+.2f}] | "
              f"{100 * x['flops_ratio']:.0f} % | {x['latency_ms']:.3f} ms | {x['latency_speedup']:.2f}x | "
              f"{x['throughput']:.0f} img/s | {x['throughput_speedup']:.2f}x | {p10:.2f}-{p90:.2f}x |")
    print("\n| merged + INT8 | simulated top-1 | ORT top-1 (first 1,000) | simulated, same images | agreement |")
    print("|---|---|---|---|---|")
    for x in r["int8"]:
        print(f"| {x['variant']} | {100 * x['top1_sim']:.2f} % | {100 * x['ort_top1']:.2f} % | "
              f"{100 * x['sim_top1_same_images']:.2f} % | {100 * x['agreement']:.2f} % |")


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for family, marker in (("tome", "o"), ("evit", "s")):
        pts = [x for x in r["rows"] if x["variant"].startswith(family) or x["variant"] == "unreduced"]
        ax.plot([p["throughput_speedup"] for p in pts], [100 * p["top1"] for p in pts], marker, label=family)
        for p in pts:
            ax.annotate(p["variant"].replace("tome ", "").replace("evit ", ""), (p["throughput_speedup"], 100 * p["top1"]),
                        fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.axhline(100 * r["rows"][0]["top1"] - 0.5, color="grey", lw=0.8, ls="--", label="unreduced - 0.5")
    ax.set_xlabel("ORT throughput speedup (batch 64)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(f"Token reduction, {r['model']} ({r['images']} test images)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
