"""Gradient penalties (Su, kexue.fm/archives/8796 "输入梯度惩罚与参数梯度惩罚的一个不等式"; 7234; 7787).

    input       P = ε/2 · ‖∂L/∂e‖²       e = the embedding output; double backward (create_graph)
    parameter   P = ε/2 · ‖∇_θ L‖²       its gradient ε·H g by one extra forward/backward (finite difference):
                H g ≈ (∇L(θ + r·g/‖g‖) − ∇L(θ)) · ‖g‖ / r

Dherin et al.'s inequality ‖∇_x f‖² Σ_t (1 + ‖h_t‖²)/(‖W_t‖²‖∇_x h_t‖²) ≤ ‖∇_θ f‖² says the parameter penalty
contains an input penalty; the input one is cheaper. The finite difference avoids double backward, which fused
attention kernels (FlashAttention / SDPA) do not support. Norms are taken in fp32.
"""

from contextlib import contextmanager
from typing import Callable, List, Sequence, Tuple

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from kslm.precision import fp32_or_wider


@contextmanager
def double_backward_attention():
    """Run the forward inside this block when its graph will be differentiated twice: SDPA's math kernel (the fused
    flash / memory-efficient kernels, CPU flash included, have no double backward)."""
    with sdpa_kernel([SDPBackend.MATH]):
        yield


def input_gradient_penalty(loss: torch.Tensor, embedded: torch.Tensor, weight: float) -> torch.Tensor:
    """ε/2 · ‖∂loss/∂embedded‖², differentiable (the graph is kept for the backward of loss + penalty)."""
    (grad,) = torch.autograd.grad(loss, embedded, create_graph=True)
    return 0.5 * weight * grad.to(fp32_or_wider(grad)).square().sum()


def parameter_penalty_gradients(loss: torch.Tensor, params: Sequence[torch.Tensor], recompute: Callable[[], torch.Tensor],
                                weight: float, r: float = 1e-3) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """Gradients of loss + ε/2‖∇_θ loss‖² w.r.t. `params` and the penalty's value ε/2‖∇_θ loss‖².

    `recompute()` must evaluate the same loss again (same batch, same dropout / masking randomness) at the current
    parameter values; the parameters are moved by r·g/‖g‖ for that pass and put back exactly afterwards.
    """
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
    gnorm = torch.sqrt(sum(g.to(fp32_or_wider(g)).square().sum() for g in grads))
    penalty = 0.5 * weight * gnorm.square()
    if weight == 0 or gnorm == 0:
        return grads, penalty.detach()
    saved = [p.detach().clone() for p in params]
    step = r / gnorm
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            p.add_((g.to(fp32_or_wider(g)) * step).to(p.dtype))
    try:
        with torch.enable_grad():
            shifted = torch.autograd.grad(recompute(), params, allow_unused=True)
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
    out = []
    for g, g2 in zip(grads, shifted, strict=True):
        wide = fp32_or_wider(g)
        hg = ((g2 if g2 is not None else torch.zeros_like(g)).to(wide) - g.to(wide)) * (gnorm / r)
        out.append((g.to(wide) + weight * hg).to(g.dtype))
    return out, penalty.detach()


__all__ = ["double_backward_attention", "input_gradient_penalty", "parameter_penalty_gradients"]
