"""Rotary position embedding (RoPE, Su et al. 2021, arXiv 2104.09864), interleaved-pair layout.

For the pair (x_{2i}, x_{2i+1}) at position m, with θ_i = 10000^{-2i/d}:
    (x_{2i}, x_{2i+1}) ← (x_{2i} cos mθ_i − x_{2i+1} sin mθ_i,  x_{2i+1} cos mθ_i + x_{2i} sin mθ_i)
i.e. the complex number x_{2i} + i·x_{2i+1} is multiplied by e^{i m θ_i}. This is the bert4keras/RoFormer layout
(not LLaMA's rotate-half). Tables and the rotation are computed in fp32 whatever the input dtype, so
⟨RoPE(q, m), RoPE(k, n)⟩ depends on m − n only.
"""

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    """Applies RoPE to tensors shaped [..., T, dim] given integer positions [T] or [B, T]."""

    def __init__(self, dim: int, base: float = 10000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"RoPE needs an even dimension, got {dim}")
        self.dim, self.base = dim, base
        self.register_buffer("inv_freq", self._inv_freq(), persistent=False)

    def _inv_freq(self, device=None) -> torch.Tensor:
        return (self.base ** (-torch.arange(0, self.dim, 2, dtype=torch.float64, device=device) / self.dim)).float()

    def _apply(self, fn, recurse=True):
        """After any cast or move, recompute θ exactly: fp32 (fp64 for a float64 module), never a rounded copy
        left by `.to(bf16)` or `.to(bf16).float()`."""
        super()._apply(fn, recurse)
        dtype = torch.float64 if self.inv_freq.dtype == torch.float64 else torch.float32
        self.inv_freq = self._inv_freq(self.inv_freq.device).to(dtype)
        return self

    def rotation(self, positions: torch.Tensor) -> torch.Tensor:
        """Complex unit phases e^{i m θ} shaped [..., T, dim/2] (fp32)."""
        angles = positions.to(self.inv_freq.dtype)[..., None] * self.inv_freq
        return torch.polar(torch.ones_like(angles), angles)

    @staticmethod
    def rotate(x: torch.Tensor, phases: torch.Tensor) -> torch.Tensor:
        """x [B, H, T, dim] (or [B, T, dim]); phases [T, dim/2] or [B, T, dim/2]."""
        x32 = x.float()
        if x32.stride(-1) != 1:  # view_as_complex needs unit stride in the pair dimension
            x32 = x32.contiguous()
        xc = torch.view_as_complex(x32.reshape(*x.shape[:-1], -1, 2))
        if phases.dim() == 3 and x.dim() == 4:
            phases = phases[:, None]  # broadcast over heads
        return torch.view_as_real(xc * phases).flatten(-2).to(x.dtype)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.rotate(x, self.rotation(positions))
