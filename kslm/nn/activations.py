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


def squareplus(x: torch.Tensor, b: float = 4.0) -> torch.Tensor:
    if b == 0:  # exactly ReLU; the formula's 0/0 branch (and √0 at x = 0) would give NaN gradients
        return torch.relu(x)
    root = torch.sqrt(x * x + b)
    return torch.where(x >= 0, 0.5 * (x + root), 0.5 * b / (root - x))


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


def build_activation(name: str) -> nn.Module:
    if name == "gelu":
        return nn.GELU()
    if name == "silu":
        return nn.SiLU()
    if name == "relu":
        return nn.ReLU()
    if name == "squareplus":
        return SquarePlus()
    raise ValueError(f"unknown activation {name!r} (gelu | silu | relu | squareplus)")


__all__ = ["SquarePlus", "squareplus", "build_activation"]
