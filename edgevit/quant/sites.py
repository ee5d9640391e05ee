"""Quantization sites: where activations and weights are quantized, as modules patched into a model.

* ``ActQuant``: one activation site. It observes during calibration and fake-quantizes afterwards
  with ``torch.fake_quantize_per_tensor_affine``, which the ONNX exporter lowers to a
  QuantizeLinear/DequantizeLinear pair, so simulation and export share one graph.
* ``QuantLinear`` / ``QuantConv2d``: a Linear/Conv2d whose input is an ``ActQuant`` site and whose
  weight is fake-quantized per output channel.
* ``QuantAttention``: timm ``Attention`` run unfused (softmax visible) with sites on Q, K, V and
  the attention probabilities, the operands of the two attention matmuls.
"""
from __future__ import annotations

import fnmatch

import torch
import torch.nn.functional as F
from torch import nn

from edgevit.quant.observers import HistogramObserver
from edgevit.quant.uniform import QParams


class ActQuant(nn.Module):
    """An activation quantization site: ``off``, ``observe`` (collect a histogram) or ``quant``."""

    def __init__(self, name: str, kind: str):
        super().__init__()
        self.site = name
        self.kind = kind
        self.mode = "off"
        self.observer: HistogramObserver | None = None
        self.qparams: QParams | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "observe":
            if self.observer is None:
                self.observer = HistogramObserver()
            self.observer.update(x)
            return x
        if self.mode == "quant" and self.qparams is not None:
            q = self.qparams
            return torch.fake_quantize_per_tensor_affine(x, float(q.scale), int(q.zero_point), q.qmin, q.qmax)
        return x

    def extra_repr(self) -> str:
        return f"site={self.site!r}, kind={self.kind}, mode={self.mode}"


def fake_quant_weight(w: torch.Tensor, q: QParams) -> torch.Tensor:
    """Fake-quantize a weight with the exportable torch op (per channel on axis 0, or per tensor).

    The ONNX exporter only knows the full int8 range; narrow-range weights are clamped once when
    the plan is applied (:func:`clamp_weight`), so the full range gives the same codes here."""
    qmin = q.qmin - int(q.narrow)
    if q.axis is None:
        return torch.fake_quantize_per_tensor_affine(w, float(q.scale), int(q.zero_point), qmin, q.qmax)
    return torch.fake_quantize_per_channel_affine(w, q.scale.float(), q.zero_point.to(torch.int32), q.axis,
                                                  qmin, q.qmax)


@torch.no_grad()
def clamp_weight(w: torch.Tensor, q: QParams) -> None:
    """Clamp a weight in place at the value of its quantizer's lowest code (narrow range: -127)."""
    low = q.dequantize(torch.full_like(q.scale, float(q.qmin)))
    w.copy_(torch.maximum(w, q._view(low, w)))


class _QuantWeighted(nn.Module):
    def __init__(self, inner: nn.Module, name: str):
        super().__init__()
        self.inner = inner
        self.site = name
        self.input_quant = ActQuant(f"{name}.input", "linear_input" if isinstance(inner, nn.Linear) else "conv_input")
        self.weight_qparams: QParams | None = None
        self.quantize_weight = False

    def weight(self) -> torch.Tensor:
        w = self.inner.weight
        if self.quantize_weight and self.weight_qparams is not None:
            return fake_quant_weight(w, self.weight_qparams)
        return w


class QuantLinear(_QuantWeighted):
    """nn.Linear with a quantized input site and a per-channel quantized weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quant(x), self.weight(), self.inner.bias)


class QuantConv2d(_QuantWeighted):
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


class QuantAttention(nn.Module):
    """timm ``Attention`` computed unfused, with sites on the operands of both matmuls."""

    def __init__(self, inner: nn.Module, name: str):
        super().__init__()
        self.inner = inner
        self.site = name
        self.q_quant = ActQuant(f"{name}.q", "attn_q")
        self.k_quant = ActQuant(f"{name}.k", "attn_k")
        self.v_quant = ActQuant(f"{name}.v", "attn_v")
        self.attn_quant = ActQuant(f"{name}.softmax", "attn_softmax")

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        a = self.inner
        if attn_mask is not None or is_causal:
            raise NotImplementedError("quantized attention with a mask is not supported")
        B, N, _ = x.shape
        gate = a.gate(x).sigmoid() if getattr(a, "gate", None) is not None else None
        qkv = a.qkv(x).reshape(B, N, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = a.q_norm(q), a.k_norm(k)
        q = self.q_quant(q * a.scale)
        attn = q @ self.k_quant(k.transpose(-2, -1))  # Q/DQ right at the MatMul input
        attn = self.attn_quant(attn.softmax(dim=-1))
        x = attn @ self.v_quant(v)
        x = x.transpose(1, 2).reshape(B, N, -1)
        x = a.norm(x)
        if gate is not None:
            x = x * gate
        return a.proj_drop(a.proj(x))


def _is_timm_attention(m: nn.Module) -> bool:
    try:
        from timm.layers.attention import Attention
    except ImportError:  # older timm
        from timm.models.vision_transformer import Attention
    return type(m) is Attention


def insert_sites(model: nn.Module, attention: bool = True, skip: list[str] = (),
                 conv_output: bool = False) -> list[str]:
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
                if attention and _is_timm_attention(child):
                    setattr(parent, child_name, QuantAttention(child, name))

    visit(model, "")
    return skipped


def act_sites(model: nn.Module) -> list[ActQuant]:
    """All activation sites, in module order."""
    return [m for m in model.modules() if isinstance(m, ActQuant)]


def weighted_sites(model: nn.Module) -> list[_QuantWeighted]:
    """All quantized Linear/Conv wrappers, in module order."""
    return [m for m in model.modules() if isinstance(m, _QuantWeighted)]


def set_mode(model: nn.Module, mode: str) -> None:
    """Switch every activation site to ``off``, ``observe`` or ``quant`` (weights follow ``quant``)."""
    for s in act_sites(model):
        s.mode = mode
    for w in weighted_sites(model):
        w.quantize_weight = mode == "quant"
