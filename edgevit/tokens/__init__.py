"""Training-free token reduction (ToMe merging, EViT pruning) with static shapes, exportable."""
from edgevit.tokens.config import TokenConfig
from edgevit.tokens.merge import Reduction, bipartite_matching, top_k_pruning, unmerge
from edgevit.tokens.patch import TokenBlock, TokenStage, apply_tokens, find_stages, remove_tokens, token_counts
from edgevit.tokens.summary import count_flops, summarize

__all__ = ["TokenConfig", "Reduction", "bipartite_matching", "top_k_pruning", "unmerge", "TokenBlock",
           "TokenStage", "apply_tokens", "find_stages", "remove_tokens", "token_counts", "count_flops", "summarize"]
