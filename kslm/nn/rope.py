"""Rotary position embedding (RoPE, Su et al. 2021, arXiv 2104.09864; Su, kexue.fm/archives/8265), interleaved pairs.

For the pair (x_{2i}, x_{2i+1}) at position m, with θ_i = 10000^{-2i/d}:
    (x_{2i}, x_{2i+1}) ← (x_{2i} cos mθ_i − x_{2i+1} sin mθ_i,  x_{2i+1} cos mθ_i + x_{2i} sin mθ_i)
i.e. the complex number x_{2i} + i·x_{2i+1} is multiplied by e^{i m θ_i}. This is the bert4keras/RoFormer layout
(not LLaMA's rotate-half). Tables and the rotation are computed in fp32 for fp32 / bf16 / fp16 (θ computed in float64,
rounded once to fp32), so ⟨RoPE(q, m), RoPE(k, n)⟩ depends on m − n only; a float64 module or float64 input gets
float64 throughout (θ, m·θ, the phases and the product), accurate to ~1e-11 rad even at m = 10⁵, where the fp32 θ
alone is off by ~m·θ·2⁻²⁴ ≈ 10⁻³ rad.
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

    def _inv_freq(self, device=None, dtype=torch.float32) -> torch.Tensor:
        """θ_i = base^{-2i/d} computed in float64; rounded once to fp32 unless `dtype` is float64."""
        theta = self.base ** (-torch.arange(0, self.dim, 2, dtype=torch.float64, device=device) / self.dim)
        return theta if dtype == torch.float64 else theta.float()

    def _apply(self, fn, recurse=True):
        """After any cast or move, recompute θ exactly: fp32 (fp64 for a float64 module), never a rounded copy
        left by `.to(bf16)` or `.to(bf16).float()`, nor an fp32 copy cast up by `.double()`."""
        super()._apply(fn, recurse)
        dtype = torch.float64 if self.inv_freq.dtype == torch.float64 else torch.float32
        self.inv_freq = self._inv_freq(self.inv_freq.device, dtype)
        return self

    def rotation(self, positions: torch.Tensor, dtype=None) -> torch.Tensor:
        """Complex unit phases e^{i m θ} shaped [..., T, dim/2]: complex64 from fp32 θ, or complex128 from float64 θ
        when the module is float64 or `dtype` is torch.float64."""
        inv_freq = self.inv_freq
        if dtype == torch.float64 and inv_freq.dtype != torch.float64:
            inv_freq = self._inv_freq(inv_freq.device, torch.float64)
        angles = positions.to(inv_freq.dtype)[..., None] * inv_freq
        return torch.polar(torch.ones_like(angles), angles)

    @staticmethod
    def rotate(x: torch.Tensor, phases: torch.Tensor) -> torch.Tensor:
        """x [B, H, T, dim] (or [B, T, dim]); phases [T, dim/2] or [B, T, dim/2]. In fp32 (complex64), or in float64
        (complex128) when x is float64 or the phases are complex128; the result has x's dtype."""
        wide = x.dtype == torch.float64 or phases.dtype == torch.complex128
        xw = x.double() if wide else x.float()
        if xw.stride(-1) != 1:  # view_as_complex needs unit stride in the pair dimension
            xw = xw.contiguous()
        xc = torch.view_as_complex(xw.reshape(*x.shape[:-1], -1, 2))
        if wide:
            phases = phases.to(torch.complex128)
        if phases.dim() == 3 and x.dim() == 4:
            phases = phases[:, None]  # broadcast over heads
        return torch.view_as_real(xc * phases).flatten(-2).to(x.dtype)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.rotate(x, self.rotation(positions, x.dtype))
