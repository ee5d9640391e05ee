"""CoreML export time of edgevit's exporter against one of its choices undone: coremltools' whole-program check
after every graph pass instead of once per pass pipeline (``--against every-pass``), or torch's trace check, which
traces and runs the model a second time (``--against trace-check``). One `edgevit compress` of the built-in hybrid
with 2:4 pruning, ToMe and W8A8 exporting a W8A8 and a sparse FP16 CoreML package (the chain of
`tests/test_matrix.py`), the two forms alternating run by run; each package's export is timed.

    .venv/bin/python benchmarks/coreml_convert_time.py [--rounds 2] [--against every-pass|trace-check]

Also checks that both forms write the same bytes. Writes benchmarks/results/coreml_convert_time.json
(``coreml_trace_time.json`` for ``--against trace-check``).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPORTS = ["export/onnx-fp32.yaml", "export/coreml-w8a8.yaml", "export/coreml-sparse.yaml"]


@contextlib.contextmanager
def _checked_after_every_pass(coreml):
    """coremltools' own whole-program check after every graph pass, not edgevit's once per pass pipeline."""
    once = coreml._validated_once_per_pipeline
    coreml._validated_once_per_pipeline = contextlib.nullcontext
    try:
        yield
    finally:
        coreml._validated_once_per_pipeline = once


@contextlib.contextmanager
def _trace_checked(coreml):
    """torch.jit.trace with its default check: the model traced and run again, outputs compared."""
    import torch

    trace = torch.jit.trace
    torch.jit.trace = lambda *a, **k: trace(*a, **(k | {"check_trace": True}))
    try:
        yield
    finally:
        torch.jit.trace = trace


# --against: (the form's name, what undoes edgevit's choice, the results file)
AGAINST = {"every-pass": ("after every pass", _checked_after_every_pass, "coreml_convert_time"),
           "trace-check": ("trace checked", _trace_checked, "coreml_trace_time")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--against", choices=sorted(AGAINST), default="every-pass")
    args = ap.parse_args()
    import edgevit.exporters.coreml as coreml
    from edgevit.pipeline import run
    from edgevit.recipe import load_recipe

    export = coreml.export_coreml
    other, undone, results = AGAINST[args.against]
    timings: list[tuple[str, float]] = []

    def timed(model, info, path, *a, **k):
        t = time.perf_counter()
        facts = export(model, info, path, *a, **k)
        timings.append((path.name, time.perf_counter() - t))
        return facts

    coreml.export_coreml = timed
    sets = ["calibration.num=16", "validate.eval.num=50", "validate.devices=[]", "quantize.placement=all",
            f"export=[{','.join(EXPORTS)}]", "prune={nm: {n: 2, m: 4, criterion: magnitude}, images: 16}",
            "tokens={method: tome, r: 4}"]
    out: dict = {"date": datetime.date.today().isoformat(), "rounds": []}
    packages: dict[str, dict[str, bytes]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for form in ("edgevit", other):
                timings.clear()
                folder = Path(tmp) / f"{r}-{form.split()[0]}"
                t = time.perf_counter()
                with undone(coreml) if form == other else contextlib.nullcontext():
                    run(load_recipe(str(ROOT / "recipes" / "int8_ptq.yaml"), sets), folder)
                row = {"form": form, "run_s": round(time.perf_counter() - t, 1),
                       "convert_s": {name: round(s, 2) for name, s in timings}}
                out["rounds"].append(row)
                print(row, flush=True)
                packages[form] = {str(p.relative_to(folder)): p.read_bytes()
                                  for p in sorted(folder.glob("*.mlpackage/**/*")) if p.is_file()}
    out["same_bytes"] = packages["edgevit"] == packages[other]
    for form in ("edgevit", other):
        rows = [r for r in out["rounds"] if r["form"] == form]
        out[form] = {name: statistics.median(r["convert_s"][name] for r in rows) for name in rows[0]["convert_s"]}
    print(json.dumps({k: v for k, v in out.items() if k != "rounds"}, indent=1))
    (ROOT / "benchmarks" / "results" / f"{results}.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
