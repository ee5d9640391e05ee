"""The log quantizers against their papers' reference choices, on the CIFAR-10 test images.

    .venv/bin/python benchmarks/log_quantizers.py [--models vit-cifar10 hybrid-cifar10] [--limit N]

Rows (simulated top-1, same calibration and settings as benchmarks/vit_quantizers.py: weights per channel,
activations per tensor with MSE ranges, patch embedding / stem / head kept 8-bit):

* log-sqrt2 post-softmax at W4A4: RepQ-ViT's scale (edgevit's ``logsqrt2``: the percentile of the
  probabilities with the lowest error on them) against the fixed scale 1 edgevit used before;
* AdaLog (softmax and GELU) at W4A4 and W6A6 in its table form (as deployed: the fixed-point table
  quant_params.json ships; edgevit's default) and its float form (the paper's 2^(-code q / 37));
* the AdaLog post-softmax search target at W4A4: the attention output with V through its own quantizer
  (``A V_hat``, edgevit's) or in full precision (``A V``, the AdaLog reference code's);
* the LayerNorm reparameterization's channel statistic (RepQ-ViT reparam, AdaLog softmax and GELU) at
  W4A4 and W6A6: min/max with 0 in the range (edgevit's) or RepQ-ViT's percentile search (``--group reparam``).

Writes benchmarks/results/log_quantizers.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import edgevit.quant.plan as plan_module  # noqa: E402
from edgevit.quant import QuantConfig, quantize  # noqa: E402
from edgevit.quant.nonuniform import LogQuantizer, logsqrt2_quantizer  # noqa: E402
from edgevit.quant.nonuniform_search import search_softmax  # noqa: E402
from edgevit.quant.quantizers import QuantizerEntry, register  # noqa: E402
from edgevit.validate import topk_accuracy  # noqa: E402
from vit_quantizers import DEFAULT_TEST, KEEP_8BIT, load_builtin, sim_logits  # noqa: E402

# the fixed-scale log-sqrt2 edgevit shipped before, registered here only to compare with
register(QuantizerEntry("logsqrt2-fixed", LogQuantizer.dequant_rule, fixed=logsqrt2_quantizer))

# (group, label, bits, softmax, gelu, adalog form, softmax search target, layernorm, its channel ranges)
ROWS = [
    ("log", "log-sqrt2, RepQ-ViT scale", 4, "logsqrt2", "uniform", "table", "av_hat", "none", "minmax"),
    ("log", "log-sqrt2, fixed scale 1", 4, "logsqrt2-fixed", "uniform", "table", "av_hat", "none", "minmax"),
    ("form", "AdaLog table form", 4, "adalog", "adalog", "table", "av_hat", "none", "minmax"),
    ("form", "AdaLog float form", 4, "adalog", "adalog", "float", "av_hat", "none", "minmax"),
    ("form", "AdaLog table form", 6, "adalog", "adalog", "table", "av_hat", "none", "minmax"),
    ("form", "AdaLog float form", 6, "adalog", "adalog", "float", "av_hat", "none", "minmax"),
    ("log", "AdaLog table form, softmax searched on A V", 4, "adalog", "adalog", "table", "av", "none", "minmax"),
    ("reparam", "AdaLog + reparam, min/max ranges", 4, "adalog", "adalog", "table", "av_hat", "reparam", "minmax"),
    ("reparam", "AdaLog + reparam, RepQ-ViT percentile ranges", 4, "adalog", "adalog", "table", "av_hat", "reparam",
     "percentile"),
    ("reparam", "AdaLog + reparam, min/max ranges", 6, "adalog", "adalog", "table", "av_hat", "reparam", "minmax"),
    ("reparam", "AdaLog + reparam, RepQ-ViT percentile ranges", 6, "adalog", "adalog", "table", "av_hat", "reparam",
     "percentile"),
]
HYBRID_GROUPS = {"form", "reparam"}  # the hybrid's loss is in its conv trunk: the softmax-only rows are skipped


def search_on_full_precision_v(kind, bits, attn, v, v_qparams=None, table=True):
    """search_softmax with the attention output A V in full precision as its target (AdaLog's code)."""
    return search_softmax(kind, bits, attn, v, None, table)


def config(bits: int, softmax: str, gelu: str, form: str, layernorm: str, ranges: str) -> QuantConfig:
    return QuantConfig(weights={"bits": bits}, activations={"bits": bits, "method": "mse"}, softmax=softmax,
                       gelu=gelu, adalog_form=form, layernorm=layernorm, layernorm_ranges=ranges,
                       keep_8bit=KEEP_8BIT if bits < 8 else [])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["vit-cifar10", "hybrid-cifar10"])
    ap.add_argument("--test", type=Path, default=DEFAULT_TEST)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--group", nargs="+", default=["log", "form", "reparam"], help="row groups to run")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "log_quantizers.json")
    args = ap.parse_args()
    results = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv), "rows": []}
    if args.out.is_file():  # keep the rows not rerun
        earlier = json.loads(args.out.read_text())["rows"]
        results["rows"] = [r for r in earlier if r["model"] not in args.models or r.get("group") not in args.group
                           and r["row"] != "FP32"]
    for name in args.models:
        model, _, x, y, batches = load_builtin(name, args.test, args.limit)
        fp32 = topk_accuracy(sim_logits(model, x), y, 1)
        results["rows"].append({"model": name, "row": "FP32", "bits": 32, "top1": fp32, "test_images": len(y)})
        print(f"[{name}] FP32 {100 * fp32:.2f} %", file=sys.stderr, flush=True)
        for group, label, bits, softmax, gelu, form, target, layernorm, ranges in ROWS:
            if group not in args.group or name.startswith("hybrid") and group not in HYBRID_GROUPS:
                continue
            plan_module.search_softmax = search_on_full_precision_v if target == "av" else search_softmax
            t0 = time.time()
            qm, _ = quantize(model, config(bits, softmax, gelu, form, layernorm, ranges), batches)
            top1 = topk_accuracy(sim_logits(qm, x), y, 1)
            results["rows"].append({"model": name, "group": group, "row": label, "bits": bits, "softmax": softmax,
                                    "gelu": gelu, "adalog_form": form, "softmax_target": target,
                                    "layernorm": layernorm, "layernorm_ranges": ranges, "top1": top1,
                                    "delta": top1 - fp32, "seconds": round(time.time() - t0, 1), "date": results["date"]})
            print(f"[{name}] W{bits}A{bits} {label}: {100 * top1:.2f} % ({100 * (top1 - fp32):+.2f})",
                  file=sys.stderr, flush=True)
            args.out.write_text(json.dumps(results, indent=1) + "\n")
        plan_module.search_softmax = search_softmax
    models = list(dict.fromkeys(r["model"] for r in results["rows"]))
    print("| W/A | row | " + " | ".join(f"{m} top-1 (Δ)" for m in models) + " |")
    print("|---|---|" + "---|" * len(models))
    for label, bits in [("FP32", 32)] + [r[1:3] for r in ROWS]:
        cells = []
        for m in models:
            r = next((r for r in results["rows"] if r["model"] == m and r["row"] == label and r["bits"] == bits), None)
            cells.append("" if r is None else f"{100 * r['top1']:.2f} %" + (
                f" ({100 * r['delta']:+.2f})" if "delta" in r else ""))
        print(f"| {'' if bits == 32 else f'W{bits}A{bits}'} | {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
