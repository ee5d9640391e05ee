"""Runners, accuracy and latency: how artifacts are measured on their real runtimes."""
from edgevit.validate.accuracy import accuracy_metrics, collect_logits, compare_logits, map_labels, topk_accuracy
from edgevit.validate.latency import measure
from edgevit.validate.runners import OrtRunner, TorchRunner

__all__ = ["OrtRunner", "TorchRunner", "accuracy_metrics", "collect_logits", "compare_logits",
           "map_labels", "measure", "topk_accuracy"]
