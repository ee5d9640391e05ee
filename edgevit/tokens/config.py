"""Typed configuration of token reduction (what a recipe's ``tokens:`` section holds)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TokenConfig(BaseModel):
    """Training-free token reduction in the attention blocks: ToMe merging or EViT pruning.

    The number of tokens each block keeps is fixed when the model is compressed (static shapes), so
    the exported graph has one shape per block and runs in ONNX Runtime, TensorRT and CoreML.
    """

    model_config = ConfigDict(extra="forbid")

    method: Literal["tome", "evit"] = Field("tome", description="tome: bipartite soft matching, similar tokens "
                                            "averaged (ToMe); evit: keep the most attended tokens, fuse the rest")
    r: int | list[int] = Field(8, description="tome: tokens merged in each block (one number for every "
                               "block, or a list with one entry per block)")
    schedule: Literal["constant", "decreasing"] = Field(
        "constant", description="tome with one r: the same r in every block, or decreasing from 2r to 0 over "
        "the blocks (the same total, more merging early where tokens are redundant)")
    proportional_attention: bool = Field(True, description="tome: add log(size) to the attention logits so a "
                                         "merged token weighs as much as the tokens it stands for")
    keep_rate: float = Field(0.7, gt=0, le=1, description="evit: fraction of the (non-prefix) tokens kept at "
                             "each pruning block")
    evit_blocks: list[int] | None = Field(None, description="evit: indices of the blocks (in each stage) that "
                                          "prune; default the blocks at 1/4, 1/2 and 3/4 of the depth")
    fuse: bool = Field(True, description="evit: fuse the pruned tokens into one token (attention-weighted sum)")
    score: Literal["auto", "cls", "received"] = Field(
        "auto", description="evit: rank tokens by the class token's attention (cls) or by the attention each "
        "token receives (received, for models without a class token); auto picks cls when there is one")
    head_only: bool = Field(True, description="a ViT whose head reads the class token: its last block computes "
                            "the attention output and MLP for the class/distillation tokens alone (exact: no logit "
                            "changes; the other tokens' outputs were never read)")
    stages: list[str] = Field(["*"], min_length=1, description="which attention stages (module names, fnmatch "
                              "patterns) reduce tokens")

    min_saving: float | None = Field(
        0.01, ge=0, lt=1, description="a stage reduces tokens only if that alone saves at least this fraction of "
        "the model's FLOPs per image; null: every matching stage")
    min_time_saving: float | None = Field(
        0.03, ge=0, lt=1, description="a stage reduces tokens only if its FP32 artifact, reduced alone, runs at "
        "least this fraction faster than the unreduced model's on the run's target device (the first SSH device "
        "profile, else the first local one), at batch 1 or at the profile's throughput batch (time_at), and all "
        "the reduced stages together must too; null: not timed (FLOPs decide). Without a device profile the "
        "report says it was not timed")
    time_at: Literal["either", "batch1", "throughput"] = Field(
        "either", description="which time min_time_saving is judged on: batch-1 latency, throughput at the device "
        "profile's throughput_batch, or either (merging often pays in throughput and not at batch 1)")
    max_disagreement: float | None = Field(
        None, ge=0, le=100, description="stages taken in order of FLOP saving per cost (logit KL) while the "
        "reduced model's top-1 differs from the unreduced model's on at most this percent of the calibration "
        "images; null: every stage that saves enough")

    @model_validator(mode="after")
    def _check(self) -> TokenConfig:
        if any(v < 0 for v in (self.r if isinstance(self.r, list) else [self.r])):
            raise ValueError("r: tokens merged per block must be >= 0")
        return self

    def merges(self, depth: int) -> list[int]:
        """ToMe: tokens merged in each of ``depth`` blocks."""
        if isinstance(self.r, list):
            if len(self.r) != depth:
                raise ValueError(f"tokens.r lists {len(self.r)} values but the stage has {depth} blocks")
            return list(self.r)
        if self.schedule == "constant" or depth == 1:
            return [self.r] * depth
        return [round(2 * self.r * (1 - i / (depth - 1))) for i in range(depth)]

    def pruning_blocks(self, depth: int) -> list[int]:
        """EViT: indices of the blocks that prune."""
        if self.evit_blocks is not None:
            bad = [i for i in self.evit_blocks if not 0 <= i < depth]
            if bad:
                raise ValueError(f"tokens.evit_blocks {bad} outside the stage's {depth} blocks")
            return sorted(set(self.evit_blocks))
        return sorted({max(depth * k // 4, 0) for k in (1, 2, 3)})
