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

    def rotation(self, positions: torch.Tensor) -> torch.Tensor:
        """Complex unit phases e^{i m θ} shaped [..., T, dim/2] (fp32)."""
        inv_freq = self.inv_freq
        if inv_freq.dtype in (torch.float16, torch.bfloat16):  # module cast by .to(bf16) / .half(): keep fp32 θ
            inv_freq = self._inv_freq(inv_freq.device)
        angles = positions.to(torch.float32)[..., None] * inv_freq
        return torch.polar(torch.ones_like(angles), angles)

    @staticmethod
    def rotate(x: torch.Tensor, phases: torch.Tensor) -> torch.Tensor:
        """x [B, H, T, dim] (or [B, T, dim]); phases [T, dim/2] or [B, T, dim/2]."""
        xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
        if phases.dim() == 3 and x.dim() == 4:
            phases = phases[:, None]  # broadcast over heads
        return torch.view_as_real(xc * phases).flatten(-2).to(x.dtype)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.rotate(x, self.rotation(positions))
