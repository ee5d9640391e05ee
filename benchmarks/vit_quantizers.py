"""ViT-specific quantizers side by side: uniform vs log2 / log-sqrt2 / AdaLog / TanQ, with and without
LayerNorm reparameterization (RepQ mean, MOSF), at W8A8 / W6A6 / W4A4, on both built-in models.

    .venv/bin/python benchmarks/vit_quantizers.py [--models vit-cifar10 hybrid-cifar10] [--test DIR] [--limit N]
                                                  [--merge]

1. Top-1 of the simulated model (PyTorch fake quant) on the CIFAR-10 test images (default: all
   10,000, unpacked from ../shared/data/cifar10 into ~/.cache/edgevit) for every configuration.
   Calibration: the shipped 256 images (calibration/builtin-calib); searches use the first 32.
   Patch embedding / stem and head stay 8-bit below 8 bits (as AdaLog and RepQ-ViT do).
2. The exact ONNX export (lowering: exact) of the W4A4 AdaLog model, run in ONNX Runtime on the same
   images: deployed vs simulated top-1.
3. Quantization MSE of each quantizer on real post-softmax and post-GELU/SiLU activations captured
   from the model on 32 calibration images (mean over sites).

Writes benchmarks/results/vit_quantizers.json and prints Markdown tables.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from edgevit.data import Preprocess, open_image_set  # noqa: E402
from edgevit.exporters.onnx import export_onnx  # noqa: E402
from edgevit.models import load_model  # noqa: E402
from edgevit.quant import QuantConfig, quantize  # noqa: E402
from edgevit.quant.nonuniform import log2_quantizer, logsqrt2_quantizer  # noqa: E402
from edgevit.quant.nonuniform_search import quantizer_mse, search_post_activation, search_softmax  # noqa: E402
from edgevit.quant.observers import HistogramObserver  # noqa: E402
from edgevit.quant.plan import capture_activations  # noqa: E402
from edgevit.quant.search import activation_range  # noqa: E402
from edgevit.quant.uniform import qparams_from_range  # noqa: E402
from edgevit.recipe import ExportConfig, ModelConfig  # noqa: E402
from edgevit.validate import OrtRunner, collect_logits, topk_accuracy  # noqa: E402

DEFAULT_TEST = Path.home() / ".cache" / "edgevit" / "cifar10-images" / "test"
KEEP_8BIT = ["patch_embed*", "head*", "stem*"]
# (bits, softmax, gelu, layernorm[, activation range method])
CONFIGS = [
    (8, "uniform", "uniform", "none"), (8, "adalog", "adalog", "none"), (8, "adalog", "adalog", "reparam"),
    (6, "uniform", "uniform", "none"), (6, "adalog", "adalog", "none"), (6, "adalog", "adalog", "reparam"),
    (6, "adalog", "adalog", "mosf"),
    (4, "uniform", "uniform", "none"), (4, "log2", "uniform", "none"), (4, "logsqrt2", "uniform", "none"),
    (4, "adalog", "uniform", "none"), (4, "tanq", "uniform", "none"), (4, "adalog", "adalog", "none"),
    (4, "tanq", "adalog", "none"), (4, "adalog", "adalog", "reparam"), (4, "adalog", "adalog", "mosf"),
    (4, "uniform", "uniform", "reparam"), (4, "uniform", "uniform", "mosf"),
    (4, "uniform", "uniform", "none", "fpcs"), (4, "adalog", "adalog", "none", "fpcs"),
]
EXACT = (4, "adalog", "adalog", "none")


def config(bits: int, softmax: str, gelu: str, layernorm: str, method: str = "mse") -> QuantConfig:
    return QuantConfig(weights={"bits": bits}, activations={"bits": bits, "method": method}, softmax=softmax, gelu=gelu,
                       layernorm=layernorm, keep_8bit=KEEP_8BIT if bits < 8 else [])


@torch.no_grad()
def sim_logits(model, x: np.ndarray, batch: int = 500) -> np.ndarray:
    return np.concatenate([model(torch.from_numpy(x[i:i + batch])).numpy() for i in range(0, len(x), batch)])


def load_builtin(name: str, test: Path, limit: int | None):
    """A built-in model, its test images and labels (seeded sample of ``limit``, all by default) and the
    shipped calibration images in batches of 64."""
    torch.manual_seed(0)
    model, info = load_model(ModelConfig(source=f"builtin:{name}"))
    pre = Preprocess(info.input_size, info.mean, info.std)
    calib, _ = open_image_set(ROOT / "calibration" / "builtin-calib").load(pre)
    x, y = open_image_set(test, num=limit, seed=0).load(pre, 500)
    return model, info, x, y, [torch.from_numpy(calib[i:i + 64]) for i in range(0, len(calib), 64)]


def uniform_mse(x: torch.Tensor, bits: int) -> float:
    obs = HistogramObserver()
    obs.update(x)
    lo, hi = activation_range(obs, "mse", bits, False)
    return quantizer_mse(qparams_from_range(torch.tensor(lo), torch.tensor(hi), bits, False), x)


def mse_table(model, calib: torch.Tensor) -> list[dict]:
    """Quantization MSE of each quantizer on captured post-softmax / post-activation tensors."""
    acts = capture_activations(model, calib, ("attn_softmax", "attn_v", "post_act"))
    rows = []
    softmax = {k: v for k, v in acts.items() if k.endswith(".softmax")}
    posts = {k: v for k, v in acts.items() if k.endswith("fc2.input")}
    weights = {n: m.weight.detach() for n, m in model.named_modules() if n.endswith("fc2")}
    for bits in (4, 6, 8):
        for name in ("uniform", "log2", "logsqrt2", "adalog", "tanq"):
            errs = []
            for site, a in softmax.items():
                v = acts[site[:-len(".softmax")] + ".v"]
                if name == "uniform":
                    errs.append(uniform_mse(a, bits))
                    continue
                q = {"log2": lambda: log2_quantizer(bits), "logsqrt2": lambda: logsqrt2_quantizer(bits)}.get(
                    name, lambda: search_softmax(name, bits, [a], [v]))()
                errs.append(quantizer_mse(q, a))
            rows.append({"activation": "post-softmax", "bits": bits, "quantizer": name, "sites": len(errs),
                         "mse": float(np.mean(errs)) if errs else None})
        for name in ("uniform", "adalog"):
            errs = []
            for site, h in posts.items():
                shift = model_shift(model, site)
                if name == "uniform":
                    errs.append(uniform_mse(h, bits))
                else:
                    w = weights[site[:-len(".input")]]
                    q = search_post_activation(bits, h, w, shift)
                    errs.append(float(((q.fake_quant(h + shift) - shift - h) ** 2).mean()))
            rows.append({"activation": "post-GELU/SiLU", "bits": bits, "quantizer": name, "sites": len(errs),
                         "mse": float(np.mean(errs)) if errs else None})
    return rows


def model_shift(model, site: str) -> float:
    from edgevit.quant.sites import activation_floor

    mlp = model.get_submodule(site[:-len(".fc2.input")])
    return activation_floor(mlp.act)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["vit-cifar10", "hybrid-cifar10"])
    ap.add_argument("--test", type=Path, default=DEFAULT_TEST)
    ap.add_argument("--limit", type=int, default=None, help="evaluate on this many test images (default: all)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "vit_quantizers.json")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other models' rows already in --out and replace only the models run now")
    args = ap.parse_args()
    results = {"accuracy": [], "exact": [], "mse": {}, "runs": {}}
    if args.merge and args.out.exists():
        results = drop_models(json.loads(args.out.read_text()), args.models)
    for name in args.models:
        model, info, x, y, batches = load_builtin(name, args.test, args.limit)
        fp32 = topk_accuracy(sim_logits(model, x), y, 1)
        results["runs"][name] = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
                                 "test_images": len(y)}
        results["accuracy"].append({"model": name, "config": "fp32", "top1": fp32})
        print(f"[{name}] fp32 {100 * fp32:.2f} %", file=sys.stderr, flush=True)
        for spec in CONFIGS:
            t0 = time.time()
            qm, _ = quantize(model, config(*spec), batches)
            seconds = time.time() - t0
            top1 = topk_accuracy(sim_logits(qm, x), y, 1)
            results["accuracy"].append({"model": name, "config": list(spec), "top1": top1, "delta": top1 - fp32,
                                        "calibrate_s": seconds})
            print(f"[{name}] {spec} {100 * top1:.2f} % ({seconds:.1f} s)", file=sys.stderr, flush=True)
            if spec == EXACT:
                with tempfile.TemporaryDirectory() as tmp:
                    path = Path(tmp) / "exact.onnx"
                    export_onnx(qm, info, ExportConfig(precision="int8", lowering="exact"), path, "vit_quantizers")
                    ort_logits = collect_logits(OrtRunner(path, 2), x, 500)
                sim = sim_logits(qm, x)
                results["exact"].append({"model": name, "config": list(spec), "sim_top1": top1,
                                         "ort_top1": topk_accuracy(ort_logits, y, 1),
                                         "agreement": float((ort_logits.argmax(1) == sim.argmax(1)).mean()),
                                         "max_abs_diff": float(np.abs(ort_logits - sim).max())})
        results["mse"][name] = mse_table(model, batches[0][:32])
    print_tables(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")


def drop_models(results: dict, models: list[str]) -> dict:
    """Earlier results without the rows of `models` (older files without per-model run records keep theirs
    under the file-level date/command)."""
    runs = results.get("runs") or {m: {"date": results.get("date"), "command": results.get("command")}
                                    for m in dict.fromkeys(a["model"] for a in results["accuracy"])}
    return {"accuracy": [a for a in results["accuracy"] if a["model"] not in models],
            "exact": [e for e in results["exact"] if e["model"] not in models],
            "mse": {m: v for m, v in results["mse"].items() if m not in models},
            "runs": {m: v for m, v in runs.items() if m not in models}}


def print_tables(r: dict) -> None:
    models = list(dict.fromkeys(a["model"] for a in r["accuracy"]))
    fp = {a["model"]: a["top1"] for a in r["accuracy"] if a["config"] == "fp32"}
    for m, run in r["runs"].items():
        print(f"{m}: {run.get('test_images', '?')} test images, {run['date']}, `{run['command']}`")
    print("| W/A | softmax | GELU | LayerNorm | ranges | " + " | ".join(f"{m} top-1 (Δ)" for m in models) + " |")
    print("|---|---|---|---|---|" + "---|" * len(models))
    print("| FP32 | | | | | " + " | ".join(f"{100 * fp[m]:.2f} %" for m in models) + " |")
    for spec in CONFIGS:
        cells = []
        for m in models:
            a = next((a for a in r["accuracy"] if a["model"] == m and a["config"] == list(spec)), None)
            cells.append("" if a is None else f"{100 * a['top1']:.2f} % ({100 * a['delta']:+.2f})")
        method = spec[4] if len(spec) > 4 else "mse"
        print(f"| W{spec[0]}A{spec[0]} | {spec[1]} | {spec[2]} | {spec[3]} | {method} | " + " | ".join(cells) + " |")
    print("\n| model | config | simulated top-1 | ONNX Runtime top-1 (exact lowering) | difference | agreement | max abs logit diff |")
    print("|---|---|---|---|---|---|---|")
    for e in r["exact"]:
        print(f"| {e['model']} | W{e['config'][0]}A{e['config'][0]} {'/'.join(e['config'][1:])} | "
              f"{100 * e['sim_top1']:.2f} % | {100 * e['ort_top1']:.2f} % | "
              f"{100 * (e['ort_top1'] - e['sim_top1']):+.2f} | {100 * e['agreement']:.2f} % | {e['max_abs_diff']:.3f} |")
    for m, rows in r["mse"].items():
        print(f"\nQuantization MSE on captured activations ({m}, mean over sites):\n")
        print("| activation | bits | " + " | ".join(("uniform", "log2", "logsqrt2", "adalog", "tanq")) + " |")
        print("|---|---|---|---|---|---|---|")
        for act in ("post-softmax", "post-GELU/SiLU"):
            for bits in (4, 6, 8):
                cells = []
                for qn in ("uniform", "log2", "logsqrt2", "adalog", "tanq"):
                    row = next((x for x in rows if x["activation"] == act and x["bits"] == bits
                                and x["quantizer"] == qn), None)
                    cells.append("" if row is None or row["mse"] is None else f"{row['mse']:.3g}")
                print(f"| {act} | {bits} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
