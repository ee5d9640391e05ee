"""Typed configuration of post-training quantization (what a recipe's ``quantize:`` section holds)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgevit.quant import nonuniform_search  # noqa: F401  (registers the built-in non-uniform quantizers)
from edgevit.quant.quantizers import post_activation_names, softmax_names


PLACEMENT_MODES = ("auto", "all")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WeightQuant(_Strict):
    """Weights: signed symmetric (zero point 0) per output channel by default."""

    bits: int = Field(8, ge=2, le=8)
    granularity: Literal["channel", "tensor"] = "channel"
    symmetric: bool = True
    method: Literal["minmax", "mse"] = "mse"
    overflow_fix: Literal["auto", "on", "off"] = Field(
        "auto", description="8-bit weights quantized with 7 bits (int8 codes -63..63): on an x86 CPU without VNNI, "
        "ONNX Runtime's and OpenVINO's int8 kernels add each pair of uint8 x int8 products in 16 bits, which "
        "saturates with 8-bit weights, so the INT8 file computes otherwise than its simulation. auto: when this "
        "machine's CPU is one and the recipe has an INT8 artifact for ONNX Runtime or OpenVINO (evaluated here; "
        "beside a CoreML int8 package, which stores 8-bit codes, those files alone take 7-bit weights); "
        "on: always; off: never")

    @field_validator("overflow_fix", mode="before")
    @classmethod
    def _yaml_on_off(cls, v):  # YAML reads a bare on / off as true / false
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v


class ActivationQuant(_Strict):
    """Activations: per tensor; unsigned asymmetric (ONNX Runtime's fast u8s8 path) by default."""

    bits: int = Field(8, ge=2, le=8)
    symmetric: bool = False
    method: Literal["minmax", "percentile", "mse", "fpcs"] = Field(
        "mse", description="range of each tensor: minmax, percentile, mse (of the tensor itself), or fpcs: "
        "AdaLog's progressive (scale, zero point) search against the consuming Linear's output error "
        "(Linear inputs; other sites use mse); fpcs needs symmetric: false")
    percentile: float = Field(99.99, gt=50, le=100)
    depthwise: Literal["tensor", "channel"] = Field(
        "tensor", description="inputs of depthwise convs: one range per tensor (method above), or one per channel, "
        "each clipped for its own squared error on the calibration images the searches keep. An integer "
        "depthwise conv reads one input channel per output channel, so a per-channel input scale joins its "
        "per-channel output rescale and the integer kernel is unchanged; exported as per-axis Q/DQ (ONNX Runtime "
        "runs that conv in float, TensorRT's lowering makes the input per tensor); the granularity search "
        "leaves these inputs as chosen")


class LayerSearch(_Strict):
    """Q-HyViT's per-layer choice of activation granularity and scheme (quantize.search)."""

    granularity: list[Literal["tensor", "channel"]] = Field(
        ["tensor", "channel"], min_length=1, description="candidate activation granularities of each Conv/Linear "
        "input: one scale per tensor, or one per channel (ONNX Runtime then runs that layer in float; "
        "TensorRT's lowering makes it per tensor)")
    symmetric: list[bool] = Field([False, True], min_length=1, description="candidate schemes: false = "
                                  "asymmetric uint8, true = symmetric int8 with zero point 0")
    bridges: bool = Field(True, description="for layers inside a bridge block (conv <-> attention), "
                          "measure the error at the block's output instead of the layer's")
    hessian: bool = Field(False, description="weight output errors by the squared gradients of "
                          "KL(quantized || float predictions)")


class Reconstruct(_Strict):
    """Block reconstruction of the weight rounding (BRECQ + AdaRound + QDrop), for low-bit weights."""

    images: int = Field(256, gt=0, description="calibration images used (the first ones of the calibration set)")
    iters: int = Field(500, gt=0, description="optimizer steps per block")
    batch: int = Field(32, gt=0)
    lr: float = Field(1e-2, gt=0, description="Adam's step on the rounding variables (AdaRound's 1e-3 "
                      "assumes 20,000 steps a block; a few hundred need more)")
    drop_prob: float = Field(0.5, ge=0, le=1, description="QDrop: probability that an activation element "
                             "skips its quantizer during reconstruction")
    learn_scale: bool = Field(False, description="also learn each layer's per-channel weight scales (LSQ-style); "
                              "measured no better on the built-in hybrid (BENCHMARKS.md)")
    learn_act_scale: bool = Field(False, description="also learn the step of every uniform activation quantizer "
                                  "inside each block (LSQ's gradient, zero points fixed), as BRECQ and QDrop do "
                                  "for low-bit activations; at W4A4 measured +0.3 points on the built-in ViT, +0.6 "
                                  "on EfficientViT-M0; on the MobileViT hybrid +0.1 to +0.2 with 1,024 calibration "
                                  "images and 8-bit depthwise convs, -0.2 to -0.7 otherwise (BENCHMARKS.md)")
    learn_bias: bool = Field(False, description="also learn the float bias of every layer inside each block (as "
                             "AdaQuant does), so that it absorbs the mean shift low-bit activations leave; at W4A4 "
                             "on the built-in hybrid +0.37 points with every conv at 4 bits, -0.09 with 8-bit "
                             "depthwise convs (means of three calibration samples); on the ViT +0.29 / -0.02 "
                             "(BENCHMARKS.md)")
    time_budget_s: float | None = Field(900, gt=0, description="wall-clock budget for all blocks (split evenly)")


class QuantConfig(_Strict):
    """Uniform post-training quantization of Linear/Conv inputs and weights and attention operands."""

    weights: WeightQuant = Field(default_factory=WeightQuant)
    activations: ActivationQuant = Field(default_factory=ActivationQuant)
    attention: bool = Field(True, description="quantize Q, K, V and the softmax output of attention")
    conv_output: bool = Field(False, description="also quantize Conv outputs and SiLU's sigmoid, so ONNX "
                              "Runtime runs the conv trunk as integer ops (QLinearConv, QLinearSigmoid, QLinearMul)")
    softmax: str = Field(
        "uniform", description="quantizer of the attention probabilities: uniform over [0, max], log2, "
        "log-sqrt2 (RepQ-ViT), adalog (searched log base, AdaLog) or tanq (tan compander, densest near 1); "
        "any registered post-softmax quantizer", json_schema_extra={"enum": softmax_names()})
    gelu: str = Field(
        "uniform", description="quantizer of the MLP's hidden activation (GELU/SiLU output, fc2 input); "
        "adalog shifts it by -min(act) to make it non-negative and folds the shift into fc2's bias",
        json_schema_extra={"enum": post_activation_names()})
    gelu_sites: Literal["mlp", "pointwise"] = Field(
        "mlp", description="where the gelu quantizer applies: mlp = the input of an MLP's second layer (timm Mlp "
        "and ConvMlp, LeViT's MLP); pointwise = also every 1x1 conv that reads an activation's output in a conv "
        "trunk (the projection of MobileNetV2 / MobileViT bottlenecks, the 1x1 after a MobileViT block's local "
        "conv, EfficientFormer(V2)'s and FastViT's conv MLPs); GELU-like activations only, not ReLU. On the built-in "
        "hybrid at W4A4 with AdaLog: -4.64 -> -3.95 points without reconstruction, no gain with it; at W8A8 the "
        "uniform quantizer sits closer to the float model (BENCHMARKS.md)")

    adalog_form: Literal["table", "float"] = Field(
        "table", description="how AdaLog quantizers dequantize in the simulation, the searches and the exact "
        "export: table (as deployed: code * q = 37 k + j, x = scale * T[j] / 2^k with the fixed-point table "
        "T that quant_params.json ships, rounded to 1 / (2^(bits+1) - 2)) or float (scale * 2^(-code q / 37), "
        "the paper's formula)")

    @field_validator("placement")
    @classmethod
    def _placement(cls, v: str) -> str:
        if v not in PLACEMENT_MODES and not v.endswith(".json"):
            raise ValueError("expected auto, all, or the path of a placement.json written by an earlier run")
        return v

    @field_validator("softmax", "gelu")
    @classmethod
    def _registered(cls, v: str, info) -> str:
        known = softmax_names() if info.field_name == "softmax" else post_activation_names()
        if v not in known:
            raise ValueError(f"Input should be {', '.join(repr(k) for k in known)}")
        return v
    layernorm: Literal["none", "reparam", "median", "mosf"] = Field(
        "none", description="post-LayerNorm scale reparameterization (RepQ-ViT): channel-wise ranges folded into "
        "the LayerNorm and the next Linear; target layer scale = mean (reparam), median, or mosf (mean of the "
        "channel scales within 3 MAD of the median)")
    layernorm_ranges: Literal["minmax", "percentile"] = Field(
        "minmax", description="the channel statistic of the LayerNorm reparameterization: minmax (each channel's "
        "min and max with 0 in the range) or percentile (RepQ-ViT's: the (1 - p, p) percentile pair, p in 0.999 / "
        "0.9999 / 0.99999, with the lowest squared error, free zero point)")
    search_images: int = Field(32, gt=0, description="calibration images whose activations feed the "
                               "output-error searches of the non-uniform quantizers")
    keep_8bit: list[str] = Field(default_factory=list, description="module names (fnmatch patterns) whose "
                                 "weight and input stay 8-bit when the rest is quantized lower (patch embedding, head)")
    keep_8bit_depthwise: bool = Field(False, description="depthwise convolutions (one group per channel) keep "
                                      "8-bit weights and inputs too: a k x k filter per channel (9 weights at 3 x 3) "
                                      "is little for a 4-bit grid, and they hold a small share of a hybrid's weights "
                                      "(0.4 % of the built-in MobileViT's, 1.8 % of EfficientViT-M0's)")
    search: LayerSearch | None = Field(None, description="per-layer search of activation granularity and "
                                       "scheme against layer / bridge-block output error (hybrid backbones)")
    reconstruct: Reconstruct | None = Field(None, description="block reconstruction of the weight rounding "
                                            "(bridge blocks and transformer blocks)")
    max_accuracy_drop: float | None = Field(
        None, ge=0, le=100, description="accuracy budget in top-1 points on the recipe's evaluation images: "
        "the most quantization-sensitive layers go back to float until the drop is within it")
    placement: str = Field(
        "auto", description="where INT8 runs in each artifact for a runtime this machine can time: auto (a region "
        "- conv unit, attention, MLP, bridge, head - stays INT8 only where the runtime's profile of the real "
        "exported graph says INT8 is faster there than float; the candidates are then timed interleaved with the "
        "FP32 graph, and the INT8 artifact ships only if faster than FP32; decisions in placement.json), all "
        "(every quantizer, no timing), or the path of a placement.json (replays its decisions exactly)")
    when_slower: Literal["fp32", "int8"] = Field(
        "fp32", description="with placement auto, when no INT8 placement beats FP32 on the device: ship the FP32 "
        "model under the INT8 artifact's name (fp32; the run's status is int8_not_faster, exit 3) or the fastest "
        "INT8 placement anyway (int8; its not-slower check fails, exit 1)")
    fold_bn: bool = True
    skip: list[str] = Field(default_factory=list, description="module names (fnmatch patterns) kept in float")
    calibration_batches: int | None = Field(None, gt=0, description="default: all calibration images")
