"""The Amos-derived AdamW recipe (Su, kexue.fm/archives/9344, "从Amos优化器思考深度学习中的几个'水很深'的问题"):
learning rate that follows each tensor's init scale, weight decay tied to it, a principled LR decay.

    u_t  = m̂_t / (√v̂_t + eps)                                    (Adam's direction)
    θ   ← θ − ρ_t θ − α₀ · ‖ε₀‖ · D(t) · u_t / ‖u_t‖             (per tensor: the update norm is α₀‖ε₀‖D(t))
    ρ_t  = α₀² / (2q) · D(t)                                      (decoupled decay, q = 1)
    ‖ε₀‖ = √(2k) σ   for matrices and embeddings (k entries, σ = the role's scale η, kslm.optim.roles)
    ‖ε₀‖ = √k · 0.5  for biases and norm gains (Amos's σ = 0.5)
    D(t) = 1 / (α₀ p t + 1)²     constant convergence rate p             ("constant_rate")
    D(t) = 1 / (2 α₀ p₀ t + 1)   slowing convergence p_t = p₀ e^{−S_t}   ("inverse_time", Su's preference)

Implementation: the group `lr` is α₀·D(t) (times warmup), set by a LambdaLR with `AmosDecay`, and the decay is
lr · weight_decay with weight_decay = α₀ / (2q) — so ρ_t = α₀²/(2q)·D(t) exactly, although, as in torch's AdamW,
the decay is multiplied by the LR. Norm gains can be exempted from the decay (`decay_gains=False`): decaying γ
(init 1) towards 0 contradicts "γ stays near 1".
"""

import math
from typing import Optional

import torch
from torch.optim import Optimizer

from kslm.precision import fp32_or_wider

DECAYS = ("inverse_time", "constant_rate")


class AmosDecay:
    """D(t) as a picklable LambdaLR multiplier, times a linear warmup over `warmup_steps`.

    `p` is Su's cos(u, ε) (constant_rate) or p₀ (inverse_time). Without it, p comes from `half_life`, the step at
    which D = ½: (α₀ p T + 1)² = 2 ⇒ α₀ p = (√2 − 1)/T;   2 α₀ p₀ T + 1 = 2 ⇒ 2 α₀ p₀ = 1/T.
    """

    def __init__(self, alpha0: float, kind: str = "inverse_time", p: Optional[float] = None,
                 half_life: Optional[float] = None, warmup_steps: int = 0):
        if kind not in DECAYS:
            raise ValueError(f"unknown Amos decay {kind!r} ({' | '.join(DECAYS)})")
        if p is None:
            if not half_life or half_life <= 0:
                raise ValueError("AmosDecay needs p or a positive half_life")
            p = (math.sqrt(2) - 1) / (alpha0 * half_life) if kind == "constant_rate" else 1 / (2 * alpha0 * half_life)
        self.alpha0, self.kind, self.p, self.warmup = alpha0, kind, p, warmup_steps

    def decay(self, t: float) -> float:
        if self.kind == "constant_rate":
            return 1 / (self.alpha0 * self.p * t + 1) ** 2
        return 1 / (2 * self.alpha0 * self.p * t + 1)

    def __call__(self, step: int) -> float:
        warm = (step + 1) / self.warmup if step < self.warmup else 1.0
        return warm * self.decay(step)


def eps0_norm(numel: int, role: str, eta: float) -> float:
    """‖ε₀‖ of a tensor: √(2k)σ for matrices/embeddings, √k·0.5 for biases and gains."""
    if role in ("bias", "gain"):
        return math.sqrt(numel) * 0.5
    return math.sqrt(2 * numel) * eta


class AmosAdamW(Optimizer):
    """AdamW whose per-tensor step is lr·‖ε₀‖·u/‖u‖. Each param group needs `eps0` (‖ε₀‖ of its tensors).

    Args:
        lr: α₀ (scheduled as α₀·D(t) by AmosDecay).
        betas, eps: Adam's moments and epsilon.
        weight_decay: decay coefficient per unit LR, α₀/(2q) for the recipe.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.98), eps: float = 1e-8, weight_decay: float = 0.0,
                 eps0: Optional[float] = None):
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, eps0=eps0)
        super().__init__(params, defaults)
        if any(g["eps0"] is None for g in self.param_groups):
            raise ValueError("every AmosAdamW param group needs ‖ε₀‖ (`eps0`)")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            (b1, b2), lr = group["betas"], group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.to(fp32_or_wider(p))
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=fp32_or_wider(p))
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=fp32_or_wider(p))
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                u = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + group["eps"])
                step = u * (lr * group["eps0"] / u.norm().clamp(min=1e-30))
                if group["weight_decay"]:
                    p.mul_(1 - lr * group["weight_decay"])
                p.sub_(step.to(p.dtype))
        return loss


__all__ = ["AmosAdamW", "AmosDecay", "eps0_norm"]
