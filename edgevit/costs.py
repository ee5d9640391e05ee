"""What a change to the float model costs on calibration images, measured against the model before it:
top-1 disagreement (an upper bound of the top-1 drop on the same images: an image can only lose a correct
answer by changing its answer) and the KL divergence of the class probabilities (smooth, for ranking)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def outputs(model: nn.Module, x: torch.Tensor, batch: int = 128) -> torch.Tensor:
    """The model's logits on ``x``, in batches."""
    return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])


def disagreement(logits: torch.Tensor, ref: torch.Tensor) -> float:
    """Percent of images whose top-1 class differs from ``ref``'s."""
    return 100.0 * float((logits.argmax(1) != ref.argmax(1)).float().mean())


def kl_cost(logits: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean KL(ref || logits) of the class probabilities (0 when the outputs are equal)."""
    return max(float(F.kl_div(logits.log_softmax(1), ref.log_softmax(1), log_target=True,
                              reduction="batchmean")), 0.0)
