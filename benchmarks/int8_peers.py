"""edgevit's INT8 against the peers, per model, on this machine's ONNX Runtime and OpenVINO, batch 1 and 32.

    NNCF_EXTENSION_LOAD_TIMEOUT=0 .venv/bin/python benchmarks/int8_peers.py [--only NAME ...]

Per model, one ``edgevit compress --recipe int8_ptq`` run (``quantize.placement: auto``; conv outputs
quantized on the conv hybrids; ``when_slower: int8`` so the fastest INT8 candidate is in the run folder even
when edgevit would have shipped FP32: the table says which) writes the FP32 ONNX, the placed INT8 ONNX and
OpenVINO BF16 / INT8 IRs. The peers are made from the same FP32 ONNX and the same calibration images:
ONNX Runtime ``quantize_static`` (QDQ with uint8 and with int8 activations, QOperator with uint8; MinMax
calibration: the calibrator changes scales, not speed; on the built-in model, whose accuracy means
something, MinMax, Entropy and Percentile are all scored), NNCF on the ONNX (ORT) and on the OpenVINO
IR, and the plain OpenVINO conversion of the FP32 ONNX run in f32 ("OpenVINO FP32") and, where the CPU
computes bf16 natively (OpenVINO's default there: AMX, AVX-512 BF16), in bf16 ("OpenVINO BF16": what a user
gets from OpenVINO alone; edgevit's BF16 IR is the same model after edgevit's graph rewrites and with its
input fixed to batch 1 where OpenVINO computes that form right). Every variant is timed in one loop,
interleaved in a shuffled order each round, batch 1 and then batch 32, 2 threads; speeds are ratios to ONNX
Runtime FP32 in that loop, run as edgevit's validation runs it (intra-op threads not spinning); "ORT FP32,
spinning" is the same file run as ONNX Runtime runs it by default (1.2-1.5x faster at batch 1 on two threads:
divide a speed by its ratio to read it against ORT's default).
Accuracy: top-1 on the 10,000 CIFAR-10 test images for the built-in hybrid (``--test``); logit SQNR
against FP32 for the random-weight timm models (their top-1 is meaningless). Writes
benchmarks/results/int8_peers.json and prints the table.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from openvino_runtime import nncf_int8  # noqa: E402
from ptq_baselines import nncf_quantize, ort_static  # noqa: E402

from edgevit.api import compress  # noqa: E402
from edgevit.data import Preprocess, open_image_set  # noqa: E402
from edgevit.runtimes.openvino import OpenVINORunner, default_precision, fixed_batch  # noqa: E402
from edgevit.validate.accuracy import compare_logits  # noqa: E402
from edgevit.validate.latency import cpu_facts, load_average  # noqa: E402
from edgevit.validate.profiling import interleaved_medians  # noqa: E402
from edgevit.validate.runners import OrtRunner  # noqa: E402

MODELS = {  # name -> source, input size (None: the model's own), quantize conv outputs
    "builtin-hybrid": ("builtin:hybrid-cifar10", None, True),
    "mobilevit_xxs": ("timm:mobilevit_xxs", 256, True),
    "efficientformerv2_s0": ("timm:efficientformerv2_s0", 224, True),
    "efficientvit_m0": ("timm:efficientvit_m0", 224, True),
    "levit_128s": ("timm:levit_128s", 224, False),
    "deit_tiny": ("timm:deit_tiny_patch16_224", 224, False),
}
EXPORTS = ["export/onnx-fp32.yaml", "export/onnx-int8.yaml", "export/openvino-bf16.yaml", "export/openvino-int8.yaml"]
PLACEMENT_KEYS = ("shipped", "activations", "float_regions", "float_sites", "candidates", "confirmation", "speedup",
                  "reason")
#: the plain OpenVINO conversion of the FP32 ONNX, run in f32 and (where the CPU computes it natively, OpenVINO's
#: default there) in bf16: what a user gets from OpenVINO without edgevit
PEER_HINTS = {"ov-f32": "f32", "ov-bf16": "bf16"}
CIFAR = "model.labels=[airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck]"
TEST = Path.home() / ".cache" / "edgevit" / "cifar10-images" / "test"


def logits(run, x: np.ndarray, batch: int = 100) -> np.ndarray:
    """The runner's logits on ``x`` in batches (one image at a time for an IR fixed to batch 1)."""
    try:
        return np.concatenate([run(x[i:i + batch]) for i in range(0, len(x), batch)])
    except Exception:  # noqa: BLE001 - NNCF's fallback IR is reshaped to batch 1
        return np.concatenate([run(x[i:i + 1]) for i in range(len(x))])


def peers(fp32: Path, ov_fp32, calib: np.ndarray, work: Path, builtin: bool) -> tuple[dict, dict, list]:
    """The peer artifacts: name -> (runtime, path), name -> seconds to make, notes on what failed."""
    made, seconds, notes = {}, {}, []
    static = [("ORT static QDQ u8", "MinMax", "QDQ", "QUInt8"), ("ORT static QDQ s8", "MinMax", "QDQ", "QInt8"),
              ("ORT static QOperator u8", "MinMax", "QOperator", "QUInt8")]
    if builtin:
        static += [("ORT static QDQ u8 Entropy", "Entropy", "QDQ", "QUInt8"),
                   ("ORT static QDQ u8 Percentile", "Percentile", "QDQ", "QUInt8")]
    for name, method, fmt, act in static:
        path = work / (name.replace(" ", "-") + ".onnx")
        t0 = time.time()
        try:
            ort_static(fp32, path, calib, method, fmt, act)
            made[name], seconds[name] = ("ort", path), time.time() - t0
        except Exception as e:  # noqa: BLE001 - a peer that fails is reported, not fatal
            notes.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    t0 = time.time()
    try:
        why = nncf_quantize(fp32, work / "nncf-ort.onnx", calib)
        if why is None:
            made["NNCF INT8 in ORT"], seconds["NNCF INT8 in ORT"] = ("ort", work / "nncf-ort.onnx"), time.time() - t0
        else:
            notes.append(f"NNCF for ORT: {why}")
    except Exception as e:  # noqa: BLE001
        notes.append(f"NNCF for ORT (transformer mode): {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    t0 = time.time()
    path, how = nncf_int8(ov_fp32, calib, work, default_mode=True)
    notes += how
    if path is not None:
        made["NNCF INT8 in OpenVINO"], seconds["NNCF INT8 in OpenVINO"] = ("ov-f32", path), time.time() - t0
    return made, seconds, notes


def preprocess_of(report: dict) -> Preprocess:
    """The preprocessing a run's report says its model wants."""
    pp = report["model"]["preprocessing"]
    return Preprocess(**{k: pp[k] for k in ("input_size", "mean", "std", "crop_pct", "interpolation")})


def calibration_images(report: dict, n: int) -> np.ndarray:
    """The first ``n`` shipped calibration images, preprocessed as the run's model wants."""
    images = open_image_set(ROOT / "calibration" / "builtin-calib", n, 0)
    return np.ascontiguousarray(images.load(preprocess_of(report))[0])


def fp32_run(name: str, work: Path) -> tuple[dict, np.ndarray]:
    """One ``edgevit compress --recipe fp32_export`` run of ``name`` into ``work/run`` writing the FP32 ONNX and the
    OpenVINO BF16 IR: its report and one calibration image preprocessed as the model wants."""
    src, size, _ = MODELS[name]
    sets = [f"model.source={src}", 'export=["export/onnx-fp32.yaml","export/openvino-bf16.yaml"]',
            "validate.eval.num=50", "calibration.num=16"]
    if size:
        sets += [f"model.input_size={size}", "model.num_classes=10", CIFAR]
    report = compress("fp32_export", sets, out=work / "run", overwrite=True).report
    return report, calibration_images(report, 1)


def fixed_batch_ir(path: Path, graph: Path, x: np.ndarray, kind: str) -> tuple[tuple[str, Path], str]:
    """A peer's IR with its input fixed to batch 1 under edgevit's rule (``fixed_batch``: where OpenVINO computes
    that form as closely to ``graph`` as the dynamic one), saved beside it; (variant, why)."""
    import openvino as ov

    model = ov.Core().read_model(str(path))
    fixed, facts = fixed_batch(model, 1, PEER_HINTS.get(kind), graph, x)
    if fixed is model:
        return (kind, path), facts["reason"]
    out = path.with_name(f"{path.stem}-b1-{kind}.xml")
    ov.save_model(fixed, str(out), compress_to_fp16=False)
    return (kind, out), facts["reason"]


def run_model(name: str, work: Path, args) -> dict:
    src, size, conv_output = MODELS[name]
    builtin = src.startswith("builtin:")
    sets = [f"model.source={src}", f"export={json.dumps(EXPORTS)}", "quantize.when_slower=int8",
            f"quantize.conv_output={str(conv_output).lower()}", "validate.eval.num=200",
            f"calibration.num={args.calib}"]
    if size:
        sets += [f"model.input_size={size}", "model.num_classes=10", CIFAR]
    t0 = time.time()
    res = compress("int8_ptq", sets, out=work / "run", overwrite=True)
    rep, run = res.report, work / "run"
    placements = json.loads((run / "placement.json").read_text())["artifacts"]
    placement = placements["onnx-int8"]
    print(f"[{name}] compress {time.time() - t0:.0f} s; placement: {placement['reason']}; OpenVINO: "
          f"{placements['openvino-int8']['form']}, {placements['openvino-int8']['reason']}", flush=True)
    pre = preprocess_of(rep)
    calib = calibration_images(rep, args.calib)
    import openvino as ov

    ov.save_model(ov.convert_model(str(run / "onnx-fp32.onnx")), str(work / "ov-fp32.xml"), compress_to_fp16=False)
    made, seconds, notes = peers(run / "onnx-fp32.onnx", work / "ov-fp32.xml", calib, work, builtin)
    out_notes = [f"edgevit {r['name']}: input {r['export']['batch']['reason']}" for r in rep["results"]
                 if r.get("runtime") == "openvino"]
    variants = {"ORT FP32": ("ort", run / "onnx-fp32.onnx"), "ORT FP32, spinning": ("ort-spin", run / "onnx-fp32.onnx"),
                "edgevit INT8 in ORT": ("ort", run / "onnx-int8.onnx"),
                "OpenVINO FP32": ("ov-f32", work / "ov-fp32.xml"),
                **({"OpenVINO BF16": ("ov-bf16", work / "ov-fp32.xml")} if default_precision() == "bf16" else {}),
                "edgevit BF16 in OpenVINO": ("ov", run / "openvino-bf16.xml"),
                "edgevit INT8 in OpenVINO": ("ov", run / "openvino-int8.xml")} | made

    def runner(kind: str, path: Path):
        if kind.startswith("ort"):
            return OrtRunner(path, args.threads, spinning=kind == "ort-spin")
        return OpenVINORunner(path, "CPU", args.threads, hint=PEER_HINTS.get(kind))

    for k, (kind, path) in list(variants.items()):  # the peers' IRs fixed to batch 1 as edgevit's are
        if kind.startswith("ov") and not k.startswith("edgevit"):
            variants[k], why = fixed_batch_ir(path, run / "onnx-fp32.onnx", calib[:8], kind)
            out_notes.append(f"{k}: input {why}")
    runners = {k: runner(*v) for k, v in variants.items()}
    # accuracy: the same images for every variant
    if builtin:
        x_eval, y_eval = open_image_set(args.test, args.test_images, 0).load(pre)
    else:
        x_eval, y_eval = calib[:args.sqnr_images], None
    ref = logits(runners["ORT FP32"], x_eval)
    notes += out_notes
    out = {"model": name, "source": src, "input_size": pre.input_size, "eval_images": int(len(x_eval)),
           "placement": {k: placement[k] for k in PLACEMENT_KEYS},
           "placement_openvino": {k: placements["openvino-int8"].get(k)
                                  for k in PLACEMENT_KEYS + ("form", "forms", "not_timed", "refused", "references",
                                                             "inference_precision")},
           "notes": notes, "seconds_to_quantize": seconds, "variants": {}}
    for k, r in runners.items():
        lg = logits(r, x_eval)
        sqnr = None if k == "ORT FP32" else round(compare_logits(lg, ref)["sqnr_db"], 2)
        out["variants"][k] = {"top1": float((lg.argmax(1) == y_eval).mean()) if builtin else None,
                              "sqnr_db_vs_fp32": sqnr,
                              "size_bytes": sum(f.stat().st_size for f in
                                                (variants[k][1], variants[k][1].with_suffix(".bin")) if f.exists())}
    out["load_before"] = load_average()
    for batch, rounds in ((1, args.rounds), (32, args.rounds_b32)):
        x = np.ascontiguousarray(np.resize(x_eval, (batch, *x_eval.shape[1:])))
        ok = {}
        for k, r in runners.items():  # an IR NNCF could only quantize reshaped to batch 1 cannot run batch 32
            try:
                r(x)
                ok[k] = r
            except Exception as e:  # noqa: BLE001
                out["notes"].append(f"{k}: batch {batch} does not run ({type(e).__name__})")
                out["variants"][k][f"b{batch}_ms"] = out["variants"][k][f"b{batch}_speed"] = None
        med = interleaved_medians(ok, x, rounds, warmup=3, seed=batch, per_round=args.per_round)
        for k, ms in med.items():
            out["variants"][k][f"b{batch}_ms"] = round(ms, 3)
            out["variants"][k][f"b{batch}_speed"] = round(med["ORT FP32"] / ms, 3)
    out["load_after"] = load_average()
    out["per_round"] = args.per_round
    return out


def table(results: list[dict]) -> str:
    lines = ["| model | variant | b1 ms | b1 speed | b32 speed | top-1 / logit SQNR | size MB |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        for k, v in sorted(r["variants"].items(), key=lambda kv: -kv[1]["b1_speed"]):
            acc = f"{100 * v['top1']:.2f} %" if v["top1"] is not None else (
                f"{v['sqnr_db_vs_fp32']:.1f} dB" if v["sqnr_db_vs_fp32"] is not None else "reference")
            lines.append(f"| {r['model']} ({r['input_size']} px) | {k} | {v['b1_ms']:.2f} | {v['b1_speed']:.2f}x | "
                         f"{v['b32_speed'] or 0:.2f}x | {acc} | {v['size_bytes'] / 1e6:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--test", type=Path, default=TEST, help="labeled test images for the built-in model")
    ap.add_argument("--test-images", type=int, default=10000)
    ap.add_argument("--sqnr-images", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--rounds-b32", type=int, default=8)
    ap.add_argument("--per-round", type=int, default=1, help="calls in a row per variant and round (5: as the "
                    "pipeline's validation times, warm caches)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "int8_peers.json")
    args = ap.parse_args()
    import onnxruntime
    import openvino

    old = json.loads(args.out.read_text())["results"] if args.out.exists() else []
    results = [r for r in old if r["model"] not in args.only]  # a rerun of some models keeps the others
    for name in args.only:
        with tempfile.TemporaryDirectory(prefix=f"edgevit-peers-{name}-") as tmp:
            try:
                results.append(run_model(name, Path(tmp), args))
            except Exception:  # noqa: BLE001 - one model failing leaves the others measured
                traceback.print_exc()
                continue
        args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "onnxruntime": onnxruntime.__version__,
                                        "openvino": openvino.__version__, "cpu": cpu_facts(), "results": results},
                                       indent=1) + "\n")
        print(table(results[-1:]), flush=True)
    print("\n" + table(results))


if __name__ == "__main__":
    main()
