"""Exponentiated-gradient step-size adaptation (Su, kexue.fm/archives/8968; Amid, Anil, Fifty & Warmuth,
"Step-size Adaptation Using Exponentiated Gradient Updates", arXiv 2202.00145).

A wrapper over a base optimiser (AdamW by default). With d_t the base optimiser's update of a tensor at step t
(what it would add to θ) and g_t the current gradient, the applied step is s_t · ν_t ⊙ d_t, where

    h_t   = −g_t ⊙ d_{t−1} / (rms(g_t) · rms(d_{t−1}))          (normalised ∂L/∂ν, sign flipped: EG ascends −h)
    ν_t   = clamp(ν_{t−1} ⊙ exp(γ h_t), ν_min, ν_max)            per-coordinate gain, ν_0 = 1, fp32
    s_t   = clamp(s_{t−1} · exp(γ_s · cos(−g_t, d_{t−1})), s_min, s_max)   global step-size scale, s_0 = 1
    θ_{t+1} = θ_t + s_t ν_t ⊙ d_t

For plain GD, d = −ηg and h_t ∝ g_{t−1} ⊙ g_t: Su's ν_{t+1} = ν_t ⊙ exp(γ g_{t−1} ⊙ g_t) — consecutive gradients with
the same sign raise a coordinate's step, alternating signs lower it. The RMS normalisation makes γ unit-free
(exp(γ Σ g g) is otherwise scale-dependent and can explode); the clamps bound what is left. The cosine between
the current gradient and the previous (momentum) update drives the global scale, as the paper's global step-size.
The state is flat, as torch.distributed.checkpoint expects of an optimiser: the base's per-parameter state and
EG's (`eg_gain`, `eg_prev`) share one dict per parameter, and s_t is a value of every param group (`eg_scale`), so
a resumed run continues identically from a plain or a sharded (fsdp2) checkpoint. Under DDP the gradients are
all-reduced before the step, so the state is identical on every rank; on FSDP2's sharded parameters (DTensors) the
sums and RMS above are over the whole tensor (each reduction all-reduced), so the gains and the scale are those of
the unsharded run.
"""

from typing import Tuple

import torch
from torch.optim import Optimizer

from kslm.precision import fp32_or_wider


class ExponentiatedGradient(Optimizer):
    """EG gains over `base` (which keeps its own param groups: LR schedulers act on them, shared here).

    Args:
        base: the wrapped optimiser.
        gain_lr: γ of the per-coordinate gains.
        scale_lr: γ_s of the global scale (0 = fixed scale 1).
        gain_bounds: (ν_min, ν_max).
        scale_bounds: (s_min, s_max).
    """

    def __init__(self, base: Optimizer, gain_lr: float = 0.01, scale_lr: float = 0.01,
                 gain_bounds: Tuple[float, float] = (0.1, 10.0), scale_bounds: Tuple[float, float] = (0.01, 100.0)):
        if gain_lr < 0 or scale_lr < 0 or not 0 < gain_bounds[0] <= 1 <= gain_bounds[1] \
                or not 0 < scale_bounds[0] <= 1 <= scale_bounds[1]:
            raise ValueError("EG needs gain_lr, scale_lr ≥ 0 and bounds lo ≤ 1 ≤ hi")
        self.base = base
        self.eg = dict(gain_lr=gain_lr, scale_lr=scale_lr, gain_bounds=tuple(gain_bounds), scale_bounds=tuple(scale_bounds))
        super().__init__(base.param_groups, base.defaults)
        for group in base.param_groups:
            group.setdefault("eg_scale", 1.0)
        self._share()

    def _share(self) -> None:
        """One set of param groups (the scheduler's LR reaches the base) and one state dict per parameter."""
        self.param_groups = self.base.param_groups
        self.base.state = self.state

    @property
    def scale(self) -> float:
        return float(self.param_groups[0]["eg_scale"])

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        grads = {p: p.grad.to(fp32_or_wider(p)) for p in params}
        # global scale from the alignment of the current gradient with the previous update
        dot, squares = 0.0, {}  # squares: Σg², Σd²_{t−1} of each tensor (each a collective on a DTensor: once)
        for p in params:
            prev = self.state[p].get("eg_prev")
            if prev is not None:
                dot -= _whole((grads[p] * prev).sum())
                squares[p] = _whole(grads[p].square().sum()), _whole(prev.square().sum())
        gg, dd = sum(g for g, _ in squares.values()), sum(d for _, d in squares.values())
        scale = self.scale
        if gg > 0 and dd > 0:
            lo, hi = self.eg["scale_bounds"]
            scale = min(max(scale * torch.exp(torch.tensor(self.eg["scale_lr"] * dot / (gg * dd) ** 0.5,
                                                           dtype=torch.float64)).item(), lo), hi)
            for group in self.param_groups:
                group["eg_scale"] = scale
        before = {p: p.detach().clone() for p in params}
        self.base.step()  # first: it sets up its state when a parameter has none
        lo, hi = self.eg["gain_bounds"]
        for p in params:
            state = self.state[p]
            if "eg_gain" not in state:
                state["eg_gain"] = torch.ones_like(p, dtype=fp32_or_wider(p))
            if p in squares:
                denom = (squares[p][0] * squares[p][1]) ** 0.5 / p.numel()  # rms(g) · rms(d_{t−1})
                if denom > 0:
                    state["eg_gain"].mul_(torch.exp(-self.eg["gain_lr"] * grads[p] * state["eg_prev"] / denom)).clamp_(lo, hi)
            d = p.to(fp32_or_wider(p)) - before[p].to(fp32_or_wider(p))
            state["eg_prev"] = d
            p.copy_((before[p].to(d.dtype) + scale * state["eg_gain"] * d).to(p.dtype))
        return loss

    def load_state_dict(self, state_dict):
        if "base" in state_dict:  # written before the state was flat: {..., "base": base's, "eg": {"scale": s}}
            state_dict = _flat(state_dict)
        super().load_state_dict(state_dict)
        self.base.param_groups = self.param_groups
        self._share()


def _whole(x: torch.Tensor) -> float:
    """A reduction's value over the whole tensor: a DTensor's partial result is all-reduced first."""
    full = getattr(x, "full_tensor", None)
    return float(full() if full is not None else x)


def _flat(old: dict) -> dict:
    """An old nested EG state dict in the flat form."""
    base, eg = old["base"], old["eg"]
    state = {k: {**base["state"].get(k, {}), **{f"eg_{n}": v for n, v in old["state"].get(k, {}).items()}}
             for k in set(base["state"]) | set(old["state"])}
    groups = [{**g, "eg_scale": float(eg["scale"])} for g in base["param_groups"]]
    return {"state": state, "param_groups": groups}


__all__ = ["ExponentiatedGradient"]
