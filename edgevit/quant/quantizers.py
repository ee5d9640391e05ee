"""The activation-quantizer protocol and the registry from the recipe's names (``quantize.softmax`` /
``quantize.gelu``: ``log2``, ``logsqrt2``, ``adalog``, ``tanq``, ...) to a quantizer and its search.

A non-uniform quantizer (the uniform grid is :class:`edgevit.quant.uniform.QParams`) computes
``fake_quant`` with plain torch ops, so the exporter writes it as a float decomposition that
reproduces the simulation (``lowering: exact``); ``lowering: uniform`` replaces it by the uniform grid
over the site's calibrated range, ``float`` drops it. Adding one = its class, one :func:`register`
call, and a case in the parametrized tests.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Protocol

import torch


class ActivationQuantizer(Protocol):
    """What every non-uniform activation quantizer provides."""

    bits: int
    kind: str  # its registry name
    dequant_rule: ClassVar[str]  # the dequantization an integer accelerator implements (quant_params.json)

    def codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Integer codes (a float tensor) and the mask of values that quantize to 0 (None: none do)."""

    def dequantize(self, code: torch.Tensor, underflow: torch.Tensor | None = None) -> torch.Tensor:
        """The values of ``code`` (0 where ``underflow``)."""

    def fake_quant(self, x: torch.Tensor) -> torch.Tensor:
        """dequantize(codes(x)), in torch ops that export to ONNX."""

    def grid(self) -> torch.Tensor:
        """Every representable value, ascending (drawn over the report's activation histograms)."""

    def to_dict(self) -> dict:
        """Its parameters as plain data (plan.json, quant_params.json)."""


@dataclass(frozen=True)
class QuantizerEntry:
    """A registered quantizer: how a site gets one."""

    name: str
    dequant_rule: str
    #: a quantizer with nothing to search (log2, log-sqrt2): bits -> quantizer
    fixed: Callable[[int], ActivationQuantizer] | None = None
    #: post-softmax candidates to pick from by attention-output error: (bits, probability samples) -> list
    softmax_candidates: Callable[[int, list[torch.Tensor]], list[ActivationQuantizer]] | None = None
    #: post-activation (GELU/SiLU output) search: (bits, x, consuming weight, shift) -> quantizer
    post_activation: Callable[[int, torch.Tensor, torch.Tensor, float], ActivationQuantizer] | None = None

    @property
    def for_softmax(self) -> bool:
        return self.fixed is not None or self.softmax_candidates is not None


QUANTIZERS: dict[str, QuantizerEntry] = {}


def register(entry: QuantizerEntry) -> QuantizerEntry:
    """Make a quantizer available to recipes under ``entry.name``."""
    QUANTIZERS[entry.name] = entry
    return entry


def quantizer(name: str) -> QuantizerEntry:
    """The registered quantizer ``name``."""
    try:
        return QUANTIZERS[name]
    except KeyError:
        raise ValueError(f"unknown quantizer {name!r} (known: uniform, {', '.join(sorted(QUANTIZERS))})") from None


def softmax_names() -> list[str]:
    """The names ``quantize.softmax`` accepts."""
    return ["uniform"] + sorted(n for n, e in QUANTIZERS.items() if e.for_softmax)


def post_activation_names() -> list[str]:
    """The names ``quantize.gelu`` accepts."""
    return ["uniform"] + sorted(n for n, e in QUANTIZERS.items() if e.post_activation is not None)
