"""Stages together on the built-in hybrid: every combination of {prune none / 2:4 / block} x {tokens none / ToMe} x
{quantize none / W8A8} through every exporter that applies here (CoreML and OpenVINO in the merged runs), with tiny
calibration. Each run must end with a run folder whose only failed checks, if any, are the accuracy budget (pruning
by magnitude costs the small hybrid many points: that is what the budget reports), INT8 timing on this shared
machine, or a top-1 agreement below 99 % on these 50 images whose logits still agree with the simulation at >= 30
dB (one near-tie flip is 2 %: OpenVINO runs the merged INT8 hybrid at 32 dB from its simulation, ORT at 36 dB; a
wrong lowering shows as 24 dB or less)."""
from __future__ import annotations

import itertools
import json

import pytest

from conftest import CALIB_DIR, ROOT
from edgevit.exporters.coreml import unavailable as coreml_unavailable
from edgevit.pipeline import run
from edgevit.recipe import load_recipe
from edgevit.validate.latency import int8_dot_saturates

PRUNE = {"none": None, "nm": "{nm: {n: 2, m: 4, criterion: magnitude}, images: 16}",
         "block": "{block: {sparsity: 0.3, block: [16, 16], criterion: magnitude, allocation: uniform}, images: 16}"}
TOKENS = {"none": None, "tome": "{method: tome, r: 4}"}
QUANT = ("none", "w8a8")


def _exports(prune: str, tokens: str, quant: str) -> list[str]:
    out = ["onnx-fp32"] + (["onnx-int8", "onnx-int8-tensorrt"] if quant == "w8a8" else [])
    # CoreML and OpenVINO conversions are most of each run's time: they go with token merging, whose graphs
    # CoreML broke on; without merging the same conversions run in test_coreml, test_openvino and hybrid_full
    if tokens != "none":
        out += ["openvino-int8"] if quant == "w8a8" else ["openvino-fp32"]
    if coreml_unavailable() is None and tokens != "none":
        out += ["coreml-w8a8"] if quant == "w8a8" else ["coreml-fp16"]
        out += ["coreml-sparse"] if prune != "none" else []
    return [f"export/{e}.yaml" for e in out]


@pytest.mark.parametrize("prune, tokens, quant", list(itertools.product(PRUNE, TOKENS, QUANT)))
def test_stages_chain_through_every_exporter(prune, tokens, quant, tmp_path):
    sets = [f"calibration.path={CALIB_DIR}", "calibration.num=16", "validate.eval.num=50", "validate.devices=[]",
            "quantize.placement=all", f"export=[{','.join(_exports(prune, tokens, quant))}]"]
    sets += [f"prune={PRUNE[prune]}"] if PRUNE[prune] else []
    sets += [f"tokens={TOKENS[tokens]}"] if TOKENS[tokens] else []
    sets += [] if quant == "w8a8" else ["quantize=null"]
    result = run(load_recipe(str(ROOT / "recipes" / "int8_ptq.yaml"), sets), tmp_path / "run")
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    rows = {r["name"]: r for r in report["results"]}

    def tolerated(c: dict) -> bool:
        if c.get("kind") == "budget" or " not slower than " in c["name"]:
            return True
        acc = rows[c["name"].split(":")[0]].get("accuracy") or {}
        # near-ties of a tiny calibration; or, on an x86 CPU without VNNI, 8-bit weights the runtime's int8 kernels
        # saturate on (kept at 8 bits here because the CoreML int8 package shares the plan): the run names the cause
        return "agrees with the simulation" in c["name"] and (acc.get("sqnr_db_vs_simulation", 0) >= 30 or (
            int8_dot_saturates() and "saturate" in c["detail"]))

    failed = [c for c in report["checks"] if not c["ok"]]
    assert all(tolerated(c) for c in failed), failed
    assert result.report["status"] in ("ok", "over_budget", "failed_checks")
    assert {e.rsplit("/", 1)[1].removesuffix(".yaml") for e in _exports(prune, tokens, quant)} <= set(rows)
    if prune != "none":  # the budget names the stage that spent most of it
        budget = [c for c in report["checks"] if c.get("kind") == "budget"]
        assert budget and all("pruning" in c["detail"] for c in budget)
