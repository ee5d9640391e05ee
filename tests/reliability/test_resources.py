"""Resources: a batch that cannot fit in memory stops the run with one line naming the step and the
setting to lower, and leaves no run folder."""
from __future__ import annotations

import resource
import subprocess
import sys

from conftest import ROOT


def _limit_address_space():
    # 40 GiB: far above what a run needs, far below the batch asked for below - so the allocation fails
    # the same way whatever the machine's overcommit policy
    resource.setrlimit(resource.RLIMIT_AS, (40 << 30, 40 << 30))


def test_a_batch_that_does_not_fit_is_one_clear_line(tmp_path):
    out = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, "-m", "edgevit.cli", "compress", "--recipe", "recipes/fp32_export.yaml", "--out", str(out),
         "--set", "validate.eval.num=50", "--set", "export=[export/onnx-fp32.yaml]",
         "--set", "validate.devices=[{name: big, warmup: 0, iters: 1, throughput_batch: 10000000}]"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, preexec_fn=_limit_address_space)
    assert res.returncode == 1, res.stderr[-800:]
    err = res.stderr.strip()
    assert "out of memory during validate" in err and "throughput_batch" in err and "Traceback" not in err
    assert not out.exists()
