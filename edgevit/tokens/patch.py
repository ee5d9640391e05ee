"""Apply token reduction to a model by wrapping its attention stages, and take it off again.

A *stage* is a ``Sequential`` of timm ``Block``s (a ViT's ``blocks``, a MobileViT block's
``transformer``). :class:`TokenStage` takes its place in the parent and :class:`TokenBlock` takes the
place of each block; both register the wrapped module's children under the same names, so module
names (``blocks.3.attn``) - and with them quantization sites and plans - do not change. Inside a
block, tokens are reduced between attention and MLP (as ToMe and EViT do). A stage whose output goes
back to a 2-D grid (MobileViT's fold, a ViT with average pooling) unmerges at its end, so the layers
after it see every token. ``remove_tokens`` puts the original modules back.
"""
from __future__ import annotations

import fnmatch
import math
from collections import OrderedDict

import torch
from timm.models.vision_transformer import Attention, Block, VisionTransformer
from torch import nn

from edgevit.quant.sites import AttentionSites
from edgevit.tokens.config import TokenConfig
from edgevit.tokens.merge import Reduction, bipartite_matching, tome_merges, top_k_pruning, unmerge


def _attention(attn: nn.Module, x: torch.Tensor, size: torch.Tensor | None, want_probs: bool
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """timm ``Attention`` (float, or wrapped with quantization sites) computed unfused, with ToMe's
    proportional attention (log size added to the logits). Returns the output, the keys averaged over
    heads (ToMe's similarity metric) and, if asked, the attention probabilities averaged over heads."""
    sites = attn if isinstance(attn, AttentionSites) else None
    a = attn.inner if sites else attn
    N = int(x.shape[1])  # batch left symbolic (-1), token count static: fewer shape ops in the graph
    gate = a.gate(x).sigmoid() if getattr(a, "gate", None) is not None else None
    q, k, v = a.qkv(x).reshape(-1, N, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = a.q_norm(q), a.k_norm(k)
    bias = size.log().transpose(1, 2).unsqueeze(1) if size is not None else None  # (B, 1, 1, N)
    if sites:
        probs = sites.probs(q * a.scale, k.transpose(-2, -1), bias)
        out = probs @ sites.v_quant(v)
    else:
        logits = (q * a.scale) @ k.transpose(-2, -1)
        probs = (logits + bias if bias is not None else logits).softmax(dim=-1)
        out = a.attn_drop(probs) @ v
    out = a.norm(out.transpose(1, 2).reshape(-1, N, a.num_heads * a.head_dim))
    if gate is not None:
        out = out * gate
    return a.proj_drop(a.proj(out)), k.mean(dim=1), probs.mean(dim=1) if want_probs else None


class TokenBlock(nn.Module):
    """A timm ``Block`` that reduces its tokens between attention and MLP.

    ``merge``: ToMe merges this many tokens; ``keep_rate``: EViT keeps this fraction of the non-prefix
    tokens (None: no pruning here). With no reduction so far and none here it runs the block's own
    computation (bit-exact)."""

    def __init__(self, block: Block, protected: int, merge: int = 0, keep_rate: float | None = None,
                 fuse: bool = True, score: str = "cls", proportional: bool = True):
        super().__init__()
        for name, child in block.named_children():
            self.add_module(name, child)
        self.__dict__["original"] = block  # a plain attribute: not a submodule, not in state_dict
        self.protected, self.merge, self.keep_rate = protected, merge, keep_rate
        self.fuse, self.score, self.proportional = fuse, score, proportional

    @property
    def reduces(self) -> bool:
        return self.merge > 0 or self.keep_rate is not None

    def tokens_out(self, n: int) -> int:
        """Tokens leaving this block when ``n`` come in."""
        if self.keep_rate is not None:
            return self.protected + self._kept(n) + (1 if self.fuse and self._kept(n) < n - self.protected else 0)
        return n - tome_merges(n, self.merge, self.protected)

    def _kept(self, n: int) -> int:
        return max(1, math.ceil(self.keep_rate * (n - self.protected) - 1e-9))

    def forward(self, x: torch.Tensor, size: torch.Tensor | None = None, source: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        if size is None and not self.reduces:
            x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
            return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x)))), size, source
        n = int(x.shape[1])  # token counts are fixed when the graph is traced (static shapes)
        y, keys, probs = _attention(self.attn, self.norm1(x), size if self.proportional else None,
                                    want_probs=self.keep_rate is not None)
        x = x + self.drop_path1(self.ls1(y))
        red = self._reduction(keys, probs, n)
        if red is not None:
            if self.merge:
                x, size = red.merge(x, size)
            else:
                x, size = red.apply(x), (red.apply(size) if size is not None else red.assign.sum(-1, keepdim=True))
            if source is not None:
                source = red.track(source)
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x, size, source

    def _reduction(self, keys: torch.Tensor, probs: torch.Tensor | None, n: int) -> Reduction | None:
        if self.tokens_out(n) == n:
            return None
        if self.merge:
            return bipartite_matching(keys, self.merge, self.protected)
        scores = probs[:, 0] if self.score == "cls" else probs.mean(dim=1)  # (B, N)
        return top_k_pruning(scores, self._kept(n), self.protected, self.fuse)


class TokenStage(nn.Sequential):
    """A ``Sequential`` of blocks that carries token sizes (and, to unmerge, the source map) through
    its :class:`TokenBlock`s."""

    def __init__(self, stage: nn.Sequential, unmerge: bool):
        super().__init__(OrderedDict(stage.named_children()))
        self.__dict__["original"] = stage
        self.unmerge = unmerge

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = None
        source = torch.eye(x.shape[1], dtype=x.dtype, device=x.device).expand(x.shape[0], -1, -1) \
            if self.unmerge else None
        for block in self.children():
            if isinstance(block, TokenBlock):
                x, size, source = block(x, size, source)
            else:
                x = block(x)
        if self.unmerge and size is not None:
            x = unmerge(x, source)
        return x


def find_stages(model: nn.Module) -> list[str]:
    """Names of the Sequentials of timm attention ``Block``s (with timm ``Attention``)."""
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Sequential) and len(m) and all(isinstance(b, Block) for b in m)
            and all(isinstance(b.attn, (Attention, AttentionSites)) for b in m)]


def _prefix_tokens(model: nn.Module, stage: str) -> tuple[int, bool]:
    """(protected prefix tokens, whether the stage must unmerge) for one stage."""
    if isinstance(model, VisionTransformer) and stage == "blocks":
        return model.num_prefix_tokens, model.global_pool != "token"
    return 0, True


def apply_tokens(model: nn.Module, cfg: TokenConfig) -> list[dict]:
    """Wrap ``model``'s attention stages (in place) so that they reduce tokens as ``cfg`` says; returns
    one record per stage (name, tokens merged or kept per block)."""
    stages = [s for s in find_stages(model) if any(fnmatch.fnmatch(s, p) for p in cfg.stages)]
    if not stages:
        raise ValueError("tokens: the model has no attention stage of timm Blocks to reduce tokens in "
                         f"(stages: {cfg.stages}); supported: ViT/DeiT and MobileViT (v1) transformer blocks")
    records = []
    for name in stages:
        seq = model.get_submodule(name)
        protected, must_unmerge = _prefix_tokens(model, name)
        depth = len(seq)
        merges = cfg.merges(depth) if cfg.method == "tome" else [0] * depth
        prunes = set(cfg.pruning_blocks(depth)) if cfg.method == "evit" else set()
        score = cfg.score if cfg.score != "auto" else ("cls" if protected else "received")
        if score == "cls" and not protected:
            raise ValueError(f"tokens.score: cls needs a class token; stage {name} has none (use received)")
        for i in range(depth):
            seq[i] = TokenBlock(seq[i], protected, merges[i], cfg.keep_rate if i in prunes else None,
                                cfg.fuse, score, cfg.proportional_attention)
        _set(model, name, TokenStage(seq, unmerge=must_unmerge))
        records.append({"stage": name, "method": cfg.method, "protected": protected, "unmerge": must_unmerge,
                        "merge": merges, "prune_blocks": sorted(prunes)})
    return records


def token_counts(model: nn.Module, tokens_in: dict[str, int]) -> dict[str, list[int]]:
    """Tokens entering each block of each reducing stage, given the tokens entering the stage."""
    counts = {}
    for name, stage in model.named_modules():
        if isinstance(stage, TokenStage) and name in tokens_in:
            n, per = tokens_in[name], []
            for block in stage.children():
                per.append(n)
                if isinstance(block, TokenBlock):
                    n = block.tokens_out(n)
            counts[name] = per + [n]
    return counts


def remove_tokens(model: nn.Module) -> nn.Module:
    """Undo ``apply_tokens`` in place: the original stages and blocks, holding the current children."""
    for name, stage in list(model.named_modules()):
        if isinstance(stage, TokenStage):
            seq = stage.original
            for i, (child_name, child) in enumerate(stage.named_children()):
                if isinstance(child, TokenBlock):
                    block = child.original
                    for n, c in child.named_children():
                        setattr(block, n, c)
                    child = block
                seq[i] = child
            _set(model, name, seq)
    return model


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)
