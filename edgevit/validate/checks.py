"""Pass/fail statements about measured artifacts. Checks read the rows; they never change them.

With random weights (a timm architecture without a checkpoint) the logits are near ties, so top-1
agreement says little: FP16/BF16 and INT8 artifacts are then judged by the SQNR of their logits against
the model they came from (at least ``RANDOM_WEIGHTS_SQNR_DB``: noise at most 1 % of the logits' power).
"""
from __future__ import annotations

from edgevit.errors import BadInput
from edgevit.results import CheckResult
from edgevit.runtimes import RUNTIMES
from edgevit.shipped import root as shipped_root
from edgevit.stages.prune import PRUNED_NAME
from edgevit.stages.tokens import TOKENS_NAME
from edgevit.validate.latency import int8_dot_saturates

RANDOM_WEIGHTS_SQNR_DB = 20.0
MIN_AGREEMENT = 0.99  # top-1 agreement of a deployed INT8 / FP16 artifact with the model it came from
STAGE_ROWS = (("pruning", PRUNED_NAME), ("token reduction", TOKENS_NAME))  # the float model after each stage
BEFORE_FALLBACK = "-before-fallback"  # the all-quantized row beside an accuracy-budget fallback: a diagnostic
# token merging picks pairs by argmax over similarity scores: where two scores tie in float the runtime can merge
# another pair and the logits move past any tie (tome_int8, 10,000 images: 2 such changes, none without merging)
MERGE_CHANGE_SHARE = 0.001
SLOWER_MARGIN = 0.05  # an FP16/BF16/INT8 artifact fails "not slower" when its median is > 5 % above FP32's


def _origin_row(rows: list[dict], r: dict) -> dict:
    return next((o for o in rows if o["name"] == r.get("simulated_by")), rows[0])


def artifact_checks(rows: list[dict], val, n_eval: int, random_weights: bool = False) -> list[CheckResult]:
    """Every artifact's checks: FP32 equals PyTorch; FP16/BF16 and INT8 predictions agree with the model they
    came from; pruned weights stay sparse; then the checks of the artifact's own runtime. The not-slower checks
    are :func:`not_slower_checks`, run once every device (SSH ones too) has timed the rows."""
    checks: list[CheckResult] = []
    for r in rows:
        rt = RUNTIMES.get(r["runtime"])
        if rt is None:  # the PyTorch rows
            continue
        par = r.get("parity")
        if par is not None:
            checks += _parity_checks(r, rows, rt, val, n_eval, random_weights)
        checks += [CheckResult(**c) for c in rt.checks(r)]
    return checks


def check_budget_measurable(recipe, evalset, random_weights: bool) -> None:
    """Refuse, before any stage runs, a top-1 budget that the evaluation images cannot measure (no labels, or
    labels that do not map to the model's classes) while no agreement budget stands in: the run would spend its
    minutes and end failing every budget check. Random weights are not judged by the budget (see
    :func:`budget_checks`)."""
    b = recipe.budget
    if b is None or b.max_accuracy_drop is None or b.max_agreement_loss is not None or random_weights \
            or evalset is None or evalset.labels is not None:
        return
    s = evalset.summary
    raise BadInput(f"recipe {recipe.name}: budget.max_accuracy_drop needs labeled evaluation images, and top-1 "
                   f"cannot be measured on {s['path']} ({s['label_mapping']}): give validate.eval (--eval) a folder "
                   "with one subfolder per class of the model, or set budget.max_agreement_loss (points of top-1 "
                   "agreement with the FP32 model, measured without labels)")


def budget_checks(rows: list[dict], budget, random_weights: bool) -> list[CheckResult]:
    """Every deployed artifact within the recipe's ``budget`` against the original FP32 model (``rows[0]``),
    with what each stage spent on the way: pruning, token reduction, quantization (its simulation), the
    export. An INT8 artifact that does not run here is judged on its simulation; a float or weight-compressed
    one that does not run here is not judged (nothing measured it). None with random weights (top-1 and
    agreement are near-tie noise there)."""
    if budget is None or random_weights or not rows[0].get("accuracy"):
        return []
    labeled = rows[0]["accuracy"].get("top1") is not None
    use_top1 = budget.max_accuracy_drop is not None and labeled
    limit = budget.max_accuracy_drop if use_top1 else budget.max_agreement_loss
    metric = "top-1" if use_top1 else "top-1 agreement with FP32"
    by_name = {r["name"]: r for r in rows}
    stages = [(label, by_name[n]) for label, n in STAGE_ROWS if n in by_name]
    out = []
    for r in rows:
        if r["runtime"] not in RUNTIMES or r.get("reference") or r["name"].endswith(BEFORE_FALLBACK):
            continue
        name = f"{r['name']}: within the accuracy budget"
        sim = by_name.get(r.get("simulated_by"))
        sim = sim if sim is not None and sim["precision"] == "int8-sim" else None
        if not r.get("accuracy") and sim is None:  # nothing measured it here (a CoreML package on Linux)
            continue
        if limit is None:
            out.append(CheckResult(name=name, ok=False, kind="budget", detail=(
                "the evaluation images have no labels, so budget.max_accuracy_drop cannot be measured: set "
                "budget.max_agreement_loss (points of top-1 agreement with the FP32 model)")))
            continue
        chain = [("FP32", rows[0])] + stages
        if sim is not None:
            chain.append(("quantization", sim))
        if r.get("accuracy"):
            chain.append((f"{RUNTIMES[r['runtime']].label} export", r))
        value = [(label, _score(row["accuracy"], use_top1)) for label, row in chain]
        spent = value[0][1] - value[-1][1]
        steps = ", ".join(f"{label} {b - a:+.2f}" for (_, a), (label, b) in zip(value, value[1:]))
        where = "" if chain[-1][1] is r else f" (measured on {chain[-1][1]['name']}: it does not run here)"
        out.append(CheckResult(name=name, ok=spent <= limit + 1e-9, kind="budget", detail=(
            f"{metric} {value[-1][1]:.2f} % vs FP32 {value[0][1]:.2f} %: {-spent:+.2f} points (budget "
            f"{limit:g}){where}" + (f"; by stage: {steps}" if steps else ""))))
    return out


def _score(acc: dict, top1: bool) -> float:
    """Percent: top-1, or top-1 agreement with the FP32 model."""
    return 100 * (acc["top1"] if top1 else acc.get("top1_agreement", 1.0))


def not_slower_checks(rows: list[dict]) -> list[CheckResult]:
    """Every artifact that trades precision for speed (FP16, BF16, and INT8 lowered for its own runtime) is, on
    each device it was timed on (here or over SSH), at most ``SLOWER_MARGIN`` slower than that runtime's FP32
    artifact timed interleaved with it: at batch 1 and, where the device profile timed one, at its throughput
    batch. A smaller file that runs slower than the one it replaces is not a success on that device."""
    out = []
    for r in rows:
        if not _judged_against_fp32(r):
            continue
        pl = r.get("placement") or {}
        prec = r["precision"].upper()
        fp32 = next((o for o in rows if o["runtime"] == r["runtime"] and o["precision"] == "fp32"
                     and not o.get("placement") and o.get("latency")), None)
        for lat in r.get("latency") or []:
            base = next((b for b in (fp32 or {}).get("latency", []) if b["device"] == lat["device"]), None)
            if base is None:
                continue
            for key in ("batch1", "throughput"):
                if not (lat.get(key) and base.get(key)):
                    continue
                mine, theirs, batch = lat[key]["median_ms"], base[key]["median_ms"], lat[key].get("batch", 1)
                ok = mine <= theirs * (1 + SLOWER_MARGIN)
                at = "" if key == "batch1" else f" at batch {batch}"
                detail = (f"batch-{batch} median {mine:.3f} ms vs {theirs:.3f} ms ({theirs / mine:.2f}x FP32's speed; "
                          f"timed interleaved; noise margin {100 * SLOWER_MARGIN:g} %)")
                if pl:
                    detail += f"; placement: {pl.get('mode')}" + (
                        " (chosen by batch-1 timings)" if key != "batch1" and pl.get("mode") in ("auto", "replay") else "")
                elif not ok:
                    detail += f"; {prec} pays on devices that compute it natively ({NATIVE[r['precision']]})"
                out.append(CheckResult(name=f"{r['name']}: {prec} not slower than {fp32['name']}{at} on {lat['device']}",
                                       ok=ok, detail=detail))
    return out


#: where float formats narrower than FP32 run faster than it (the hint of a failed not-slower check)
NATIVE = {"fp16": "GPUs, NPUs, ARM CPUs with FP16 arithmetic", "bf16": "CPUs with AMX or AVX512-BF16, GPUs"}


def _judged_against_fp32(r: dict) -> bool:
    """An artifact whose speed against its runtime's FP32 artifact means something: FP16 / BF16 ones, and INT8
    ones lowered for the runtime they ship to."""
    rt = RUNTIMES.get(r["runtime"])
    if r.get("reference") or rt is None:
        return False
    if r["precision"] == "int8":
        return rt.lowering is not None and (r.get("placement") or {}).get("lowering") == rt.lowering.name
    return r["precision"] in NATIVE


def speed_not_compared(rows: list[dict], checks: list[dict]) -> list[str]:
    """FP16 / BF16 artifacts and INT8 ones lowered for their own runtime, timed, that no not-slower check judged
    because the run has no FP32 artifact of that runtime timed on the same device: one sentence each (the status
    line and report.json's ``speed_not_checked`` say them)."""
    out = []
    for r in rows:
        if not (_judged_against_fp32(r) and r.get("latency")) or \
                any(c["name"].startswith(f"{r['name']}: {r['precision'].upper()} not slower than") for c in checks):
            continue
        rt = RUNTIMES[r["runtime"]]
        preset = f"export/{rt.format}-fp32.yaml"
        add = preset if (shipped_root() / preset).is_file() else f"an export with format: {rt.format}, precision: fp32"
        out.append(f"{r['name']}: speed not compared with FP32 (no FP32 {rt.label} artifact timed beside it; add "
                   f"{add})")
    return out


def _agreement_check(name: str, agree: float, sqnr: float | None, against: str, n_eval: int,
                     random_weights: bool) -> tuple[bool, str]:
    """(ok, detail): top-1 agreement >= 99 %, or with random weights logit SQNR >= the threshold."""
    if random_weights and sqnr is not None:
        return sqnr >= RANDOM_WEIGHTS_SQNR_DB, (
            f"random weights: logit SQNR vs {against} {sqnr:.1f} dB on {n_eval} images (needs >= "
            f"{RANDOM_WEIGHTS_SQNR_DB:g} dB; top-1 agreement {100 * agree:.1f} % is not judged, logits are near ties)")
    return agree >= MIN_AGREEMENT, (f"top-1 agreement {name} {against} {100 * agree:.1f} % on {n_eval} images "
                                    f"(needs >= {100 * MIN_AGREEMENT:g} %)")


def _parity_checks(r: dict, rows: list[dict], rt, val, n_eval: int, random_weights: bool) -> list[CheckResult]:
    out = []
    par, acc = r["parity"], r.get("accuracy") or {}
    if r["precision"] == "fp32":
        out.append(CheckResult(name=f"{r['name']}: {rt.file_kind} matches PyTorch", ok=par["ok"],
                               detail=f"max abs logit diff {par['max_abs_diff']:.2e} (tolerance "
                                      f"{val.parity_tolerance:g}) on {par['images']} images"))
        origin = _origin_row(rows, r)
        top1, ref = acc.get("top1"), (origin["accuracy"] or {}).get("top1")
        if top1 is not None and ref is not None:  # both ran on the eval images: validate counted the changes
            changes = acc["top1_changes"]
            # a prediction may change only where the two best logits are within what float rounding moves
            # (and, after token merging, where the matching's scores tie)
            allowed = int(MERGE_CHANGE_SHARE * n_eval) if origin["name"] == TOKENS_NAME else 0
            ok = changes["changed"] - changes["near_ties"] <= allowed
            detail = f"{rt.short} {top1:.4f} vs PyTorch ({origin['name']}) {ref:.4f} on {n_eval} images"
            if changes["changed"]:
                detail += (f"; {changes['changed']} prediction(s) differ, {changes['near_ties']} of them where "
                           f"PyTorch's two logits are within {changes['tie']:g} (twice the parity tolerance)")
                if allowed:
                    detail += (f"; up to {allowed} may differ elsewhere: token merging can pick another pair where "
                               "two similarity scores tie in float")
            else:
                detail += "; no prediction differs"
            out.append(CheckResult(name=f"{r['name']}: top-1 in {rt.short} equals PyTorch", ok=ok, detail=detail))
    origin = r.get("simulated_by") or rows[0]["name"]
    if r["precision"] in ("fp16", "bf16") and "agreement_with_fp32" in acc:
        ok, detail = _agreement_check("with", acc["agreement_with_fp32"], acc.get("sqnr_db_vs_fp32"), origin, n_eval,
                                      random_weights)
        out.append(CheckResult(name=f"{r['name']}: {r['precision'].upper()} predictions agree with FP32 PyTorch",
                               ok=ok, detail=f"{detail}; max abs logit diff {par['max_abs_diff']:.2e}"))
    if r["precision"] == "int8" and "agreement_with_simulation" in acc:
        ok, detail = _agreement_check(f"{rt.short} vs", acc["agreement_with_simulation"],
                                      acc.get("sqnr_db_vs_simulation"), r["simulated_by"], n_eval, random_weights)
        if not ok and rt.int8_kernels_saturate and not r.get("exact_integers") and int8_dot_saturates():
            detail += (f"; this CPU has no VNNI, so {rt.label}'s uint8 x int8 kernels saturate where weights use 8 "
                       "bits: 7-bit weights (quantize.weights.overflow_fix: on) avoid it")
        out.append(CheckResult(name=f"{r['name']}: deployed model agrees with the simulation", ok=ok, detail=detail))
    sp = (r["export"] or {}).get("sparsity") or {}
    if "expected_nm_layers" in sp:
        out.append(CheckResult(name=f"{r['name']}: {sp['pattern']} sparsity intact in the exported weights",
                               ok=sp["nm_layers"] >= sp["expected_nm_layers"],
                               detail=f"{sp['nm_layers']} weight tensors in the file follow {sp['pattern']} "
                                      f"(pruned: {sp['expected_nm_layers']}); {100 * sp['weight_sparsity']:.1f} % "
                                      "of all weights zero"))
    return out
