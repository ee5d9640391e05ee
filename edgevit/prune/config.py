"""Typed configuration of pruning (what a recipe's ``prune:`` section holds)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NMSparsity(_Strict):
    """n:m semi-structured sparsity along the input dimension (2:4: NVIDIA sparse tensor cores)."""

    n: int = Field(2, gt=0, description="weights kept (at most n non-zeros) in every group of m consecutive input "
                   "channels")
    m: int = Field(4, gt=1)
    criterion: Literal["magnitude", "sparsegpt"] = Field(
        "sparsegpt", description="magnitude (no data, NVIDIA ASP) or sparsegpt (second-order one-shot: "
        "Hessian of the calibration inputs, OBS weight updates, layer by layer)")
    max_disagreement: float | None = Field(
        None, ge=0, le=100, description="prune only the layers that pay: layers in order of gain (what the "
        "export targets get: TensorRT multiply-accumulates, CoreML sparse weights) per cost (KL of the logits "
        "when the layer alone is pruned), each kept while the pruned model's top-1 differs from the unpruned "
        "model's on at most this percent of the calibration images (which bounds the top-1 drop there); "
        "None: every eligible layer")

    @model_validator(mode="after")
    def _n_below_m(self) -> "NMSparsity":
        if self.n >= self.m:
            raise ValueError(f"n ({self.n}) must be smaller than m ({self.m})")
        return self


class BlockSparsity(_Strict):
    """Block pruning (LPViT): blocks of a Linear / 1x1-conv weight zeroed, per-layer sparsity allocated
    under a global budget from each layer's measured output distortion."""

    sparsity: float = Field(0.5, gt=0, lt=1, description="fraction of the prunable weights removed overall")
    block: list[int] | Literal["row", "column"] = Field(
        [16, 16], description="[rows, columns] of a block of the [out, in] weight, or row (whole output "
        "units) or column (whole input channels)")
    criterion: Literal["magnitude", "obs"] = Field(
        "obs", description="block score: sum of w^2 (magnitude) or the OBS saliency w^2 / [H^-1]_jj, with OBS "
        "compensation of the kept weights")
    allocation: Literal["distortion", "uniform"] = Field(
        "distortion", description="per-layer sparsity: from measured output-distortion curves under the global "
        "budget (LPViT), or the same for every layer")
    min_layer_sparsity: float = Field(0.05, ge=0, lt=1)
    max_layer_sparsity: float = Field(0.9, gt=0, le=1)

    @field_validator("block")
    @classmethod
    def _two_sides(cls, v):
        if isinstance(v, list) and (len(v) != 2 or min(v) < 1):
            raise ValueError("block is [rows, columns] with both >= 1, or 'row' / 'column'")
        return v


class StructuredPruning(_Strict):
    """Whole MLP hidden units and attention heads removed; the layers are physically shrunk."""

    mlp_hidden: float = Field(0.3, ge=0, lt=1, description="fraction of every MLP's hidden units removed (timm Mlp, "
                              "TinyViT's NormMlp, LeViT's Linear + BatchNorm MLP)")
    heads: float = Field(0.0, ge=0, lt=1, description="fraction of every attention's heads removed")
    conv_hidden: float = Field(0.0, ge=0, lt=1, description="fraction of the hidden channels of every conv MLP / "
                               "inverted residual (1x1 expand -> [depthwise] -> project) removed: MobileViT(V2), "
                               "EfficientViT, EfficientFormer(V2) and FastViT conv MLPs")
    criterion: Literal["magnitude", "obs"] = Field(
        "obs", description="unit score: weight norm (magnitude) or the OBS saliency of the unit's outgoing "
        "weights; obs also refits the next layer to the removed units' contribution (least squares)")
    multiple_of: int = Field(8, gt=0, description="kept hidden units rounded to a multiple of this")


class PruneReconstruction(_Strict):
    """Block reconstruction after one-shot pruning (edgevit.prune.reconstruct): each block holding pruned
    layers is fitted to the unpruned block's output on the calibration images, the pruned weights fixed at
    zero."""

    iters: int = Field(500, gt=0, description="Adam steps per block")
    lr: float = Field(1e-3, gt=0)
    batch: int = Field(32, gt=0)


class PruneConfig(_Strict):
    """One pruning method, applied once before quantization."""

    nm: NMSparsity | None = None
    block: BlockSparsity | None = None
    structured: StructuredPruning | None = None
    images: int = Field(128, gt=0, description="calibration images used (the first ones of the calibration set)")
    damp: float = Field(0.01, gt=0, description="Hessian damping, as a fraction of its mean diagonal")
    reconstruct: PruneReconstruction | None = Field(
        None, description="after n:m or block pruning, fit each pruned block to the unpruned block's output on "
        "the calibration images with the zeros fixed (null: one-shot weights as they are)")
    exclude: list[str] = Field(["head*", "*.head*"], description="module names (fnmatch patterns) never pruned "
                               "(the classifier by default)")

    @model_validator(mode="after")
    def _one_method(self) -> "PruneConfig":
        chosen = [k for k in ("nm", "block", "structured") if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise ValueError("give exactly one of nm, block or structured "
                             f"(got {', '.join(chosen) if chosen else 'none'})")
        if self.reconstruct is not None and self.structured is not None:
            raise ValueError("reconstruct applies to nm and block pruning (structured pruning refits the next "
                             "layer itself)")
        return self

    @property
    def method(self) -> str:
        return next(k for k in ("nm", "block", "structured") if getattr(self, k) is not None)
