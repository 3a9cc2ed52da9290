"""Optimisers by name (pure torch, no lightning); tasks build them through kslm.optim.build (config.py).

    adamw       torch AdamW; weight decay on matrices only (norms, biases, scales, embeddings exempt); fused on CUDA
    amos        Amos (amos.py): lr = ξ; η and slot shapes from the parameters' roles (roles.py)
    amos_adamw  the Amos-derived AdamW recipe (amos_adamw.py): lr = α₀; ‖ε₀‖ from the roles; decay α₀/(2q)
    eg_adamw    AdamW wrapped by exponentiated-gradient step-size adaptation (eg.py)

`build_optimizer(name, module, lr=…, weight_decay=…, betas=…, **options)`; `options` are the optimiser's own
(see OPTIONS); unknown ones raise ValueError. `amos_adamw`'s schedule options (decay, p, half_life) belong to
its LambdaLR (amos_adamw.AmosDecay) and are ignored here.
"""

from collections import defaultdict
from typing import Dict, List

import torch
from torch import nn

from kslm.optim.amos import Amos
from kslm.optim.amos_adamw import AmosAdamW, eps0_norm
from kslm.optim.eg import ExponentiatedGradient
from kslm.optim.roles import parameter_roles

OPTIMIZERS = ("adamw", "amos", "amos_adamw", "eg_adamw")
OPTIONS = {
    "adamw": ("eps",),
    "amos": ("xi", "beta", "c_coef", "d_coef", "extra_l2", "momentum", "clip_value"),
    "amos_adamw": ("eps", "q", "decay_gains", "decay", "p", "half_life"),
    "eg_adamw": ("eps", "gain_lr", "scale_lr", "gain_bounds", "scale_bounds"),
}


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


def amos_groups(module: nn.Module) -> List[Dict]:
    """One Amos group per (η, slot): η and the slot shape come from each tensor's role."""
    groups = defaultdict(list)
    for r in parameter_roles(module):
        groups[(r.eta, r.slot)].append(r.param)
    return [{"params": ps, "eta": eta, "slot": slot} for (eta, slot), ps in groups.items()]


def amos_adamw_groups(module: nn.Module, alpha0: float, q: float = 1.0, decay_gains: bool = False) -> List[Dict]:
    """One group per tensor: its ‖ε₀‖, and the decay α₀/(2q) (0 for exempt norm gains)."""
    return [{"params": [r.param], "eps0": eps0_norm(r.param.numel(), r.role, r.eta),
             "weight_decay": 0.0 if r.role == "gain" and not decay_gains else alpha0 / (2 * q)}
            for r in parameter_roles(module)]


def adamw_implementation(module: nn.Module) -> Dict:
    """torch.optim.AdamW's implementation: fused (one kernel for all tensors) when every trainable parameter is a
    floating-point CUDA tensor; otherwise torch's default (on CPU that keeps the numbers of earlier runs bit for bit)."""
    params = [p for p in module.parameters() if p.requires_grad]
    if params and all(p.is_cuda and p.is_floating_point() for p in params):
        return {"fused": True}
    return {}


def build_optimizer(name: str, module: nn.Module, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.98),
                    **options) -> torch.optim.Optimizer:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r} (one of: {', '.join(OPTIMIZERS)})")
    unknown = sorted(set(options) - set(OPTIONS[name]))
    if unknown:
        raise ValueError(f"unknown {name} options: {unknown} (known: {', '.join(OPTIONS[name])})")
    betas = tuple(betas)
    if name == "amos":
        options.pop("xi", None)  # the caller resolves ξ into lr
        return Amos(amos_groups(module), lr=lr, **options)
    eps = options.pop("eps", 1e-8)
    if name == "amos_adamw":
        groups = amos_adamw_groups(module, lr, options.pop("q", 1.0), options.pop("decay_gains", False))
        return AmosAdamW(groups, lr=lr, betas=betas, eps=eps)
    adamw = torch.optim.AdamW(param_groups(module, weight_decay), lr=lr, betas=betas, eps=eps, **adamw_implementation(module))
    if name == "eg_adamw":
        return ExponentiatedGradient(adamw, **options)
    return adamw


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the optimiser's state tensors (slots), a wrapped base's included (EG shares its state dict)."""
    total = sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
                if isinstance(v, torch.Tensor))
    base = getattr(optimizer, "base", None)
    return total + (state_bytes(base) if base is not None and base.state is not optimizer.state else 0)


__all__ = ["OPTIMIZERS", "OPTIONS", "adamw_implementation", "amos_groups", "amos_adamw_groups", "build_optimizer",
           "param_groups", "state_bytes"]
