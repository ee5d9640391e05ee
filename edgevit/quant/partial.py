"""Forward passes that watch chosen modules: run a model only as far as one of them, list the order they run in,
or stream their inputs batch by batch."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class StopForward(Exception):
    """Raised by a forward hook once the output we need has been computed."""


@torch.no_grad()
def run_until(model: nn.Module, module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` on ``x`` only as far as ``module``; return that module's input and output."""
    got = {}

    def fn(_m, args, out):
        got["in"], got["out"] = args[0].detach(), out.detach()
        raise StopForward  # nothing after the module is needed

    h = module.register_forward_hook(fn)
    try:
        model(x)
    except StopForward:
        pass
    finally:
        h.remove()
    return got["in"], got["out"]


@torch.no_grad()
def execution_order(model: nn.Module, modules: dict[str, nn.Module], x: torch.Tensor) -> list[str]:
    """The names of ``modules`` that run when ``model`` sees ``x``, in the order they first run."""
    order: dict[str, int] = {}

    def seen(name):
        def fn(_m, _args):
            order.setdefault(name, len(order))  # returns None: the input passes unchanged
        return fn

    handles = [m.register_forward_pre_hook(seen(n)) for n, m in modules.items()]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return sorted(order, key=order.get)


@torch.no_grad()
def stream_inputs(model: nn.Module, modules: dict[str, nn.Module], x: torch.Tensor,
                  fn: Callable[[str, torch.Tensor], None], batch: int = 64) -> None:
    """Run ``model`` on ``x`` batch by batch, handing each listed module's input to ``fn(name, input)``."""
    def hook(name):
        def pre(_m, args):
            fn(name, args[0])  # returns None: the input passes unchanged
        return pre

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in modules.items()]
    try:
        for i in range(0, len(x), batch):
            model(x[i:i + batch])
    finally:
        for h in handles:
            h.remove()
