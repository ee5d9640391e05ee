"""A trained Hugging Face ``transformers`` ViT through edgevit, beside the same network as a timm model.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_reference.py --model hf-vit-cifar10 --epochs 2 --lr 1e-4
    .venv/bin/python benchmarks/hf_models.py [--limit N]

The first command writes ~/.cache/edgevit/checkpoints/hf-vit-cifar10/ (a save_pretrained folder: the
built-in ViT's weights in the transformers format, fine-tuned through the transformers forward). Each
recipe (int8_ptq, w8a8_adalog, tome_int8) then runs on ``hf:`` that folder and on ``builtin:vit-cifar10``,
one `edgevit compress` each, validate.eval = the 10,000 CIFAR-10 test images. Prints one Markdown row per
run (top-1 of FP32 and each deployed artifact, its speed against FP32 as the run measured it, the softmax
and GELU sites quantized, the tokens per block) and writes benchmarks/results/hf_models.json.
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
HF_VIT = Path.home() / ".cache" / "edgevit" / "checkpoints" / "hf-vit-cifar10"
RECIPES = {"int8_ptq": [], "w8a8_adalog": [], "tome_int8": []}


def run(recipe: str, model: str, test: Path, limit: int | None, out: Path) -> dict:
    sets = [f"validate.eval.path={test}"] + ([f"validate.eval.num={limit}"] if limit else []) + RECIPES[recipe]
    cmd = [str(ROOT / ".venv" / "bin" / "edgevit"), "compress", "--recipe", recipe, "--model", model, "--out",
           str(out), "--overwrite"]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    rep = json.loads((out / "report.json").read_text())
    counts = (rep.get("quantization") or {}).get("plan", {}).get("counts", {})
    rows = {r["name"]: r for r in rep["results"]}
    fp32 = rows["pytorch-fp32"]["accuracy"]["top1"]

    def b1(name: str) -> float | None:
        lat = rows.get(name, {}).get("latency") or []
        return lat[0]["batch1"]["median_ms"] if lat else None

    reference = b1("onnx-fp32-original") or b1("onnx-fp32")  # the unreduced model's FP32 ONNX when tokens ran
    deployed = {n: {"top1": r["accuracy"]["top1"], "speed": reference / b1(n) if reference and b1(n) else None}
                for n, r in rows.items() if not n.startswith("pytorch") and r.get("accuracy")}
    return {"recipe": recipe, "model": model, "exit": proc.returncode, "status": rep["status"], "arch": rep["model"]["arch"],
            "fp32_top1": fp32, "deployed": deployed, "softmax_sites": counts.get("attn_softmax", 0),
            "gelu_sites": counts.get("post_act", 0),
            "tokens_per_block": (rep.get("tokens") or {}).get("tokens_per_block"),
            "failed_checks": [c["name"] for c in rep["checks"] if not c["ok"]],
            "test_images": rep["data"]["eval"]["images"], "seconds": round(time.time() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--test", type=Path, default=TEST)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "hf_models.json")
    ap.add_argument("--only", nargs="+", default=None, help="RECIPE:hf or RECIPE:builtin runs to redo (the others "
                    "keep their results)")
    args = ap.parse_args()
    if not (HF_VIT / "config.json").is_file():
        sys.exit(f"{HF_VIT} missing: run benchmarks/train_reference.py --model hf-vit-cifar10 first")
    results = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv), "runs": []}
    earlier = json.loads(args.out.read_text())["runs"] if args.only and args.out.is_file() else []
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in RECIPES:
            for model in (f"hf:{HF_VIT}", "builtin:vit-cifar10"):
                key = f"{recipe}:{model.split(':')[0]}"
                kept = [r for r in earlier if r["recipe"] == recipe and r["model"] == model]
                if args.only and key not in args.only and kept:
                    results["runs"].append(kept[0])
                    continue
                r = run(recipe, model, args.test, args.limit, Path(tmp) / f"{recipe}-{len(results['runs'])}")
                results["runs"].append(r)
                cells = "; ".join(f"{n} {100 * d['top1']:.2f} %" + (f" {d['speed']:.2f}x" if d["speed"] else "")
                                  for n, d in r["deployed"].items())
                print(f"| {recipe} | {model.split('/')[-1]} ({r['arch']}) | {100 * r['fp32_top1']:.2f} % | {cells} | "
                      f"{r['softmax_sites']} / {r['gelu_sites']} | {r['tokens_per_block'] or '-'} | {r['status']} "
                      f"(exit {r['exit']}) |", flush=True)
                args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
