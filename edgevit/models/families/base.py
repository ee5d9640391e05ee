"""The attention adapter every family module fills in, and its registry."""
from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import nn

#: Attend(q, k_t, v, bias) -> softmax(q @ k_t + bias) @ v (q already scaled; k_t is K transposed).
#: With q None, k_t holds the logits themselves: softmax(k_t + bias) @ v (separable attention, whose
#: scores are projected per token, has no Q @ K^T product).
Attend = Callable[["torch.Tensor | None", torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def float_attend(q: torch.Tensor | None, k_t: torch.Tensor, v: torch.Tensor,
                 bias: torch.Tensor | None = None) -> torch.Tensor:
    """The plain attention product."""
    logits = k_t if q is None else q @ k_t
    return (logits + bias if bias is not None else logits).softmax(dim=-1) @ v


class AttentionFamily:
    """One family's attention. ``batch`` is the batch size to reshape with (``-1`` keeps it symbolic in an
    exported graph), ``n`` the token count."""

    name = "attention"
    merges_tokens = False  # whether ToMe / EViT can run this attention over reduced tokens
    unfused = True  # whether forward() re-states the module (quantization sites wrap it)
    position_biases = False  # whether position_bias() gives learned biases (merged tokens average them)

    def accepts(self, m: nn.Module) -> bool:
        """Whether this instance computes as the adapter says (a mode may lay heads out differently)."""
        return True

    def prenorm(self, a: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """A normalization the attention applies to its input itself (TinyViT)."""
        return x

    def qkv(self, a: nn.Module, x: torch.Tensor, batch: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Q, K, V as (B, heads, N, d), Q and K normalized where the family does."""
        raise NotImplementedError

    def position_bias(self, a: nn.Module) -> torch.Tensor | None:
        """Learned biases between token positions, (heads, N, N), or None."""
        return None

    def output(self, a: nn.Module, out: torch.Tensor, x: torch.Tensor, batch: int, n: int) -> torch.Tensor:
        """(B, heads, N, d_v) attention output -> the module's output (``x``: its input, for a gate)."""
        raise NotImplementedError

    def projection_units(self, a: nn.Module) -> tuple[str, ...]:
        """Children whose layers INT8 placement decides apart from the attention product (their own
        regions): where the projections gain from INT8 and the product does not."""
        return ()

    def prunable_heads(self, a: nn.Module) -> bool:
        """Whether structured pruning may remove whole heads (``head_slices`` / ``set_heads`` apply)."""
        return False

    def head_slices(self, a: nn.Module, keep: torch.Tensor) -> tuple[nn.Linear, nn.Linear, torch.Tensor, torch.Tensor]:
        """(producer, consumer, producer rows, consumer columns) that keep the heads ``keep``."""
        raise NotImplementedError

    def set_heads(self, a: nn.Module, heads: int, producer: nn.Linear, consumer: nn.Linear) -> None:
        """Put the narrowed (or masked) producer and consumer in place; ``a`` now has ``heads`` heads."""
        raise NotImplementedError

    def forward(self, a: nn.Module, x: torch.Tensor, attend: Attend = float_attend) -> torch.Tensor:
        """The module's forward with ``attend`` for the attention product."""
        x = self.prenorm(a, x)
        batch, n = x.shape[0], x.shape[1]
        q, k, v = self.qkv(a, x, batch, n)
        out = attend(q * a.scale, k.transpose(-2, -1), v, self.position_bias(a))
        return self.output(a, out, x, batch, n)


#: attention class (a function returning it, so timm is imported only when needed) -> adapter
ADAPTERS: dict[Callable[[], type], AttentionFamily] = {}


@functools.cache
def _by_class() -> dict[type, AttentionFamily]:
    # resolved once: token merging asks on every forward pass
    return {cls(): adapter for cls, adapter in ADAPTERS.items()}


def attention_family(m: nn.Module) -> AttentionFamily | None:
    """The adapter of ``m``'s attention class (exact type: a subclass may compute differently), or None."""
    adapter = _by_class().get(type(m))
    return adapter if adapter is not None and adapter.accepts(m) else None


def register(cls: Callable[[], type]):
    """Class decorator: ``@register(lambda: timm.models.levit.Attention)`` makes the adapter known."""
    def wrap(adapter: type[AttentionFamily]) -> type[AttentionFamily]:
        ADAPTERS[cls] = adapter()
        _by_class.cache_clear()  # a family registered later joins the class lookup
        return adapter
    return wrap


class BiasedTokenAttention(AttentionFamily):
    """Token attention with one qkv projection split per head into key, key and value dims and learned
    position biases (EfficientFormer, LeViT in linear mode, TinyViT)."""

    position_biases = True

    def qkv(self, a, x, batch, n):
        qkv = a.qkv(x).reshape(batch, n, a.num_heads, 2 * a.key_dim + a.val_dim).permute(0, 2, 1, 3)
        return qkv.split([a.key_dim, a.key_dim, a.val_dim], dim=3)

    def position_bias(self, a):
        return a.get_attention_biases(a.attention_biases.device)

    def output(self, a, out, x, batch, n):
        out = out.transpose(1, 2)
        out = out.reshape(batch, n, -1) if batch != -1 else out.reshape(-1, n, out.shape[2] * out.shape[3])
        return a.proj(out)
