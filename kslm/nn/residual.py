"""Residual wiring: Pre-Norm, Post-Norm and DeepNorm (Wang et al. 2022, arXiv 2203.00555; Su, kexue.fm/archives/8978).

    pre       x_{l+1} = x_l + F(Norm(x_l))
    post      x_{l+1} = Norm(x_l + F(x_l))
    deepnorm  x_{l+1} = Norm(α·x_l + F(x_l))      α multiplies the skip path, inside the norm

DeepNorm also scales, once at init, the weights of the value and output projections and of the FFN by β
(never Q or K). The constants are the DeepNet paper's, N = number of blocks (microsoft/torchscale's code has 1.15,
not 0.87, in the enc-dec encoder's β):
    decoder-only / encoder-only   α = (2N)^{1/4},            β = (8N)^{-1/4}
    enc-dec encoder               α = 0.81 (N⁴M)^{1/16},     β = 0.87 (N⁴M)^{-1/16}
    enc-dec decoder               α = (3M)^{1/4},            β = (12M)^{-1/4}
"""

from typing import Optional, Tuple

from torch import nn

from kslm.nn.norm import build_norm


def deepnorm_constants(n_blocks: float, arch: str = "decoder", n_decoder_blocks: Optional[int] = None) -> Tuple[float, float]:
    """(α, β) for a stack of `n_blocks` Transformer blocks (two residual sub-layers each)."""
    if n_blocks <= 0:
        raise ValueError(f"DeepNorm needs at least one block, got {n_blocks}")
    if arch in ("decoder", "encoder"):
        return (2 * n_blocks) ** 0.25, (8 * n_blocks) ** -0.25
    if arch in ("encdec_encoder", "encdec_decoder"):
        if not n_decoder_blocks:
            raise ValueError("encoder-decoder DeepNorm constants need n_decoder_blocks")
        N, M = n_blocks, n_decoder_blocks
        if arch == "encdec_encoder":
            return 0.81 * (N**4 * M) ** (1 / 16), 0.87 * (N**4 * M) ** (-1 / 16)
        return (3 * M) ** 0.25, (12 * M) ** -0.25
    raise ValueError(f"unknown DeepNorm arch {arch!r}")


class Residual(nn.Module):
    """One residual sub-layer around `sublayer` (attention, FFN or GAU) in the chosen norm style."""

    def __init__(self, sublayer: nn.Module, style: str, dim: int, norm_type: str, alpha: float = 1.0, dropout: float = 0.0):
        super().__init__()
        if style not in ("pre", "post", "deepnorm"):
            raise ValueError(f"unknown norm style {style!r} (pre | post | deepnorm)")
        if style != "deepnorm" and alpha != 1.0:
            raise ValueError("α ≠ 1 is only meaningful with DeepNorm")
        self.sublayer = sublayer
        self.style = style
        self.alpha = alpha
        self.norm = build_norm(norm_type, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, ctx):
        if self.style == "pre":
            return x + self.dropout(self.sublayer(self.norm(x), ctx))
        skip = x * self.alpha if self.alpha != 1.0 else x
        return self.norm(skip + self.dropout(self.sublayer(x, ctx)))

    def extra_repr(self):
        return f"style={self.style}, alpha={self.alpha:.4g}"
