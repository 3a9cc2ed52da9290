"""Activations, including SquarePlus (Barron 2021, arXiv 2112.11687; Su, kexue.fm/archives/8833).

    SquarePlus(x) = (x + sqrt(x² + b)) / 2,   b > 0   (b = 0 is ReLU)

b = 4 is the paper's / jax default; b = 1.52382103 is Su's minimax fit to SoftPlus (max error 0.075931) and
b ≥ 4·ln²2 = 1.9218 makes SquarePlus ≥ SoftPlus everywhere. For x < 0 the algebraically equal form
b / (2(sqrt(x² + b) − x)) avoids the cancellation of x + sqrt(x² + b).
"""

import torch
from torch import nn

SQUAREPLUS_MINIMAX_B = 1.52382103
SQUAREPLUS_UPPER_B = 4 * 0.6931471805599453**2  # 1.9218...


class _SquarePlus(torch.autograd.Function):
    """Forward without cancellation: with s = (|x| + √(x² + b))/2, SquarePlus(x) = s for x ≥ 0 and b/(4s) for x < 0
    (the conjugate of the formula). Backward is the closed form ½(1 + x/√(x² + b)) computed from the saved input, so
    autograd keeps one node instead of differentiating both branches of a `where`; it is built from differentiable ops,
    so double backward (the input gradient penalty) works."""

    @staticmethod
    def forward(ctx, x, b: float):
        ctx.save_for_backward(x)
        ctx.b = b
        s = (x * x).add_(b).sqrt_().add_(x.abs()).mul_(0.5)
        return torch.where(x >= 0, s, s.reciprocal().mul_(0.25 * b))

    @staticmethod
    def backward(ctx, grad):
        # ½(1 + x/r), r = √(x² + b), cancels for x ≪ 0; with q = r + |x| it is ½q/r for x ≥ 0 and ½b/(rq) for x < 0
        (x,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: out of place, so the graph of this backward is kept
            r = torch.sqrt(x * x + ctx.b)
            # |x| as where(x ≥ 0, x, −x), not x.abs(): abs' (0) = 0 would drop the x-term of d/dx(½q/r) at x = 0 and
            # double backward would give f''(0) = 0 instead of b / (2 b^{3/2}); the values are the same
            q = r + torch.where(x >= 0, x, -x)
            return grad * torch.where(x >= 0, 0.5 * q / r, 0.5 * ctx.b / (r * q)), None
        r = (x * x).add_(ctx.b).sqrt_()
        q = x.abs().add_(r)
        return torch.where(x >= 0, q.div(r), r.mul_(q).reciprocal_().mul_(ctx.b)).mul_(grad).mul_(0.5), None


def squareplus(x: torch.Tensor, b: float = 4.0) -> torch.Tensor:
    if b == 0:  # exactly ReLU; the formula's 0/0 branch (and √0 at x = 0) would give NaN gradients
        return torch.relu(x)
    return _SquarePlus.apply(x, b)


class SquarePlus(nn.Module):
    def __init__(self, b: float = 4.0):
        super().__init__()
        if b < 0:
            raise ValueError(f"SquarePlus needs b >= 0, got {b}")
        self.b = b

    def forward(self, x):
        return squareplus(x, self.b)

    def extra_repr(self):
        return f"b={self.b}"


def build_activation(name: str, squareplus_b: float = 4.0) -> nn.Module:
    if name == "gelu":
        return nn.GELU()
    if name == "silu":
        return nn.SiLU()
    if name == "relu":
        return nn.ReLU()
    if name == "squareplus":
        return SquarePlus(squareplus_b)
    raise ValueError(f"unknown activation {name!r} (gelu | silu | relu | squareplus)")


__all__ = ["SquarePlus", "squareplus", "build_activation"]
