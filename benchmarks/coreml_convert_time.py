"""CoreML conversion time with coremltools' whole-program check run once per pass pipeline (edgevit's exporter)
against after every graph pass (coremltools' own behaviour): one `edgevit compress` of the built-in hybrid with
2:4 pruning, ToMe and W8A8 exporting a W8A8 and a sparse FP16 CoreML package (the chain of
`tests/test_matrix.py`), the two forms alternating run by run; each package's conversion is timed.

    .venv/bin/python benchmarks/coreml_convert_time.py [--rounds 2]

Also checks that both forms write the same bytes. Writes benchmarks/results/coreml_convert_time.json.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    import edgevit.exporters.coreml as coreml
    from edgevit.pipeline import run
    from edgevit.recipe import load_recipe

    once, export = coreml._validated_once_per_pipeline, coreml.export_coreml
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
            for form in ("once per pipeline", "after every pass"):
                coreml._validated_once_per_pipeline = once if form == "once per pipeline" else contextlib.nullcontext
                timings.clear()
                folder = Path(tmp) / f"{r}-{form.split()[0]}"
                t = time.perf_counter()
                run(load_recipe(str(ROOT / "recipes" / "int8_ptq.yaml"), sets), folder)
                row = {"form": form, "run_s": round(time.perf_counter() - t, 1),
                       "convert_s": {name: round(s, 2) for name, s in timings}}
                out["rounds"].append(row)
                print(row, flush=True)
                packages[form] = {str(p.relative_to(folder)): p.read_bytes()
                                  for p in sorted(folder.glob("*.mlpackage/**/*")) if p.is_file()}
    out["same_bytes"] = packages["once per pipeline"] == packages["after every pass"]
    for form in ("once per pipeline", "after every pass"):
        rows = [r for r in out["rounds"] if r["form"] == form]
        out[form] = {name: statistics.median(r["convert_s"][name] for r in rows) for name in rows[0]["convert_s"]}
    print(json.dumps({k: v for k, v in out.items() if k != "rounds"}, indent=1))
    (ROOT / "benchmarks" / "results" / "coreml_convert_time.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
