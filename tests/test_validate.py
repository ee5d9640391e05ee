"""Metrics, label mapping and latency summaries."""
from __future__ import annotations

import numpy as np

from edgevit.recipe import DeviceConfig
from edgevit.validate import compare_logits, map_labels, measure, topk_accuracy
from edgevit.validate.latency import summarize


def test_topk():
    logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    labels = np.array([1, 1, 0])
    assert topk_accuracy(logits, labels, 1) == 1 / 3
    assert topk_accuracy(logits, labels, 2) == 2 / 3


def test_compare_logits_detects_differences():
    ref = np.random.default_rng(0).standard_normal((50, 10))
    same = compare_logits(ref.copy(), ref)
    assert same["top1_agreement"] == 1.0 and same["max_abs_diff"] == 0.0
    noisy = compare_logits(ref + 0.5 * np.random.default_rng(1).standard_normal(ref.shape), ref)
    assert noisy["top1_agreement"] < 1.0 and noisy["cosine_mean"] < 0.99 and 0 < noisy["sqnr_db"] < 20


def test_map_labels_by_name_and_by_order():
    y = np.array([0, 1, 1])
    mapped, how = map_labels(["cat", "dog"], y, ["dog", "cat"])
    assert mapped.tolist() == [1, 0, 0] and how == "by class name"
    mapped, how = map_labels(["a", "b"], y, ["dog", "cat"])
    assert mapped.tolist() == [0, 1, 1] and "order" in how
    mapped, _ = map_labels(["a", "b", "c"], y, ["dog", "cat"])
    assert mapped is None


def test_summarize_and_measure():
    s = summarize(np.array([1.0, 2.0, 3.0, 4.0, 100.0]), batch=4)
    assert s["median_ms"] == 3.0 and s["p90_ms"] > 4.0 and s["images_per_s"] == 4e3 / 3.0
    calls = []
    res = measure(lambda x: calls.append(len(x)), np.zeros((3, 3, 8, 8), np.float32),
                  DeviceConfig(warmup=2, iters=10, throughput_batch=7))
    assert res["batch1"]["runs"] == 10 and res["throughput"]["batch"] == 7
    assert calls.count(1) == 12 and calls.count(7) == res["throughput"]["runs"] + 1


def test_interleaved_timing_keeps_the_ratio_and_the_counts():
    """Two runners, one sleeping twice as long: every runner gets its iterations, the rounds alternate
    between them, and the measured ratio is the real one."""
    import time

    from edgevit.validate.latency import measure_interleaved, timed_iterations

    order = []

    def sleeper(name, ms):
        def run(x):
            order.append(name)
            time.sleep(ms * len(x) / 1e3)
        return run

    dev = DeviceConfig(warmup=1, iters=12, throughput_batch=2)
    ticks = []
    out = measure_interleaved({"fast": sleeper("fast", 2), "slow": sleeper("slow", 4)},
                              np.zeros((2, 3, 4, 4), np.float32), dev, lambda: ticks.append(1))
    assert len(ticks) == 2 * timed_iterations(dev)
    for k in ("fast", "slow"):
        assert out[k]["batch1"]["runs"] == 12 and out[k]["throughput"]["runs"] == 5 and out[k]["interleaved_with"] == 2
    ratio = out["slow"]["batch1"]["median_ms"] / out["fast"]["batch1"]["median_ms"]
    assert 1.6 < ratio < 2.4
    timed = order[2 * (1 + 1):]  # after the warm-up calls
    switches = sum(a != b for a, b in zip(timed, timed[1:]))
    assert switches >= 2 * 5 - 1  # alternated every round, not one runner after the other
