"""What a token reduction did: tokens entering each block (measured) and FLOPs before and after."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from edgevit.tokens.patch import GridTokenAttention, TokenBlock, TokenStage


@torch.no_grad()
def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward pass on ``x`` (matmuls and convolutions, as torch's flop counter counts).
    timm's fused attention is opened up while counting: the counter does not see the CPU SDPA kernel."""
    fused = [m for m in model.modules() if getattr(m, "fused_attn", False)]
    for m in fused:
        m.fused_attn = False
    try:
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        for m in fused:
            m.fused_attn = True
    return int(counter.get_total_flops())


@torch.no_grad()
def summarize(dense: nn.Module, reduced: nn.Module, x: torch.Tensor) -> dict:
    """Per reducing stage, the tokens entering each block and leaving the stage, measured on ``x``
    (one image), and the FLOPs per image of both models. EfficientFormerV2 stages list the tokens each
    attention runs over (the blocks themselves see the whole map). ``warning`` when nothing is saved."""
    seen: dict[str, list[int]] = {}
    hooks = []
    for name, stage in reduced.named_modules():
        if isinstance(stage, TokenStage):
            seen[name] = []
            for block in stage.children():
                if isinstance(block, TokenBlock):
                    hooks.append(block.register_forward_pre_hook(
                        lambda m, args, name=name: seen[name].append(int(args[0].shape[1]))))
    for name, m in reduced.named_modules():
        if isinstance(m, GridTokenAttention):  # merged inside the attention, unmerged right after it
            seen.setdefault(name.rsplit(".", 2)[0], []).append(m.tokens[1])
    try:
        reduced(x[:1])
    finally:
        for h in hooks:
            h.remove()
    before, after = count_flops(dense, x[:1]), count_flops(reduced, x[:1])
    facts = {"tokens_per_block": seen, "flops": before, "flops_reduced": after,
             "flops_ratio": round(after / before, 4) if before else None}
    if after >= before:
        facts["warning"] = ("the reduced model needs more FLOPs than the original: its attention runs over too few "
                            "tokens for merging to pay (the matching and the one-hot matmuls cost more than the "
                            "attention saves); reduce tokens in larger-token stages or leave tokens off")
    return facts
