"""Apply token reduction to a model by wrapping its attention stages, and take it off again.

A *stage* is a ``Sequential`` that ends in attention blocks: timm ``Block``s (a ViT's ``blocks``, a
MobileViT block's ``transformer``) or EfficientFormer's ``MetaBlock1d``s (after its ``Flat``). :class:`TokenStage` takes its place in the parent and :class:`TokenBlock` takes the
place of each block; both register the wrapped module's children under the same names, so module
names (``blocks.3.attn``) - and with them quantization sites and plans - do not change. Inside a
block, tokens are reduced between attention and MLP (as ToMe and EViT do). A stage whose output goes
back to a 2-D grid or is pooled (MobileViT's fold, EfficientFormer, a ViT with average pooling)
unmerges at its end, so the layers
after it see every token. EfficientFormerV2's attention works on the 2-D map and its MLP has a 3x3
depthwise conv, so there :class:`GridTokenAttention` merges inside each attention alone (q, k, v
projected on the full map, attention over the merged tokens, output unmerged back to the map: the
tomesd pattern). ``remove_tokens`` puts the original modules back.
"""
from __future__ import annotations

import fnmatch
import math
from collections import OrderedDict

import torch
from timm.models.efficientformer import MetaBlock1d
from timm.models.efficientformer_v2 import Attention2d, EfficientFormerV2Block
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from edgevit.models.families import attention_family
from edgevit.quant.sites import AttentionSites
from edgevit.tokens.config import TokenConfig
from edgevit.tokens.merge import Reduction, bipartite_matching, tome_merges, top_k_pruning, unmerge


def _position_bias(a: nn.Module, source: torch.Tensor | None) -> torch.Tensor | None:
    """The attention's learned bias between token positions (EfficientFormer), averaged over the
    positions each reduced token holds (``source`` (B, N', N0), None before any reduction):
    S B S^T / (n n^T)."""
    family = attention_family(a)
    bias = family.position_bias(a) if family is not None else None
    if bias is None or source is None:
        return bias
    count = source.sum(dim=-1, keepdim=True)
    s = source.unsqueeze(1)
    return (s @ bias @ s.transpose(-1, -2)) / (count @ count.transpose(1, 2)).unsqueeze(1)


def _attention(attn: nn.Module, x: torch.Tensor, size: torch.Tensor | None, source: torch.Tensor | None,
               proportional: bool, want_probs: bool, queries: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The block's attention (float, or wrapped with quantization sites) computed unfused on merged
    tokens through its family adapter: position biases merged, ToMe's proportional attention (log size
    added to the logits). ``queries``: only the first tokens attend (their outputs alone are computed;
    every token is still a key and a value). Returns the output, the keys averaged over heads (ToMe's
    similarity metric) and, if asked, the attention probabilities averaged over heads."""
    sites = attn if isinstance(attn, AttentionSites) else None
    a = attn.inner if sites else attn
    family = attention_family(a)
    n = int(x.shape[1])  # batch left symbolic (-1), token count static: fewer shape ops in the graph
    q, k, v = family.qkv(a, x, -1, n)
    if queries is not None:
        q, n = q[:, :, :queries], queries
    bias = _position_bias(a, source if size is not None else None)
    if bias is not None and queries is not None:
        bias = bias[..., :queries, :]
    if proportional and size is not None:
        log_size = size.log().transpose(1, 2).unsqueeze(1)  # (B, 1, 1, N)
        bias = log_size if bias is None else bias + log_size
    if sites:
        probs = sites.probs(q * a.scale, k.transpose(-2, -1), bias)
        out = probs @ sites.v_quant(v)
    else:
        logits = (q * a.scale) @ k.transpose(-2, -1)
        probs = (logits + bias if bias is not None else logits).softmax(dim=-1)
        out = (a.attn_drop(probs) if hasattr(a, "attn_drop") else probs) @ v
    return family.output(a, out, x, -1, n), k.mean(dim=1), probs.mean(dim=1) if want_probs else None


class TokenBlock(nn.Module):
    """An attention block (timm ``Block``, EfficientFormer ``MetaBlock1d``) that reduces its tokens
    between attention and MLP.

    ``merge``: ToMe merges this many tokens; ``keep_rate``: EViT keeps this fraction of the non-prefix
    tokens (None: no pruning here); ``head_only``: only the ``protected`` tokens (class/distillation)
    leave the block - the last block of a ViT whose head reads the class token computes its attention
    output and MLP for those alone, which changes no logit. With no reduction so far and none here it
    runs the block's own computation (bit-exact)."""

    def __init__(self, block: nn.Module, protected: int, merge: int = 0, keep_rate: float | None = None,
                 fuse: bool = True, score: str = "cls", proportional: bool = True, head_only: bool = False):
        super().__init__()
        for name, child in block.named_children():
            self.add_module(name, child)
        self.__dict__["original"] = block  # a plain attribute: not a submodule, not in state_dict
        self.mixer = "attn" if hasattr(block, "attn") else "token_mixer"
        self.protected, self.merge, self.keep_rate = protected, merge, keep_rate
        self.fuse, self.score, self.proportional = fuse, score, proportional
        if head_only and not protected:
            raise ValueError("head_only needs class/distillation tokens for the head to read")
        self.head_only = head_only

    @property
    def reduces(self) -> bool:
        return self.merge > 0 or self.keep_rate is not None or self.head_only

    @property
    def needs_source(self) -> bool:
        """Whether the attention needs the source map (position biases to merge)."""
        family = attention_family(_unwrap(getattr(self, self.mixer)))
        return family is not None and family.position_biases

    def tokens_out(self, n: int) -> int:
        """Tokens leaving this block when ``n`` come in."""
        if self.head_only:
            return self.protected
        if self.keep_rate is not None:
            return self.protected + self._kept(n) + (1 if self.fuse and self._kept(n) < n - self.protected else 0)
        return n - tome_merges(n, self.merge, self.protected)

    def _kept(self, n: int) -> int:
        return max(1, math.ceil(self.keep_rate * (n - self.protected) - 1e-9))

    def forward(self, x: torch.Tensor, size: torch.Tensor | None = None, source: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        mixer = getattr(self, self.mixer)
        if size is None and not self.reduces:
            x = x + self.drop_path1(self.ls1(mixer(self.norm1(x))))
            return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x)))), size, source
        n = int(x.shape[1])  # token counts are fixed when the graph is traced (static shapes)
        if self.head_only:
            return self._head_only(mixer, x, size, source)
        y, keys, probs = _attention(mixer, self.norm1(x), size, source, self.proportional,
                                    want_probs=self.keep_rate is not None)
        x = x + self.drop_path1(self.ls1(y))
        red = self._reduction(keys, probs, n)
        if red is not None:
            if self.merge:
                x, size = red.merge(x, size)
            else:
                x, size = red.apply(x), red.sizes(size)
            if source is not None:
                source = red.track(source)
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x, size, source

    def _head_only(self, mixer: nn.Module, x: torch.Tensor, size: torch.Tensor | None,
                   source: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        p = self.protected
        y, _, _ = _attention(mixer, self.norm1(x), size, source, self.proportional, want_probs=False, queries=p)
        x = x[:, :p] + self.drop_path1(self.ls1(y))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x, None if size is None else size[:, :p], None if source is None else source[..., :p, :]

    def _reduction(self, keys: torch.Tensor, probs: torch.Tensor | None, n: int) -> Reduction | None:
        if self.tokens_out(n) == n:
            return None
        if self.merge:
            return bipartite_matching(keys, self.merge, self.protected)
        scores = probs[:, 0] if self.score == "cls" else probs.mean(dim=1)  # (B, N)
        return top_k_pruning(scores, self._kept(n), self.protected, self.fuse)


class GridTokenAttention(nn.Module):
    """EfficientFormerV2's ``Attention2d`` with ToMe inside: q, k and v are projected on the full map
    (and the local value conv runs there), ``merge`` tokens are merged by their keys' similarity, the
    attention runs over the merged tokens (learned position biases averaged over the positions each
    holds, proportional attention right before the softmax, after the first talking-head mix) and its
    output is copied back to every position before the local value branch is added."""

    def __init__(self, attn: nn.Module, merge: int, proportional: bool = True):
        super().__init__()
        for name, child in attn.named_children():
            self.add_module(name, child)
        for name, p in attn.named_parameters(recurse=False):  # the position biases keep their names
            self.register_parameter(name, p)
        for name, b in attn.named_buffers(recurse=False):
            self.register_buffer(name, b, persistent=name not in attn._non_persistent_buffers_set)
        self.__dict__["original"] = attn
        self.merge, self.proportional = merge, proportional

    @property
    def tokens(self) -> tuple[int, int]:
        """(tokens on the map, tokens the attention runs over)."""
        n = self.original.N
        return n, n - tome_merges(n, self.merge)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.original
        if a.stride_conv is not None:  # children that are None are not registered: ask the original
            x = self.stride_conv(x)
        n, h = a.N, a.num_heads  # the map's size is fixed by the position biases
        q = self.q(x).reshape(-1, h, a.key_dim, n).transpose(2, 3)  # (B, heads, N, key_dim)
        k = self.k(x).reshape(-1, h, a.key_dim, n).transpose(2, 3)
        v = self.v(x)
        v_local = self.v_local(v)
        v = v.reshape(-1, h, a.d, n).transpose(2, 3)
        red = bipartite_matching(k.mean(dim=1), self.merge)
        size = red.sizes(None)  # (B, N', 1)
        average = (red.assign / size).unsqueeze(1)  # (B, 1, N', N): the same merge for every head
        q, k, v = average @ q, average @ k, average @ v
        source = red.assign  # 0/1: which positions each merged token holds
        attn = self.talking_head1((q @ k.transpose(-2, -1)) * a.scale + _position_bias(a, source))
        if self.proportional:
            attn = attn + size.log().transpose(1, 2).unsqueeze(1)
        attn = self.talking_head2(attn.softmax(dim=-1))
        out = unmerge_heads(attn @ v, source)  # (B, heads, N, d)
        x = out.transpose(2, 3).reshape(-1, a.dh, a.resolution[0], a.resolution[1]) + v_local
        if a.upsample is not None:
            x = self.upsample(x)
        return self.proj(self.act(x))


def unmerge_heads(x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """:func:`unmerge` for per-head tokens (B, heads, N', d) -> (B, heads, N, d)."""
    return source.transpose(1, 2).unsqueeze(1) @ x


class TokenStage(nn.Sequential):
    """A ``Sequential`` whose attention blocks are :class:`TokenBlock`s (other modules, such as
    EfficientFormer's conv blocks and ``Flat``, may come first): carries token sizes and, to unmerge or
    to merge position biases, the source map through them."""

    def __init__(self, stage: nn.Sequential, unmerge: bool):
        super().__init__(OrderedDict(stage.named_children()))
        self.__dict__["original"] = stage
        self.unmerge = unmerge
        self.track = unmerge or any(isinstance(b, TokenBlock) and b.needs_source for b in self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size, source = None, None
        for block in self.children():
            if isinstance(block, TokenBlock):
                if source is None and self.track:  # (N0, N0); broadcasts over the batch once reduced
                    source = torch.eye(int(x.shape[1]), dtype=x.dtype, device=x.device)
                x, size, source = block(x, size, source)
            else:
                x = block(x)
        if self.unmerge and size is not None:
            x = unmerge(x, source)
        return x


def _unwrap(m: nn.Module) -> nn.Module:
    return m.inner if isinstance(m, AttentionSites) else m


def _is_attention_block(b: nn.Module) -> bool:
    """A block whose attention can run over reduced tokens (a timm ``Block`` or an EfficientFormer
    ``MetaBlock1d`` whose attention's family adapter merges tokens), or an EfficientFormerV2 block with
    attention (merged inside the attention)."""
    if isinstance(b, EfficientFormerV2Block):
        return isinstance(b.token_mixer, Attention2d)
    mixer = b.attn if isinstance(b, Block) else b.token_mixer if isinstance(b, MetaBlock1d) else None
    family = attention_family(_unwrap(mixer)) if mixer is not None else None
    return family is not None and family.merges_tokens


def find_stages(model: nn.Module) -> list[str]:
    """Names of the Sequentials that end in attention blocks (timm ViT/MobileViT ``Block``s,
    EfficientFormer's ``MetaBlock1d``s after its ``Flat``)."""
    names = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.Sequential) or isinstance(m, TokenStage) or not len(m) or _merged_inside(m):
            continue
        flags = [_is_attention_block(b) for b in m]
        first = flags.index(True) if True in flags else None
        if first is not None and all(flags[first:]):
            names.append(name)
    return names


def _merged_inside(seq: nn.Sequential) -> bool:
    """Whether ``seq``'s attention already merges inside (EfficientFormerV2 after ``apply_tokens``)."""
    return any(isinstance(getattr(b, "token_mixer", None), GridTokenAttention) for b in seq)


def _prefix_tokens(model: nn.Module, stage: str) -> tuple[int, bool]:
    """(protected prefix tokens, whether the stage must unmerge) for one stage."""
    if isinstance(model, VisionTransformer) and stage == "blocks":
        return model.num_prefix_tokens, model.global_pool != "token"
    return 0, True


def selected_stages(model: nn.Module, cfg: TokenConfig) -> list[str]:
    """The attention stages ``cfg.stages`` selects in ``model``; ValueError naming the supported families
    when there is none."""
    stages = [s for s in find_stages(model) if any(fnmatch.fnmatch(s, p) for p in cfg.stages)]
    if not stages:
        raise ValueError(f"the model has no attention stage to reduce tokens in (stages: {cfg.stages}); supported: "
                         "timm ViT/DeiT, MobileViT (v1), EfficientFormer (v1) and EfficientFormerV2 attention blocks; "
                         "remove the recipe's tokens section (--set tokens=null) for this model")
    return stages


def apply_tokens(model: nn.Module, cfg: TokenConfig) -> list[dict]:
    """Wrap ``model``'s attention stages (in place) so that they reduce tokens as ``cfg`` says; returns
    one record per stage (name, tokens merged or kept per block)."""
    stages = selected_stages(model, cfg)
    records = []
    for name in stages:
        seq = model.get_submodule(name)
        protected, must_unmerge = _prefix_tokens(model, name)
        blocks = [i for i, b in enumerate(seq) if _is_attention_block(b)]
        depth = len(blocks)
        merges = cfg.merges(depth) if cfg.method == "tome" else [0] * depth
        if isinstance(seq[blocks[0]], EfficientFormerV2Block):
            records.append(_merge_inside_attention(seq, name, blocks, merges, cfg))
            continue
        prunes = set(cfg.pruning_blocks(depth)) if cfg.method == "evit" else set()
        score = cfg.score if cfg.score != "auto" else ("cls" if protected else "received")
        if score == "cls" and not protected:
            raise ValueError(f"tokens.score: cls needs a class token; stage {name} has none (--set "
                             "tokens.score=received scores each token by the attention it receives)")
        head_only = cfg.head_only and protected > 0 and not must_unmerge
        for i, at in enumerate(blocks):
            seq[at] = TokenBlock(seq[at], protected, merges[i], cfg.keep_rate if i in prunes else None,
                                 cfg.fuse, score, cfg.proportional_attention, head_only and i == depth - 1)
        _set(model, name, TokenStage(seq, unmerge=must_unmerge))
        records.append({"stage": name, "method": cfg.method, "protected": protected, "unmerge": must_unmerge,
                        "merge": merges, "prune_blocks": sorted(prunes), "head_only": head_only})
    return records


def _merge_inside_attention(seq: nn.Sequential, name: str, blocks: list[int], merges: list[int],
                            cfg: TokenConfig) -> dict:
    """EfficientFormerV2: each attention merges inside itself (its MLP's depthwise conv needs the map)."""
    if cfg.method != "tome":
        raise ValueError(f"tokens.method: evit cannot prune stage {name}: EfficientFormerV2 attends on the 2-D "
                         "map and its MLP convolves it, so tokens can only be merged inside the attention "
                         "(use method: tome)")
    for at, r in zip(blocks, merges):
        if r:  # r=0 leaves the block untouched (bit-exact)
            seq[at].token_mixer = GridTokenAttention(seq[at].token_mixer, r, cfg.proportional_attention)
    return {"stage": name, "method": "tome", "protected": 0, "unmerge": True, "merge": merges,
            "prune_blocks": [], "head_only": False, "inside_attention": True}


def token_counts(model: nn.Module, tokens_in: dict[str, int]) -> dict[str, list[int]]:
    """Tokens entering each attention block of each reducing stage, and leaving the last, given the
    tokens entering its first attention block."""
    counts = {}
    for name, stage in model.named_modules():
        if isinstance(stage, TokenStage) and name in tokens_in:
            n, per = tokens_in[name], []
            for block in stage.children():
                if isinstance(block, TokenBlock):
                    per.append(n)
                    n = block.tokens_out(n)
            counts[name] = per + [n]
    return counts


def remove_tokens(model: nn.Module) -> nn.Module:
    """Undo ``apply_tokens`` in place: the original stages and blocks, holding the current children."""
    for name, m in list(model.named_modules()):
        if isinstance(m, GridTokenAttention):
            for n, c in m.named_children():
                setattr(m.original, n, c)
            _set(model, name, m.original)
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
