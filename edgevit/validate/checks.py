"""Pass/fail statements about measured artifacts. Checks read the rows; they never change them.

With random weights (a timm architecture without a checkpoint) the logits are near ties, so top-1
agreement says little: FP16/BF16 and INT8 artifacts are then judged by the SQNR of their logits against
the model they came from (at least ``RANDOM_WEIGHTS_SQNR_DB``: noise at most 1 % of the logits' power).
"""
from __future__ import annotations

from edgevit.results import CheckResult
from edgevit.runtimes import RUNTIMES

RANDOM_WEIGHTS_SQNR_DB = 20.0
SLOWER_MARGIN = 0.05  # an INT8 artifact fails "not slower" when its batch-1 median is > 5 % above FP32's


def _origin_row(rows: list[dict], r: dict) -> dict:
    return next((o for o in rows if o["name"] == r.get("simulated_by")), rows[0])


def artifact_checks(rows: list[dict], val, n_eval: int, random_weights: bool = False) -> list[CheckResult]:
    """Every artifact's checks: FP32 equals PyTorch; FP16/BF16 and INT8 predictions agree with the model they
    came from; pruned weights stay sparse; then the checks of the artifact's own runtime."""
    checks: list[CheckResult] = []
    for r in rows:
        rt = RUNTIMES.get(r["runtime"])
        if rt is None:  # the PyTorch rows
            continue
        par = r.get("parity")
        if par is not None:
            checks += _parity_checks(r, rows, rt, val, n_eval, random_weights)
        checks += [CheckResult(**c) for c in rt.checks(r)]
    return checks + not_slower_checks(rows)


def not_slower_checks(rows: list[dict]) -> list[CheckResult]:
    """Every INT8 artifact lowered for its own runtime is, on each device it was timed on (here or over
    SSH), at most ``SLOWER_MARGIN`` slower than that runtime's FP32 artifact timed interleaved with it."""
    out = []
    for r in rows:
        pl = r.get("placement") or {}
        rt = RUNTIMES.get(r["runtime"])
        if r["precision"] != "int8" or rt is None or rt.lowering is None or pl.get("lowering") != rt.lowering.name:
            continue
        fp32 = next((o for o in rows if o["runtime"] == r["runtime"] and o["precision"] == "fp32"
                     and not o.get("placement") and o.get("latency")), None)
        for lat in r.get("latency") or []:
            base = next((b for b in (fp32 or {}).get("latency", []) if b["device"] == lat["device"]), None)
            if base is None:
                continue
            mine, theirs = lat["batch1"]["median_ms"], base["batch1"]["median_ms"]
            out.append(CheckResult(
                name=f"{r['name']}: INT8 not slower than {fp32['name']} on {lat['device']}",
                ok=mine <= theirs * (1 + SLOWER_MARGIN),
                detail=f"batch-1 median {mine:.3f} ms vs {theirs:.3f} ms ({theirs / mine:.2f}x FP32's speed; "
                       f"timed interleaved; noise margin {100 * SLOWER_MARGIN:g} %); placement: {pl.get('mode')}"))
    return out


def _agreement_check(name: str, agree: float, sqnr: float | None, against: str, n_eval: int,
                     random_weights: bool) -> tuple[bool, str]:
    """(ok, detail): top-1 agreement >= 99 %, or with random weights logit SQNR >= the threshold."""
    if random_weights and sqnr is not None:
        return sqnr >= RANDOM_WEIGHTS_SQNR_DB, (
            f"random weights: logit SQNR vs {against} {sqnr:.1f} dB on {n_eval} images (needs >= "
            f"{RANDOM_WEIGHTS_SQNR_DB:g} dB; top-1 agreement {100 * agree:.1f} % is not judged, logits are near ties)")
    return agree >= 0.99, f"top-1 agreement {name} {against} {100 * agree:.1f} % on {n_eval} images (needs >= 99 %)"


def _parity_checks(r: dict, rows: list[dict], rt, val, n_eval: int, random_weights: bool) -> list[CheckResult]:
    out = []
    par, acc = r["parity"], r.get("accuracy") or {}
    if r["precision"] == "fp32":
        out.append(CheckResult(name=f"{r['name']}: {rt.file_kind} matches PyTorch", ok=par["ok"],
                               detail=f"max abs logit diff {par['max_abs_diff']:.2e} (tolerance "
                                      f"{val.parity_tolerance:g}) on {par['images']} images"))
        origin = _origin_row(rows, r)
        top1, ref = acc.get("top1"), (origin["accuracy"] or {}).get("top1")
        if top1 is not None and ref is not None:
            out.append(CheckResult(name=f"{r['name']}: top-1 in {rt.short} equals PyTorch",
                                   ok=abs(top1 - ref) <= 1.0 / max(1, n_eval) + 1e-12,
                                   detail=f"{rt.short} {top1:.4f} vs PyTorch ({origin['name']}) {ref:.4f} on "
                                          f"{n_eval} images"))
    origin = r.get("simulated_by") or rows[0]["name"]
    if r["precision"] in ("fp16", "bf16") and "agreement_with_fp32" in acc:
        ok, detail = _agreement_check("with", acc["agreement_with_fp32"], acc.get("sqnr_db_vs_fp32"), origin, n_eval,
                                      random_weights)
        out.append(CheckResult(name=f"{r['name']}: {r['precision'].upper()} predictions agree with FP32 PyTorch",
                               ok=ok, detail=f"{detail}; max abs logit diff {par['max_abs_diff']:.2e}"))
    if r["precision"] == "int8" and "agreement_with_simulation" in acc:
        ok, detail = _agreement_check(f"{rt.short} vs", acc["agreement_with_simulation"],
                                      acc.get("sqnr_db_vs_simulation"), r["simulated_by"], n_eval, random_weights)
        out.append(CheckResult(name=f"{r['name']}: deployed model agrees with the simulation", ok=ok, detail=detail))
    sp = (r["export"] or {}).get("sparsity") or {}
    if "expected_nm_layers" in sp:
        out.append(CheckResult(name=f"{r['name']}: {sp['pattern']} sparsity intact in the exported weights",
                               ok=sp["nm_layers"] >= sp["expected_nm_layers"],
                               detail=f"{sp['nm_layers']} weight tensors in the file follow {sp['pattern']} "
                                      f"(pruned: {sp['expected_nm_layers']}); {100 * sp['weight_sparsity']:.1f} % "
                                      "of all weights zero"))
    return out
