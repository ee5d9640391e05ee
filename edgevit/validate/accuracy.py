"""Accuracy and agreement metrics computed from logits (the same code for every runtime)."""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np


def collect_logits(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch_size: int,
                   on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """Run a runner over ``x`` in batches and stack the logits."""
    out = []
    for i in range(0, len(x), batch_size):
        out.append(run(x[i:i + batch_size]))
        if on_batch:
            on_batch(min(batch_size, len(x) - i))
    return np.concatenate(out)


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Fraction of rows whose label is among the k largest logits."""
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def compare_logits(logits: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """How close an artifact's logits are to the reference model's: agreement, cosine, SQNR, max diff."""
    agree = float((logits.argmax(1) == reference.argmax(1)).mean())
    a = logits.reshape(len(logits), -1).astype(np.float64)
    b = reference.reshape(len(reference), -1).astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    noise = ((a - b) ** 2).sum()
    sqnr = float(10 * np.log10((b ** 2).sum() / noise)) if noise > 0 else float("inf")
    return {"top1_agreement": agree, "cosine_mean": float(cos.mean()), "sqnr_db": sqnr,
            "max_abs_diff": float(np.abs(a - b).max())}


def changed_predictions(logits: np.ndarray, reference: np.ndarray, tie: float) -> dict:
    """Images whose top-1 differs from the reference's, and how many of them are near ties: the reference's
    logits of the two classes within ``tie`` of each other, where float rounding alone can swap them."""
    mine, ref = logits.argmax(1), reference.argmax(1)
    changed = np.flatnonzero(mine != ref)
    rows = reference[changed]
    margin = rows[np.arange(len(changed)), ref[changed]] - rows[np.arange(len(changed)), mine[changed]]
    return {"changed": int(len(changed)), "near_ties": int((margin <= tie).sum()), "tie": tie}


def accuracy_metrics(logits: np.ndarray, labels: np.ndarray | None,
                     reference: np.ndarray | None = None) -> dict[str, float | None]:
    """top-1/top-5 on labels (when there are labels) and agreement with a reference (when given)."""
    out: dict[str, float | None] = {"top1": None, "top5": None}
    if labels is not None:
        out["top1"] = topk_accuracy(logits, labels, 1)
        out["top5"] = topk_accuracy(logits, labels, 5)
    if reference is not None:
        out.update(compare_logits(logits, reference))
    return out


def map_labels(set_classes: Iterable[str] | None, set_labels: np.ndarray | None,
               model_labels: list[str]) -> tuple[np.ndarray | None, str]:
    """Map an ImageFolder's class indices to the model's output indices.

    By name when every folder name is a model label, else by position when the counts match,
    else no labels (accuracy cannot be computed; agreement still can).
    """
    if set_labels is None or set_classes is None:
        return None, "unlabeled image set: top-1 not computed"
    classes = list(set_classes)
    lookup = {name: i for i, name in enumerate(model_labels)}
    if all(c in lookup for c in classes):
        return np.asarray([lookup[c] for c in classes])[set_labels], "by class name"
    if len(classes) == len(model_labels):
        return set_labels, "by folder order (folder names differ from the model's labels)"
    return None, (f"{len(classes)} class folders do not match the model's {len(model_labels)} labels: "
                  "top-1 not computed")
