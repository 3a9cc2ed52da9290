"""Amos: Adam-like scaling with adaptive decay towards a model-oriented scale (Tian & Parikh 2022,
arXiv 2210.11693; google-research/jestimator `jestimator/amos.py`; Su, kexue.fm/archives/9344).

Per tensor θ with model-oriented scale η (kslm.optim.roles) and global learning rate ξ (the group's `lr`):

    g      ← clip(g, −clip_value, clip_value)                         (optional, element-wise like optax.clip)
    g2     = mean(g², over the axes the slot reduces)                 slot: row [n, 1] | column [1, m] | scalar
    v      ← β v + (1 − β) g2;       r = (1 − βᵗ) / max(v, ε)
    γ      = ξ² · r · g2 / √(1 + c·√ξ · b)                             c = c_coef = 0.25
    Δθ     = [−ξη · √r · g − (½γ + extra_l2) · θ] / (1 + d·√(ξη) · b)  d = d_coef = 0.25
    b      ← b + γ (1 + b)
    Δθ     ← m ← μ m + (1 − μ) Δθ                                      (optional momentum μ, no debiasing)
    θ      ← θ + Δθ

v and b have the slot's reduced shape: a Linear weight [out, in] keeps one number per output unit, an
embedding [V, d] one per row, everything else one scalar — that and no momentum is Amos's memory saving.
State is fp32 whatever the parameter dtype.

Sharded parameters (DTensors, as FSDP2 makes them) work as they are: v and b are DTensors shaped like the slot,
sharded like the parameter when the slot keeps the sharded dimension and replicated when it reduces it; a reduction
over a sharded dimension is a sum of every shard's partial sum (all-reduced) divided by the global count, so the
update equals the unsharded one.
"""

import math
from typing import Optional

import torch
from torch.optim import Optimizer

from kslm.precision import fp32_or_wider

SLOTS = ("row", "column", "scalar", "full")


def slot_shape(shape: torch.Size, slot: str) -> tuple:
    """The reduced shape of v and b for a tensor of `shape`."""
    if slot not in SLOTS:
        raise ValueError(f"unknown Amos slot {slot!r} ({' | '.join(SLOTS)})")
    if slot == "scalar" or len(shape) == 0:
        return ()
    if slot == "full" or len(shape) == 1:
        return tuple(shape)
    if slot == "row":
        return (shape[0],) + (1,) * (len(shape) - 1)
    return (1,) * (len(shape) - 1) + (shape[-1],)


class Amos(Optimizer):
    """Amos (jestimator's equations). Every param group needs `eta`; `slot` defaults to scalar.

    Args:
        lr: ξ, the global learning rate (jestimator recommends ≈ 1/√(independent batches)).
        beta: EMA rate of the squared-gradient slot v.
        c_coef, d_coef: decay coefficients of γ and of the update (0.25 each).
        extra_l2: additional L2 pull towards 0 (jestimator's experimental option), 0 = off.
        momentum: EMA rate of the updates (None or 0 = no momentum slot).
        clip_value: element-wise gradient clipping (None = off).
        epsilon: floor of v.
    """

    def __init__(self, params, lr: float = 1e-2, eta: Optional[float] = None, slot: str = "scalar", beta: float = 0.999,
                 c_coef: float = 0.25, d_coef: float = 0.25, extra_l2: float = 0.0, momentum: Optional[float] = None,
                 clip_value: Optional[float] = None, epsilon: float = 2.0 ** -125):
        if lr <= 0 or not 0 <= beta < 1:
            raise ValueError(f"Amos needs lr > 0 and 0 ≤ beta < 1, got lr={lr}, beta={beta}")
        defaults = dict(lr=lr, eta=eta, slot=slot, beta=beta, c_coef=c_coef, d_coef=d_coef, extra_l2=extra_l2,
                        momentum=momentum or 0.0, clip_value=clip_value, epsilon=epsilon)
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["eta"] is None:
                raise ValueError("every Amos param group needs its model-oriented scale `eta` (see kslm.optim.roles)")
            slot_shape(torch.Size([1]), group["slot"])

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            xi, eta, beta = group["lr"], group["eta"], group["beta"]
            init_lr = xi * eta
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.to(fp32_or_wider(p))
                if group["clip_value"]:
                    g = g.clamp(-group["clip_value"], group["clip_value"])
                state = self.state[p]
                shape = slot_shape(p.shape, group["slot"])
                reduced = [i for i in range(g.dim()) if not shape or shape[i] < g.shape[i]]
                g2 = _slot_mean_square(g, reduced, keepdim=bool(shape))
                if not state:
                    state["step"] = 0
                    state["v"] = torch.zeros_like(g2)  # fp32 (g is), the slot's shape, a DTensor's placement
                    state["b"] = torch.zeros_like(g2)
                    if group["momentum"]:
                        state["m"] = torch.zeros_like(p, dtype=fp32_or_wider(p))
                state["step"] += 1
                v, b = state["v"], state["b"]
                v.mul_(beta).add_(g2, alpha=1 - beta)
                r = (1 - beta ** state["step"]) / v.clamp(min=group["epsilon"])
                gamma = xi**2 * r * g2 / torch.sqrt(1 + group["c_coef"] * xi**0.5 * b)
                theta = p.to(g.dtype)
                update = (-init_lr * r.sqrt() * g - (0.5 * gamma + group["extra_l2"]) * theta) \
                    / (1 + group["d_coef"] * init_lr**0.5 * b)
                b.add_(gamma * (1 + b))
                if group["momentum"]:
                    update = state["m"].mul_(group["momentum"]).add_(update, alpha=1 - group["momentum"])
                p.add_(update.to(p.dtype))
        return loss


def _slot_mean_square(g: torch.Tensor, reduced: list, keepdim: bool) -> torch.Tensor:
    """mean(g², over `reduced`). For a DTensor: the sum of the shards' partial sums (all-reduced: shards may be
    uneven) over the global count."""
    if not reduced:
        return g.square()
    placements = getattr(g, "placements", None)
    if placements is None:
        return g.square().mean(dim=reduced, keepdim=keepdim)
    out = g.square().sum(dim=reduced, keepdim=keepdim) / math.prod(g.shape[i] for i in reduced)
    if any(pl.is_partial() for pl in out.placements):
        from torch.distributed.tensor import Replicate

        out = out.redistribute(out.device_mesh, [Replicate() if pl.is_partial() else pl for pl in out.placements])
    return out


__all__ = ["Amos", "slot_shape"]
