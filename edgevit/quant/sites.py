"""Quantization sites: where activations and weights are quantized, as modules patched into a model.

* ``ActQuant``: one activation site. It observes during calibration and fake-quantizes afterwards
  with ``torch.fake_quantize_per_tensor_affine``, which the ONNX exporter lowers to a
  QuantizeLinear/DequantizeLinear pair, so simulation and export share one graph.
* ``QuantLinear`` / ``QuantConv2d``: a Linear/Conv2d whose input is an ``ActQuant`` site and whose
  weight is fake-quantized per output channel.
* ``QuantAttention``: attention run unfused (softmax visible) through its family adapter
  (``edgevit.models.families``: timm ``Attention`` of ViT and MobileViT, MobileViTV2's separable
  attention, EfficientViT's cascaded group attention, the biased token attention of LeViT (and its
  downsampling attention), TinyViT and EfficientFormer) with sites on Q, K, V and the attention
  probabilities, the operands of the two attention matmuls (separable attention has no Q @ K^T: its
  sites are the probabilities and the keys).
"""
from __future__ import annotations

import fnmatch
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from edgevit.models.families import attention_family
from edgevit.quant.observers import ChannelRangeObserver, HistogramObserver

# Sites that may get one scale per channel: Conv inputs (axis 1). A Linear's MatMul reduces over its
# input channels, so per-channel input scales cannot leave the integer accumulator (and ONNX Runtime's
# MatMulIntegerToFloat fusion rejects a per-channel zero point at run time).
CHANNEL_AXIS = {"conv_input": 1}
from edgevit.quant.uniform import QParams


class ActQuant(nn.Module):
    """An activation quantization site.

    Modes: ``off``; ``observe`` (stream a histogram); ``capture`` (keep the tensors, for the
    output-error searches of non-uniform quantizers); ``quant`` (fake-quantize with ``qparams``, or
    with ``nonuniform`` when the plan gives this site a log/tan quantizer).
    """

    def __init__(self, name: str, kind: str):
        super().__init__()
        self.site = name
        self.kind = kind
        self.mode = "off"
        self.observer: HistogramObserver | None = None
        self.channel_observer: ChannelRangeObserver | None = None
        self.samples: list[torch.Tensor] = []
        self.qparams: QParams | None = None
        self.nonuniform = None  # LogQuantizer | TanQuantizer
        self.shift = 0.0  # post-activation sites: -min(act), what a log quantizer adds before quantizing
        self.drop_prob = 0.0  # set during block reconstruction (QDrop), in training mode only
        self.drop_generator: torch.Generator | None = None  # the reconstruction's seeded stream for QDrop's masks
        self.scale_gain: torch.Tensor | None = None  # block reconstruction: log of the learned step's ratio

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "observe":
            if self.observer is None:
                self.observer = HistogramObserver()
                axis = CHANNEL_AXIS.get(self.kind)
                self.channel_observer = ChannelRangeObserver(axis) if axis is not None and x.dim() > 1 else None
            self.observer.update(x)
            if self.channel_observer is not None:
                self.channel_observer.update(x)
            return x
        if self.mode == "capture":
            self.samples.append(x.detach().clone())
            return x
        # a shifted (post-GELU) site passes on x + shift: apply_plan folded -W shift into the consumer's bias,
        # so a site switched off (a search's float reference) still adds the shift its consumer expects
        shift = getattr(self.nonuniform, "shift", 0.0)
        if self.mode != "quant":
            return x + shift if shift else x
        if self.nonuniform is not None:
            x = x + shift if shift else x
            if x.requires_grad and not torch.jit.is_tracing():
                # straight-through, as the uniform sites: the log/tan codes are rounded, so without it no gradient
                # reaches the layers before the site (block reconstruction's q/k and fc1 rounding learned nothing)
                return self.nonuniform.fake_quant(x.detach()) + (x - x.detach())
            return self.nonuniform.fake_quant(x)
        if self.qparams is not None:
            y = fake_quant_activation(x, self.qparams) if self.scale_gain is None else \
                lsq_fake_quant(x, self.qparams, self.scale_gain)
            if self.drop_prob:  # QDrop (set during block reconstruction only): elements keep their float value
                keep = torch.rand(x.shape, generator=self.drop_generator, dtype=x.dtype, device=x.device)
                return torch.where(keep < self.drop_prob, x, y)
            return y
        return x

    def extra_repr(self) -> str:
        return f"site={self.site!r}, kind={self.kind}, mode={self.mode}"


def _container(q: QParams) -> tuple[int, int]:
    """The 8-bit code range that holds a quantizer's codes (ONNX QuantizeLinear is 8-bit)."""
    return (-128, 127) if q.symmetric else (0, 255)


class _QDQ(torch.autograd.Function):
    """QuantizeLinear -> DequantizeLinear, computed as ONNX Runtime computes it: round(x / s) with a
    division, half to even, then saturate. (torch's fake-quant op multiplies by 1/s, which rounds
    differently at some code boundaries; at 4 bits such flips show in the logits.) Per-tensor
    (float scale) or per channel (1-d scale along ``axis``). The backward is the straight-through
    estimator, for the Hessian-weighted searches."""

    # zero_point travels as a float: an int 0 argument trips the TorchScript exporter's peephole pass
    # per channel, scale and zero_point are tuples of floats: constants to the exporter, not graph inputs
    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin: int, qmax: int, axis: int | None = None):
        if axis is not None:
            shape = [1] * x.dim()
            shape[axis] = -1
            scale = torch.tensor(scale, dtype=torch.float32).view(shape)
            zero_point = torch.tensor(zero_point, dtype=torch.float32).view(shape)
        # in place on the one new tensor: the same ops in the same order (same values), no temporaries
        return (x / scale).round_().add_(zero_point).clamp_(qmin, qmax).sub_(zero_point).mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None, None, None

    @staticmethod
    def symbolic(g, x, scale, zero_point, qmin: int, qmax: int, axis: int | None = None):
        zp_type = torch.int8 if qmin < 0 else torch.uint8
        if axis is None:
            s = g.op("Constant", value_t=torch.tensor(scale, dtype=torch.float32))
            z = g.op("Constant", value_t=torch.tensor(int(zero_point), dtype=zp_type))
            return g.op("DequantizeLinear", g.op("QuantizeLinear", x, s, z), s, z)
        s = g.op("Constant", value_t=torch.tensor(scale, dtype=torch.float32))
        z = g.op("Constant", value_t=torch.tensor([int(v) for v in zero_point], dtype=zp_type))
        return g.op("DequantizeLinear", g.op("QuantizeLinear", x, s, z, axis_i=axis), s, z, axis_i=axis)


_QUANTIZE_OPS = False  # set by quantize_ops(): activations traced as torch's own quantize/dequantize


@contextmanager
def quantize_ops() -> Iterator[None]:
    """Within this block, 8-bit per-tensor activation sites compute ``torch.quantize_per_tensor(...)
    .dequantize()``: the ops coremltools converts into a CoreML ``quantize``/``dequantize`` pair (W8A8).
    Same scales and grid as the simulation; torch multiplies by 1/scale where the simulation divides,
    so a value on a rounding boundary can land one code over (logits differ by ~0.1 at most on the
    built-in hybrid, predictions agree)."""
    global _QUANTIZE_OPS
    before, _QUANTIZE_OPS = _QUANTIZE_OPS, True
    try:
        yield
    finally:
        _QUANTIZE_OPS = before


def _quantize_dequantize(x: torch.Tensor, q: QParams) -> torch.Tensor:
    if q.bits != 8 or q.axis is not None:
        raise ValueError(f"only 8-bit per-tensor activation quantizers become quantize ops (got {q.bits}-bit"
                         f"{' per channel' if q.axis is not None else ''}); lower the plan for the target first")
    dtype = torch.qint8 if q.symmetric else torch.quint8
    return torch.quantize_per_tensor(x, float(q.scale), int(q.zero_point), dtype).dequantize()


def lsq_fake_quant(x: torch.Tensor, q: QParams, gain: torch.Tensor) -> torch.Tensor:
    """Fake quantization with step ``q.scale * exp(gain)`` whose gradient reaches the step as LSQ's does
    (Esser et al., 2020): rounding passes the gradient straight through, clamped codes pass none to ``x``.
    Same grid and rounding (half to even) as ``fake_quant_activation`` at ``gain`` = 0."""
    s, z = q._view(q.scale * gain.exp(), x), q._view(q.zero_point.float(), x)
    t = x / s
    codes = torch.clamp(t + (torch.round(t) - t).detach() + z, q.qmin, q.qmax)
    return (codes - z) * s


def fake_quant_activation(x: torch.Tensor, q: QParams) -> torch.Tensor:
    """Fake quantization (per tensor, or per channel along ``q.axis``) that exports as
    QuantizeLinear/DequantizeLinear.

    Below 8 bits the input is first clipped to the quantizer's range and then quantized in the 8-bit
    container: identical values, and it exports as Clip (Max/Min per channel) -> Q -> DQ, which ONNX
    Runtime runs exactly as the simulation (ONNX has no 4- or 6-bit QuantizeLinear in opset 17).
    """
    if _QUANTIZE_OPS:
        return _quantize_dequantize(x, q)
    lo8, hi8 = (q.qmin, q.qmax) if q.bits == 8 else _container(q)
    if q.axis is not None:
        axis = q.axis % x.dim()
        scale, zp = q.scale.float(), q.zero_point.float()
        if q.bits < 8:
            low, high = q._view((q.qmin - zp) * scale, x), q._view((q.qmax - zp) * scale, x)
            x = torch.maximum(torch.minimum(x, high), low)
        return _QDQ.apply(x, tuple(scale.tolist()), tuple(zp.tolist()), lo8, hi8, axis)
    scale, zp = float(q.scale), int(q.zero_point)
    if q.bits == 8:
        return _QDQ.apply(x, scale, float(zp), q.qmin, q.qmax)
    s = torch.tensor(scale, dtype=torch.float32)  # bounds = dequantized end codes, in float32 like DQ computes them
    low = float(torch.tensor(float(q.qmin - zp), dtype=torch.float32) * s)
    high = float(torch.tensor(float(q.qmax - zp), dtype=torch.float32) * s)
    return _QDQ.apply(torch.clamp(x, low, high), scale, float(zp), lo8, hi8)


def fake_quant_weight(w: torch.Tensor, q: QParams) -> torch.Tensor:
    """Fake-quantize a weight with the exportable torch op (per channel on axis 0, or per tensor).

    The ONNX exporter only knows the full 8-bit ranges; weights are clamped into the quantizer's
    range once when the plan is applied (:func:`clamp_weight`), so the 8-bit container range gives
    the same codes here, at any bit width."""
    qmin, qmax = _container(q)
    if q.axis is None:
        return torch.fake_quantize_per_tensor_affine(w, float(q.scale), int(q.zero_point), qmin, qmax)
    return torch.fake_quantize_per_channel_affine(w, q.scale.float(), q.zero_point.to(torch.int32), q.axis,
                                                  qmin, qmax)


@torch.no_grad()
def clamp_weight(w: torch.Tensor, q: QParams) -> None:
    """Clamp a weight in place into its quantizer's range (lowest code: -127 for narrow int8)."""
    low = q.dequantize(torch.full_like(q.scale, float(q.qmin)))
    high = q.dequantize(torch.full_like(q.scale, float(q.qmax)))
    w.copy_(torch.minimum(torch.maximum(w, q._view(low, w)), q._view(high, w)))


@torch.no_grad()
def bias_on_int32_grid(mod) -> None:
    """A Conv (or a Linear on 2-D input, exported as Gemm) behind a per-tensor uniform input quantizer adds
    its bias as int32 codes of scale input scale x weight scale: ONNX Runtime rewrites the float bias so
    (round(b / (s_x s_w)), in float32, half to even). The simulation adds the same bias: a difference of
    a fraction of a code is enough to flip later activation codes (10 dB of logit SQNR on the built-in
    hybrid with quantized conv outputs)."""
    site, w, bias = mod.input_quant, mod.weight_qparams, getattr(mod.inner, "bias", None)
    if bias is None or w is None or site.qparams is None or site.nonuniform is not None or site.qparams.axis is not None:
        return
    scale = (site.qparams.scale.float().reshape(()) * w.scale.float().reshape(-1)).float()
    rounded = torch.round(bias.detach().float() / scale) * scale
    if isinstance(mod.inner, nn.Conv2d):
        bias.copy_(rounded)
    else:
        mod.gemm_bias = rounded  # used only when the input is 2-D (a Gemm in the exported graph)


class QuantWeighted(nn.Module):
    def __init__(self, inner: nn.Module, name: str):
        super().__init__()
        self.inner = inner
        self.site = name
        self.input_quant = ActQuant(f"{name}.input", "linear_input" if isinstance(inner, nn.Linear) else "conv_input")
        self.weight_qparams: QParams | None = None
        self.quantize_weight = False
        self.weight_override = None  # block reconstruction: a callable giving the soft-rounded weight

    def weight(self) -> torch.Tensor:
        if self.weight_override is not None:
            return self.weight_override()
        w = self.inner.weight
        site = self.input_quant
        # Only behind a uniformly quantized input does the weight travel as int8 + DequantizeLinear. Behind
        # a float or log/tan-quantized input, ONNX Runtime would rewrite DQ -> MatMul into MatMulNBits and
        # quantize the activation on the fly; the weight (already on its grid, see apply_plan) stays float.
        if self.quantize_weight and self.weight_qparams is not None and site.qparams is not None \
                and site.nonuniform is None:
            return fake_quant_weight(w, self.weight_qparams)
        return w


class QuantLinear(QuantWeighted):
    """nn.Linear with a quantized input site and a per-channel quantized weight."""

    gemm_bias: torch.Tensor | None = None  # the bias on its int32 grid, for 2-D input (see bias_on_int32_grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.gemm_bias if self.gemm_bias is not None and x.dim() == 2 and self.quantize_weight \
            else self.inner.bias
        return F.linear(self.input_quant(x), self.weight(), bias)


class QuantConv2d(QuantWeighted):
    """nn.Conv2d with a quantized input site, a per-channel quantized weight and, optionally, a
    quantized output (ONNX Runtime turns DQ -> Conv -> Q into an integer QLinearConv)."""

    def __init__(self, inner: nn.Module, name: str, quantize_output: bool = False):
        super().__init__(inner, name)
        self.output_quant = ActQuant(f"{name}.output", "conv_output") if quantize_output else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.inner
        x = self.input_quant(x)
        if c.padding_mode != "zeros":
            x = F.pad(x, c._reversed_padding_repeated_twice, mode=c.padding_mode)
            y = F.conv2d(x, self.weight(), c.bias, c.stride, 0, c.dilation, c.groups)
        else:
            y = F.conv2d(x, self.weight(), c.bias, c.stride, c.padding, c.dilation, c.groups)
        return self.output_quant(y) if self.output_quant is not None else y


class QuantSiLU(nn.Module):
    """SiLU as x * sigmoid(x) with the sigmoid output quantized, so that with quantized Conv
    outputs ONNX Runtime runs Sigmoid and Mul as integer ops and keeps the conv trunk in NHWC int8
    (a float op between two QLinearConv forces layout transposes around each of them)."""

    def __init__(self, name: str):
        super().__init__()
        self.site = name
        self.sigmoid_quant = ActQuant(f"{name}.sigmoid", "sigmoid_output")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.sigmoid_quant(torch.sigmoid(x))


class AttentionSites(nn.Module):
    """An attention module run unfused through its family adapter (``edgevit.models.families``), with
    sites on the operands of its two matmuls: Q, K, V and the softmax probabilities. All heads share
    one site per operand (per-tensor, as TensorRT's fused attention wants)."""

    def __init__(self, inner: nn.Module, name: str, family=None):
        super().__init__()
        self.inner = inner
        self.site = name
        self.__dict__["family"] = family  # a stateless adapter, not a submodule
        self.q_quant = ActQuant(f"{name}.q", "attn_q")
        self.k_quant = ActQuant(f"{name}.k", "attn_k")
        self.v_quant = ActQuant(f"{name}.v", "attn_v")
        self.attn_quant = ActQuant(f"{name}.softmax", "attn_softmax")

    def __getattr__(self, name: str):
        # Parent blocks read the wrapped module's attributes (e.g. EfficientViT's ``attn.resolution``).
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("inner"), name)

    def probs(self, q: torch.Tensor | None, k_t: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """The quantized attention probabilities softmax(q @ k_t + bias); q already scaled, k_t is K
        transposed (..., d, N). With q None, k_t are the logits: no MatMul, so no Q and K sites."""
        attn = k_t if q is None else self.q_quant(q) @ self.k_quant(k_t)
        if bias is not None:
            attn = attn + bias
        return self.attn_quant(attn.softmax(dim=-1))

    def attend(self, q: torch.Tensor | None, k_t: torch.Tensor, v: torch.Tensor,
               bias: torch.Tensor | None = None) -> torch.Tensor:
        """softmax(q @ k_t + bias) @ v with Q/DQ right at each MatMul input; v is (..., N, d_v)."""
        return self.probs(q, k_t, bias) @ self.v_quant(v)


class QuantAttention(AttentionSites):
    """Any adapted attention (see ``edgevit.models.families``) with its product quantized."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise NotImplementedError("quantized attention with a mask is not supported")
        return self.family.forward(self.inner, x, self.attend)


def insert_sites(model: nn.Module, attention: bool = True, skip: list[str] = (),
                 conv_output: bool = False, post_act: str = "mlp") -> list[str]:
    """Replace Linear/Conv2d (and timm Attention) modules by their quantized wrappers, in place.

    Returns the names of the modules left in float because they match a ``skip`` pattern.
    """
    skipped: list[str] = []

    def visit(parent: nn.Module, prefix: str) -> None:
        for child_name, child in list(parent.named_children()):
            name = f"{prefix}{child_name}"
            if any(fnmatch.fnmatch(name, pat) for pat in skip):
                skipped.append(name)
                continue
            if isinstance(child, nn.Linear):
                setattr(parent, child_name, QuantLinear(child, name))
            elif isinstance(child, nn.Conv2d):
                # Only a conv inside a conv-norm-act unit feeds integer ops; a bare conv (e.g. MobileViT's
                # conv_1x1 before unfolding into tokens) would push uint8 data into slow layout transposes.
                in_unit = child_name == "conv" and hasattr(parent, "bn")
                setattr(parent, child_name, QuantConv2d(child, name, conv_output and in_unit))
            elif isinstance(child, nn.SiLU) and conv_output:
                setattr(parent, child_name, QuantSiLU(name))
            else:
                visit(child, f"{name}.")
                family = attention_family(child) if attention else None
                if family is not None and family.unfused:
                    setattr(parent, child_name, QuantAttention(child, name, family))

    visit(model, "")
    mark_post_activation_sites(model, post_act)
    return skipped


def activation_floor(act: nn.Module) -> float:
    """-min act(x): the shift that makes the activation's output non-negative (GELU: 0.16997)."""
    x = torch.linspace(-20.0, 5.0, 250_001, dtype=torch.float64)
    with torch.no_grad():
        return max(0.0, -float(act(x).min()))


def _pointwise(m: nn.Module) -> bool:
    return isinstance(m, QuantConv2d) and m.inner.kernel_size == (1, 1) and m.inner.groups == 1 \
        and m.inner.padding in ((0, 0), "valid")


def _after_activation(m: nn.Module) -> nn.Module | None:
    """The layer of ``m`` that reads its activation's output directly, if ``m`` is a known MLP form: timm ``Mlp``
    (fc1 -> act -> fc2), timm ``ConvMlp`` (fc1 -> norm -> act -> 1x1 conv fc2: MobileViTV2), LeViT's MLP
    (ln1 -> act -> ln2) and its attention output (act -> ln)."""
    from timm.layers import ConvMlp
    from timm.models.levit import LevitMlp

    fc2 = getattr(m, "fc2", None)
    if isinstance(fc2, QuantLinear) or (type(m) is ConvMlp and _pointwise(fc2)):
        return fc2
    if type(m) is LevitMlp:
        return getattr(m.ln2, "linear", None)
    if isinstance(m, nn.Sequential) and list(m._modules) == ["act", "ln"]:  # LeViT attention's proj
        return getattr(m.ln, "linear", None)
    return None


def _activation(m: nn.Module | None) -> nn.Module | None:
    """``m`` if it is a GELU-like activation (torch's or timm's GELU, SiLU, Hardswish: a small negative tail the
    log quantizers' shift takes in), else None. ReLU's output (EfficientViT's FFN) is left to the uniform
    quantizer: AdaLog read no closer to the float model there at W4A4."""
    names = ("GELU", "GELUTanh", "QuickGELU", "SiLU", "Swish", "HardSwish", "Hardswish")
    return m if isinstance(m, (nn.SiLU, nn.GELU, nn.Hardswish)) or type(m).__name__ in names else None


def _unit_activation(unit: nn.Module) -> nn.Module | None:
    """The activation a conv-norm-act unit ends with (timm ``ConvNormAct``: in ``bn.act``, or alone in ``bn``
    once the BatchNorm is folded), or None."""
    bn = getattr(unit, "bn", None)
    if isinstance(bn, nn.Sequential):
        return _activation(bn[-1]) if len(bn) else None
    return _activation(getattr(bn, "act", None))


def _trunk_pointwise_after_activation(m: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(activation, 1x1 conv reading its output) in a conv trunk: the projection of a MobileNetV2 / byobnet
    bottleneck (kxk conv-norm-act -> 1x1 conv), the 1x1 after a MobileViT block's local kxk conv, and the
    conv MLPs of EfficientFormer(V2) and FastViT (... -> act -> 1x1 conv fc2)."""
    kind = (type(m).__module__, type(m).__name__)
    if kind == ("timm.models.byobnet", "BottleneckBlock") and all(
            isinstance(getattr(m, a), nn.Identity) for a in ("conv2b_kxk", "attn")):
        act, layer = _unit_activation(m.conv2_kxk), getattr(m.conv3_1x1, "conv", None)
    elif kind == ("timm.models.mobilevit", "MobileVitBlock"):
        act, layer = _unit_activation(m.conv_kxk), m.conv_1x1
    elif kind in (("timm.models.efficientformer", "ConvMlpWithNorm"), ("timm.models.fastvit", "ConvMlp")):
        act, layer = _activation(m.act), m.fc2
    elif kind == ("timm.models.efficientformer_v2", "ConvMlpWithNorm"):
        act = _unit_activation(m.fc1 if isinstance(m.mid, nn.Identity) else m.mid)
        layer = getattr(m.fc2, "conv", None)
    else:
        return None
    return (act, layer) if act is not None and _pointwise(layer) else None


def mark_post_activation_sites(model: nn.Module, sites: str = "mlp") -> None:
    """Mark the input of the layer after an MLP's activation as ``post_act`` (see ``_after_activation``);
    ``sites="pointwise"``: also every 1x1 conv that reads an activation's output in a conv trunk (see
    ``_trunk_pointwise_after_activation``)."""
    def mark(act: nn.Module, layer: QuantWeighted) -> None:
        layer.input_quant.kind = "post_act"
        layer.input_quant.shift = activation_floor(act)

    for m in model.modules():
        act, layer = getattr(m, "act", None), _after_activation(m)
        if isinstance(act, nn.Module) and not isinstance(act, nn.Identity) and isinstance(layer, QuantWeighted):
            mark(act, layer)
        pair = _trunk_pointwise_after_activation(m) if sites == "pointwise" else None
        if pair is not None and pair[1].input_quant.kind != "post_act":
            mark(*pair)


def act_sites(model: nn.Module, quantized: bool = False) -> list[ActQuant]:
    """All activation sites, in module order (``quantized``: only those that fake-quantize uniformly)."""
    sites = [m for m in model.modules() if isinstance(m, ActQuant)]
    if quantized:
        return [m for m in sites if m.mode == "quant" and m.qparams is not None and m.nonuniform is None]
    return sites


def weighted_sites(model: nn.Module) -> list[QuantWeighted]:
    """All quantized Linear/Conv wrappers, in module order."""
    return [m for m in model.modules() if isinstance(m, QuantWeighted)]


def set_mode(model: nn.Module, mode: str) -> None:
    """Switch every activation site to ``off``, ``observe`` or ``quant`` (weights follow ``quant``)."""
    for s in act_sites(model):
        s.mode = mode
    for w in weighted_sites(model):
        w.quantize_weight = mode == "quant"
