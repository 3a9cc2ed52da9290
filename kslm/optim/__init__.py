"""Optimisers by name — the one place every task builds its optimiser (pure torch, no lightning).

`build_optimizer("adamw", module, lr=…, weight_decay=…)` puts weight decay on matrices only: norms, biases,
per-dimension scales and embeddings are exempt by default.
"""

from typing import Dict, List

import torch
from torch import nn

OPTIMIZERS = ("adamw",)


def param_groups(module: nn.Module, weight_decay: float, decay_embeddings: bool = False) -> List[Dict]:
    """Two groups: matrices (decayed) and everything else (norm gains, biases, scale/offsets, embeddings)."""
    embedding_params = set()
    if not decay_embeddings:
        for m in module.modules():
            if isinstance(m, nn.Embedding):
                embedding_params.add(id(m.weight))
    decay, no_decay, seen = [], [], set()
    for p in module.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 and id(p) not in embedding_params else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(name: str, module: nn.Module, lr: float, weight_decay: float = 0.0, **kwargs) -> torch.optim.Optimizer:
    if name == "adamw":
        betas = tuple(kwargs.pop("betas", (0.9, 0.98)))
        eps = kwargs.pop("eps", 1e-8)
        if kwargs:
            raise ValueError(f"unknown adamw options: {sorted(kwargs)}")
        return torch.optim.AdamW(param_groups(module, weight_decay), lr=lr, betas=betas, eps=eps)
    raise ValueError(f"unknown optimizer {name!r} (one of: {', '.join(OPTIMIZERS)})")
