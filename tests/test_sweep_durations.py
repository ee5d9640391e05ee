"""How long a sweep's runs will take, from earlier sweeps' durations, and the longest-first order a parallel
executor starts them in (the Ray test checks that Ray starts them in that order)."""
from __future__ import annotations

import json
import math

import pytest

from edgevit.sweeps.durations import DurationHistory, Estimate, history_path, longest_first


def labels(recipe: str, model: str, device: str = "cpu") -> dict[str, str]:
    return {"recipe": recipe, "model": model, "device": device}


def test_a_run_seen_before_is_estimated_by_the_median_of_its_last_three_durations(tmp_path):
    h = DurationHistory(tmp_path / "d.json")
    for s in (100.0, 10.0, 30.0, 20.0):  # the first is dropped: only the last three count
        h.record("a", labels("int8_ptq", "vit"), s)
    assert h.estimate("a", labels("int8_ptq", "vit")) == Estimate(20.0, "run")
    saved = json.loads((tmp_path / "d.json").read_text())["runs"]["a"]
    assert saved["seconds"] == [10.0, 30.0, 20.0] and saved["recipe"] == "int8_ptq" and saved["model"] == "vit"
    assert DurationHistory(tmp_path / "d.json").estimate("a", {}) == Estimate(20.0, "run")  # read back


def test_a_new_run_is_estimated_from_the_recipe_model_and_device_it_shares_with_earlier_runs(tmp_path):
    """Geometric means: the typical run times, per label it shares, that label's runs over the typical run; a
    new --set value of a known recipe on a known model (a new identity) gets both factors."""
    h = DurationHistory(tmp_path / "d.json")
    h.record("r1-m1", labels("w8a8", "small"), 10.0)
    h.record("r1-m2", labels("w8a8", "big"), 40.0)
    h.record("r2-m1", labels("w4a4_recon", "small"), 500.0)
    typical = (10 * 40 * 500) ** (1 / 3)
    est = h.estimate("r2-m2", labels("w4a4_recon", "big"))
    assert est.source == "similar" and est.seconds == pytest.approx(500 * 40 / typical, abs=0.1)
    # the same device everywhere contributes no factor; a new device alone is not enough to estimate
    assert h.estimate("x", labels("w8a8", "new-model")).seconds == pytest.approx(math.sqrt(10 * 40), abs=0.1)
    assert h.estimate("x", labels("new-recipe", "new-model")) == Estimate(None, "none")
    assert h.estimate("x", labels("new-recipe", "new-model", "other")) == Estimate(None, "none")
    assert DurationHistory(tmp_path / "none.json").estimate("x", labels("w8a8", "small")) == Estimate(None, "none")


def test_unknown_runs_start_first_then_the_longest(tmp_path):
    est = {"a": Estimate(10, "run"), "b": Estimate(None, "none"), "c": Estimate(300, "similar"),
           "d": Estimate(10, "run"), "e": Estimate(None, "none"), "f": Estimate(40, "run")}
    assert longest_first(list(est), est) == ["b", "e", "c", "f", "a", "d"]


def test_the_history_merges_concurrent_sweeps_survives_damage_and_can_be_switched_off(tmp_path, monkeypatch):
    path = tmp_path / "cache" / "d.json"
    one, two = DurationHistory(path), DurationHistory(path)  # two sweeps that read the file at the same time
    one.record("a", labels("r", "m"), 5.0)
    two.record("b", labels("r", "m"), 7.0)
    assert set(DurationHistory(path).runs) == {"a", "b"}
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    path.write_text("{not json")
    assert DurationHistory(path).runs == {}
    monkeypatch.setenv("EDGEVIT_SWEEP_HISTORY", "off")
    assert history_path() is None
    off = DurationHistory(history_path())
    off.record("a", labels("r", "m"), 5.0)
    assert off.estimate("a", labels("r", "m")) == Estimate(None, "none")
    monkeypatch.delenv("EDGEVIT_SWEEP_HISTORY")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert history_path() == tmp_path / "xdg" / "edgevit" / "sweep-durations.json"


def test_a_history_that_cannot_be_written_does_not_stop_the_sweep(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    h = DurationHistory(blocker / "d.json")  # its folder cannot be made: a file is in the way
    h.record("a", labels("r", "m"), 5.0)
    assert "sweep durations not saved" in caplog.text
