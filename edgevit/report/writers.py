"""Report writers: report.json (stable keys, for scripts) and report.md (for people), plus a plot."""
from __future__ import annotations

import math
import os
from pathlib import Path

from edgevit.report.sections import (budget_lines, fallback_lines, placement_lines, pruning_lines,
                                     reconstruction_lines, search_lines, token_lines)


def atomic_write(path: Path, text: str | bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(text.encode() if isinstance(text, str) else text)
    os.replace(tmp, path)


def json_default(o):
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def jsonable(o):
    """inf/nan are not JSON: write them as null."""
    if isinstance(o, float) and (math.isinf(o) or math.isnan(o)):
        return None
    if isinstance(o, dict):
        return {k: jsonable(v) for k, v in o.items()}
    if isinstance(o, list):
        return [jsonable(v) for v in o]
    return o


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f} %"


def _delta(v) -> str:
    return "n/a" if v is None else f"{100 * v:+.2f}"


def _size(n) -> str:
    return "n/a" if n is None else (f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB")


def _ms(lat: dict | None, key: str) -> str:
    return "n/a" if not lat else f"{lat[key]:.2f}"


def _throughput(tp: dict | None) -> str:
    return "n/a" if not tp else f"{tp['images_per_s']:.0f} (batch {tp['batch']})"


def _not_faster(report: dict) -> list[str]:
    return [f"`{r['name']}` shipped as its FP32 model ({r['placement']['reason']})" for r in report["results"]
            if (r.get("placement") or {}).get("shipped") == "fp32"]


def _speed_not_compared(report: dict) -> list[str]:
    if "speed_not_checked" in report:
        return report["speed_not_checked"]
    from edgevit.validate.checks import speed_not_compared  # a report.json written before the key existed

    return speed_not_compared(report["results"], report["checks"])


def _over_budget(report: dict) -> list[str]:
    return [f"{c['name'].split(':')[0]}: {c['detail']}" for c in report["checks"]
            if not c["ok"] and c.get("kind") == "budget"]


def status_line(report: dict) -> str:
    """One line saying how the run ended (what the exit code says, in words)."""
    failed = [c["name"] for c in report["checks"] if not c["ok"]]
    if report["status"] == "over_budget":
        return "status: OVER THE ACCURACY BUDGET: " + "; ".join(_over_budget(report))
    if report["status"] == "failed_checks":
        return f"status: FAILED {len(failed)} check(s): " + "; ".join(failed[:3]) + (" ..." if len(failed) > 3 else "")
    if report["status"] == "int8_not_faster":
        return "status: INT8 NOT FASTER: " + "; ".join(_not_faster(report))
    unjudged = _speed_not_compared(report)
    return f"status: ok, all {len(report['checks'])} checks passed" + (
        "; SPEED NOT CHECKED: " + "; ".join(unjudged) if unjudged else "")


def markdown(report: dict) -> str:
    """The human-readable report."""
    m = report["model"]
    lines = [f"# edgevit run: {report['recipe']}", ""]
    if (report.get("description") or "").strip():
        lines += [report["description"].strip(), ""]  # a folded YAML description ends with a newline
    unjudged = _speed_not_compared(report)
    status = {"ok": "all checks passed" + ("; **SPEED NOT CHECKED**: " + "; ".join(unjudged) if unjudged else ""),
              "failed_checks": "**SOME CHECKS FAILED**",
              "over_budget": "**OVER THE ACCURACY BUDGET**: " + "; ".join(_over_budget(report)),
              "int8_not_faster": "**INT8 NOT FASTER**: " + "; ".join(_not_faster(report))}[report["status"]]
    lines += [f"Status: {status}. Model `{m['source']}` ({m['arch']}, {m['params']:,} parameters, "
              f"{m['num_classes']} classes, input {m['preprocessing']['input_size']} px).", ""]
    if m.get("random_weights"):
        lines += ["**Random weights** (no checkpoint): the top-1 figures below mean nothing; artifacts are judged "
                  "by their logits (parity, and SQNR against the model they came from).", ""]
    for note in m.get("notes") or []:
        lines += [f"Model note: {note}.", ""]
    ev = report["data"]["eval"]
    if ev:
        lines.append(f"Evaluation: {ev['images']} images from `{ev['path']}` (labels {ev['label_mapping']}"
                     + (f"; {ev['skipped']} unreadable image(s) skipped" if ev["skipped"] else "") + ").")
    cal = report["data"]["calibration"]
    if cal:
        lines.append(f"Calibration: {cal['images']} images from `{cal['path']}`.")
    lines.append("")
    lines += stage_lines(report["results"], report.get("tokens"))
    lines += budget_lines(report["checks"])
    devices = sorted({d["device"] for r in report["results"] for d in r.get("latency", []) if not d.get("remote")})
    for dev in devices or [None]:
        lines += ["## Artifacts" + (f" on `{dev}`" if dev else ""), ""]
        vs = "original FP32 ONNX" if any(r.get("reference") for r in report["results"]) else "FP32 ONNX"
        lines += ["| artifact | runtime | precision | top-1 | Δ top-1 vs FP32 (pts) | agreement | "
                  f"latency b1 median / p90 (ms) | speed vs {vs} | throughput (img/s) | size |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        base = _baseline_latency(report["results"], dev)
        for r in report["results"]:
            acc = r.get("accuracy") or {}
            lat = next((d for d in r.get("latency", []) if d["device"] == dev), None)
            b1 = lat["batch1"] if lat else None
            tp = lat["throughput"] if lat else None
            if r.get("not_measured"):
                lines.append(f"| {r['name']} | {r['runtime']} | {r['precision']} | not measured: {r['not_measured']} | "
                             f"| | | | | {_size(r['size_bytes'])} |")
                continue
            ratio = f"{base / b1['median_ms']:.2f}x" if base and b1 and b1.get("median_ms") else "n/a"
            lines.append(
                f"| {r['name']} | {r['runtime']} | {r['precision']} | {_pct(acc.get('top1'))} | "
                f"{_delta(acc.get('delta_top1'))} | {_pct(acc.get('top1_agreement'))} | "
                f"{_ms(b1, 'median_ms')} / {_ms(b1, 'p90_ms')} | {ratio} | "
                f"{_throughput(tp)} | {_size(r['size_bytes'])} |")
        loads = [lat["load_average"] for r in report["results"] for lat in r.get("latency", []) if lat["device"] == dev]
        if loads:
            flat = [v for pair in loads for v in pair if v is not None]
            if flat:
                lines += ["", f"Load average during timing: {min(flat):.2f} to {max(flat):.2f} "
                              "(timings on a shared machine vary; compare ratios measured in one run)."]
        lines += _spinning_lines(report["results"], dev)
        lines.append("")
    lines += _remote_lines(report["results"])
    if report.get("plots"):
        lines += ["![top-1 vs latency](accuracy_latency.png)", ""]
    lines += pruning_lines(report.get("pruning"))
    lines += token_lines(report.get("tokens"))
    quant = report.get("quantization")
    if quant:
        c = quant["plan"]["counts"]
        cfg = quant["plan"]["config"]
        w, a = cfg["weights"], cfg["activations"]
        lines += ["## Quantization", "",
                  f"W{w['bits']}A{a['bits']}: weights {'symmetric' if w['symmetric'] else 'asymmetric'} per "
                  f"{w['granularity']} ({w['method']}), activations {'symmetric' if a['symmetric'] else 'asymmetric'} "
                  f"per tensor ({a['method']}); {c['activation_sites']} activation sites ({c.get('attn_softmax', 0)} "
                  f"post-softmax ({cfg.get('softmax', 'uniform')}), {c.get('post_act', 0)} post-GELU/activation "
                  f"({cfg.get('gelu', 'uniform')})), {c['weight_tensors']} "
                  f"weight tensors, {c['folded_batchnorm']} BatchNorms folded; calibration took {quant['seconds']} s. "
                  "The full plan (every site's range, scale and zero point) is in `plan.json`.", ""]
        if quant.get("overflow_fix"):
            fix = quant["overflow_fix"]
            lines += [f"{fix[0].upper()}{fix[1:]}.", ""]
        adalog = [k for k in ("softmax", "gelu") if cfg.get(k) == "adalog"]
        if adalog:
            form = cfg.get("adalog_form", "float")
            lines += [f"AdaLog ({', '.join(adalog)}) is searched, simulated and exported in its {form} form"
                      + (": the fixed-point table `quant_params.json` ships, as an integer accelerator computes it "
                         "(every accuracy figure of this run used it)." if form == "table" else
                         ": the paper's 2^(-code q / 37) (every accuracy figure of this run used it); an integer "
                         "accelerator computes the table form in `quant_params.json`, which differs by up to "
                         "1 / (2^(bits+1) - 2) of the scale."), ""]
        diag = quant.get("diagnostics") or {}
        if diag.get("layer_error"):
            worst = sorted(diag["layer_error"], key=lambda r: r["sqnr_db"])[:3]
            lines += [f"Output SQNR per quantized layer ({diag['images']} calibration images): median "
                      f"{sorted(r['sqnr_db'] for r in diag['layer_error'])[len(diag['layer_error']) // 2]:.1f} dB; "
                      "lowest " + ", ".join(f"`{r['layer']}` {r['sqnr_db']:.1f} dB" for r in worst)
                      + " (plots in report.html).", ""]
        lines += search_lines(quant["plan"]) + reconstruction_lines(quant["plan"])
        lines += fallback_lines(quant.get("fallback"))
        lines += placement_lines(report["results"])
    lines += ["## Checks", ""]
    for c in report["checks"]:
        lines.append(f"- {'PASS' if c['ok'] else 'FAIL'}: {c['name']}: {c['detail']}")
    if not report["checks"]:
        lines.append("- none (no FP32 ONNX artifact or no evaluation set)")
    lines += ["", "## Export details", ""]
    for r in report["results"]:
        if r.get("export") and r["export"].get("details"):  # a runtime that describes its own artifacts
            lines += [f"- `{r['file']}`: {r['export']['details'][0]}"] + [f"  - {d}" for d in r["export"]["details"][1:]]
        elif r.get("export") and r["format"] == "coreml":
            e = r["export"]
            ops = ", ".join(f"{k} {v}" for k, v in e["compressed_ops"].items()) or "none"
            acts = (f", activations int8 ({e['activation_quantize_ops']} quantize ops; accuracy expected as "
                    f"`{r['simulated_by']}`)" if r["precision"] == "int8" else "")
            norms = ", ".join(f"{v} {k}" for k, v in e.get("layer_norm_dtypes", {}).items())
            lines.append(f"- `{r['file']}`: CoreML mlprogram (spec {e['spec_version']}, {e['target']}), image input "
                         f"{e['input']['width']}x{e['input']['height']}, {len(e['labels'])} labels, {e['ops']} ops, "
                         f"weights {e['compression']} (compressed-weight ops: {ops}){acts}"
                         + (f", layer_norm ops: {norms}" if norms else "") + f". Checked here: {_coreml_checked(e)}. "
                         f"Not checked: {r['not_measured']}")
        elif r.get("export"):
            e = r["export"]
            par = r.get("parity") or {}
            lines.append(f"- `{r['file']}`: opset {e['opset']}, {e['nodes']} nodes, simplifier: {e['simplifier']}, "
                         f"max abs logit diff vs {par.get('against', 'PyTorch')} "
                         f"{par.get('max_abs_diff', float('nan')):.2e} on {par.get('images', 0)} images")
            o = e.get("ort_format")
            if o:
                lines.append(f"  - ONNX Runtime's ORT format ({o['optimization']}; ONNX Runtime {o['ort_version']}): "
                             f"{r['size_bytes'] / o['onnx_bytes']:.2f}x the bytes of its ONNX graph, session created "
                             f"in {o['load_ms']:.1f} ms vs {o['onnx_load_ms']:.1f} ms from the ONNX graph here; "
                             f"operators for a reduced build: `{o['required_operators']}`")
            eng = e.get("engine")
            if eng:
                sp_eng = eng.get("sparsity")
                lines.append(f"  - TensorRT {eng['tensorrt']} engine ({eng['precision']}, sparse weights "
                             f"{'on' if eng['sparse_weights'] else 'off'}) built in {eng['build_s']} s, "
                             f"{eng['size_bytes'] / 1e6:.2f} MB" + (
                                 f"; sparse kernels: {len(sp_eng['picked'])} of {len(sp_eng['eligible'])} eligible "
                                 f"layers picked ({', '.join(sp_eng['picked'][:8]) or 'none'})" if sp_eng else ""))
                lay = eng.get("layers")
                if lay:
                    prec = ", ".join(f"{v} {k}" for k, v in sorted(lay["by_input_precision"].items()))
                    fell = lay["fell_back"]
                    lines.append(f"  - engine layers by input precision: {prec}; LayerNorms pinned to FP32: "
                                 f"{len(eng.get('layernorm_fp32', []))}; math layers not in {eng['precision']}: "
                                 + (f"{len(fell)} ({', '.join(fell[:6])})" if fell else "none")
                                 + f"; timing cache `{eng['timing_cache']}`")
            if e.get("trtexec"):
                lines.append(f"  - build on the device: `{e['trtexec']}`")
            sp = e.get("sparsity")
            if sp:
                lines.append(f"  - weights in the file: {100 * sp['weight_sparsity']:.1f} % zero; {sp['nm_layers']} of "
                             f"{len(sp['layers'])} weight tensors follow {sp['pattern']}")
            audit = e.get("ort_int8")
            if audit:
                ops = ", ".join(f"{k} {v}" for k, v in audit["int8_ops"].items()) or "none"
                left = ", ".join(audit["float_left"][:12]) + (" ..." if len(audit["float_left"]) > 12 else "")
                lines.append(f"  - ONNX Runtime runs {audit['int8_nodes']} compute nodes in INT8 ({ops}); "
                             f"{audit['float_nodes']} left in float" + (f": {left}" if left else ""))
                trt = e.get("tensorrt_problems", [])
                lines.append(f"  - lowered for {e['target']}; TensorRT explicit-quantization rules: "
                             + ("followed" if not trt else f"{len(trt)} problem(s), e.g. {trt[0]}"))
                if r.get("exact_integers"):
                    lines.append("  - validated in ONNX Runtime without its integer kernels (each quantized op as "
                                 "DequantizeLinear -> float op -> QuantizeLinear, exact int32 sums): this CPU has no "
                                 "VNNI, so ONNX Runtime's uint8 x int8 kernels saturate here, which TensorRT's do not")
    for mode, pol in (report.get("fp16_layernorm") or {}).items():
        lines.append(f"- FP16 LayerNorm ({mode}): {'kept in FP32' if pol['keep_fp32'] else 'FP16'}: {pol['reason']}")
    env = report["environment"]
    lines += ["", f"Environment: Python {env['python']}, torch {env['torch']}, timm {env['timm']}, "
                  f"onnx {env['onnx']}, onnxruntime {env['onnxruntime']}, {env['cpu_count']} CPUs{_cpu(env)}; "
                  f"edgevit {env['edgevit']}; run took {report['elapsed_s']} s.", ""]
    return "\n".join(lines)


def _cpu(env: dict) -> str:
    cpu = env.get("cpu") or {}  # reports written before the CPU was recorded have none
    if not cpu.get("model"):
        return ""
    return f" ({cpu['model']}" + (f"; {', '.join(cpu['flags'])}" if cpu.get("flags") else "") + ")"


def yardsticks(results: list[dict]) -> list[dict]:
    """The FP32 ONNX rows that speeds are compared with, preferred first: the original model's (made when
    pruning or token reduction ran), then the run's own FP32 ONNX artifacts."""
    return [r for r in sorted(results, key=lambda r: not r.get("reference"))
            if r["runtime"] == "onnxruntime" and r["precision"] == "fp32"]


STEP_LABELS = {"pytorch-fp32": "FP32 model", "pytorch-pruned": "+ pruning", "pytorch-tokens": "+ token reduction",
               "pytorch-int8-sim": "+ quantization (simulated)"}


def stage_lines(results: list[dict], tokens: dict | None = None) -> list[str]:
    """The report's first table when a compression stage ran: after each stage, what the model lost (top-1,
    agreement with the FP32 model) and what it saved (FLOPs, non-zero weights, size, batch-1 latency on each
    device against the FP32 model in the same runtime), then each deployed artifact. ``tokens``: the token
    stage's record (a stage that reduced nothing gets a row saying so)."""
    steps = [r for r in results if r["name"] in STEP_LABELS]
    if len(steps) < 2 and not tokens:
        return []
    from edgevit.validate.checks import BEFORE_FALLBACK

    deployed = [r for r in results if r.get("file") and not r.get("reference") and BEFORE_FALLBACK not in r["name"]]
    devices = sorted({d["device"] for r in results for d in r.get("latency", []) if not d.get("remote")})
    fp32_by_runtime = {"torch": "pytorch-fp32"} | {r["runtime"]: r["name"] for r in results if r.get("reference")}
    by_name = {r["name"]: r for r in results}

    def latency(r, dev):
        lat = next((d for d in r.get("latency", []) if d["device"] == dev), None)
        base = by_name.get(fp32_by_runtime.get(r["runtime"], ""), {})
        blat = next((d for d in base.get("latency", []) if d["device"] == dev), None)
        if not lat:
            return "n/a"
        ms = lat["batch1"]["median_ms"]
        return f"{ms:.2f} ms" + (f" ({blat['batch1']['median_ms'] / ms:.2f}x)" if blat else "")

    lines = ["## What each stage cost and saved", "",
             "| step | top-1 | Δ top-1 (pts) | agreement with FP32 | FLOPs / image | non-zero weights | size | " +
             " | ".join(f"latency b1 on `{d}`" for d in devices) + (" |" if devices else ""),
             "|---|---|---|---|---|---|---|" + "---|" * len(devices)]
    skipped_tokens = tokens is not None and not tokens.get("stages")
    for r in steps + deployed:
        if skipped_tokens and r["name"] not in ("pytorch-fp32", "pytorch-pruned"):
            lines.append(f"| + token reduction | not applied: {tokens.get('warning', '')} |"
                         + " |" * (5 + len(devices)))
            skipped_tokens = False
        acc = r.get("accuracy") or {}
        label = STEP_LABELS.get(r["name"]) or f"export: {r['name']} ({r['runtime']})"
        flops = f"{r['flops'] / 1e6:.1f} M" if r.get("flops") else ""
        nz = f"{r['nonzero_weights']:,}" if r.get("nonzero_weights") is not None else ""
        lines.append(f"| {label} | {_pct(acc.get('top1'))} | {_delta(acc.get('delta_top1'))} | "
                     f"{_pct(acc.get('top1_agreement'))} | {flops} | {nz} | {_size(r.get('size_bytes'))} | " +
                     " | ".join(latency(r, d) for d in devices) + (" |" if devices else ""))
    return lines + ["", "Stage rows are the PyTorch models after each stage (latency in PyTorch, size at FP32); "
                        "latency ratios are against the FP32 model in the same runtime, timed interleaved.", ""]


def _spinning_lines(results: list[dict], dev: str | None) -> list[str]:
    """Where another runtime's speed is read against the FP32 ONNX: how ONNX Runtime was run for it."""
    timed = {r["runtime"] for r in results if any(d["device"] == dev for d in r.get("latency", []))}
    if "onnxruntime" not in timed or not timed - {"onnxruntime", "torch"}:
        return []
    return ["", "ONNX Runtime ran with its intra-op threads not spinning (steady timings on a shared machine); by "
                "default they spin, which ran ONNX Runtime FP32 1.27-1.53x faster at batch 1 on 2 threads in "
                "edgevit's benchmarks: another runtime's speed against the FP32 ONNX is against the slower setting."]


def _baseline_latency(results: list[dict], dev: str | None) -> float | None:
    """Batch-1 median of the yardstick on ``dev`` (timed interleaved with the others)."""
    for r in yardsticks(results):
        lat = next((d for d in r.get("latency", []) if d["device"] == dev), None)
        if lat:
            return lat["batch1"]["median_ms"]
    return None


def _remote_lines(results: list[dict]) -> list[str]:
    """One section per remote device: its machine and runtime, and each artifact measured there in one
    session, with top-1 on the device and the speed ratio to the FP32 artifact measured beside it."""
    lines = []
    remote = {}
    for r in results:
        for d in r.get("latency", []):
            if d.get("remote"):
                remote.setdefault(d["device"], []).append((r, d))
    for dev, entries in remote.items():
        m = entries[0][1]["remote"]
        base = next((d for r, d in sorted(entries, key=lambda e: not e[0].get("reference"))
                     if r["precision"] == "fp32"), None)
        lines += [f"## On device `{dev}`", "",
                  f"{m['host']}: {m['platform']} ({m['machine']}, {m['cpu_count']} CPUs), Python {m['python']}, "
                  f"{m['runtime']}; every artifact below was timed in one session on the device, interleaved.", "",
                  "| artifact | precision | top-1 on device | agreement | latency b1 median / p90 / p99 (ms) | "
                  "throughput (img/s) | speed vs FP32 |", "|---|---|---|---|---|---|---|"]
        for r, d in entries:
            acc = d["accuracy"]
            b1 = d["batch1"]
            agree = f"{_pct(acc['agreement'])} vs {acc['agreement_with']}" if acc["agreement"] is not None else "n/a"
            ratio = f"{base['batch1']['median_ms'] / b1['median_ms']:.2f}x" if base else "n/a"
            lines.append(f"| {r['name']} | {r['precision']} | {_pct(acc['top1'])} ({acc['images']} images) | {agree} | "
                         f"{b1['median_ms']:.2f} / {b1['p90_ms']:.2f} / {b1['p99_ms']:.2f} | "
                         f"{_throughput(d['throughput'])} | {ratio} |")
        loads = [v for v in entries[0][1]["load_average"] if v is not None]
        if loads:
            lines += ["", f"Device load average: {min(loads):.2f} to {max(loads):.2f}."]
        lines.append("")
    return lines


def _coreml_checked(e: dict) -> str:
    return ("the spec loads; image input, classifier outputs, labels and preprocessing metadata; the compressed "
            "weight ops" + (" and activation quantize ops" if e["precision"] == "int8" else "") + "; the package size")


def accuracy_latency_points(report: dict) -> dict[str, list[tuple[float, float, str]]]:
    """Per device: (batch-1 median ms, top-1 %, artifact) for every artifact timed there; a remote
    device's top-1 is the one measured on the device."""
    series: dict[str, list[tuple[float, float, str]]] = {}
    for r in report["results"]:
        for d in r.get("latency") or []:
            acc = (d.get("accuracy") or {}).get("top1") if d.get("remote") else (r.get("accuracy") or {}).get("top1")
            if acc is not None:
                series.setdefault(d["device"], []).append((d["batch1"]["median_ms"], 100 * acc, r["name"]))
    return series


def pareto(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """The points no other point beats on both latency (lower) and accuracy (higher), fastest first."""
    front, best = [], -1.0
    for p in sorted(points, key=lambda p: (p[0], -p[1])):
        if p[1] > best:
            front.append(p)
            best = p[1]
    return front


def accuracy_latency_axes(series: dict[str, list[tuple[float, float, str]]], title: str):
    """Top-1 against batch-1 median latency, one series per key (a device, or a sweep's runs), each with its
    Pareto front dashed (a matplotlib figure); the latency axis is logarithmic where it spans a decade."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for (label, points), marker in zip(series.items(), "osD^v<>"):
        sc = ax.scatter([p[0] for p in points], [p[1] for p in points], marker=marker, label=label)
        front = pareto(points)
        ax.plot([p[0] for p in front], [p[1] for p in front], "--", lw=0.8, color=sc.get_facecolor()[0])
        for x, y, name in points:
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    xs = [p[0] for points in series.values() for p in points]
    log_x = max(xs) > 10 * min(xs)  # else the log axis's minor tick labels pile up
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel("batch-1 median latency (ms" + (", log scale)" if log_x else ")"))
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def accuracy_latency_figure(report: dict):
    """Top-1 vs batch-1 median latency, one series per device, with each device's Pareto front (a
    matplotlib figure), or None when nothing was both evaluated and timed."""
    series = accuracy_latency_points(report)
    if not series:
        return None
    return accuracy_latency_axes(series, f"{report['recipe']}: accuracy vs latency (dashed: Pareto front)")


def png_bytes(fig) -> bytes | None:
    """A matplotlib figure as PNG bytes at 100 dpi, without a software tag (the same figure, the same bytes);
    closes the figure. None for no figure (a plot with nothing to show)."""
    import io

    import matplotlib.pyplot as plt

    if fig is None:
        return None

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def save_png(fig, path: Path) -> None:
    """Write a matplotlib figure as a PNG (atomically; :func:`png_bytes`)."""
    atomic_write(path, png_bytes(fig))
