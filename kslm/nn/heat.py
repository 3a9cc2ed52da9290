"""Heat-equation auxiliary objective for masked-LM pretraining (experimental; kexue.fm/archives/9359).

Su, "用热传导方程来指导自监督学习" (kexue.fm/archives/9359) reads QB-Heat (Chen et al., arXiv 2211.13228) as the
first-order simplification of the Laplace equation for a feature map, ∂z/∂x = A z: neighbouring feature vectors
differ by one shared linear map, z(x + Δ) ≈ (I + A)^Δ z(x). QB-Heat extrapolates the features of masked image
quarters from a visible quarter that way instead of feeding a shared [MASK] vector; Su proposes, for text, to predict
the features of masked tokens from the features of their visible neighbours (no experiments in the post). Here:

    for a masked position t, with l = nearest visible position left of t (k = t − l ≤ K) and
    r = nearest visible position right of t (m = r − t ≤ K),

        extrapolate:  ẑ_t = (I + A)^k h_l
        interpolate:  ẑ_t = m/(k+m) · (I + A)^k h_l + k/(k+m) · (I − A)^m h_r      (one side alone if the other
                                                                                   is missing or farther than K)

        L_heat = mean over predicted t of  (1/d) ‖ẑ_t − sg(LN(z_t))‖²

h = the student's final hidden states (the backbone run on the masked input), z = the teacher's (the same backbone on
the unmasked input, no gradient: "sg"), LN = layer norm without parameters (as data2vec's targets: every dimension has
unit variance, so predicting 0 scores 1.0 and the loss is comparable across models). Going right by one position is
(I + A); going left is its first-order inverse (I − A), so both sides share the one map A of ∂z/∂x = A z. A starts at
0 (copy the neighbour / plain linear interpolation). Positions without a usable neighbour are not scored.
"""

from typing import Literal, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from kslm.precision import fp32_or_wider


def nearest_visible(masked: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """masked [B, T] bool → (distance to the nearest visible position on the left, on the right), each [B, T] long;
    0 where there is none (and at visible positions)."""
    B, T = masked.shape
    pos = torch.arange(T, device=masked.device).expand(B, T)
    left = torch.where(masked, torch.full_like(pos, -1), pos).cummax(-1).values  # last visible index ≤ t
    right = torch.where(masked, torch.full_like(pos, T), pos).flip(-1).cummin(-1).values.flip(-1)  # first visible ≥ t
    k = torch.where(masked & (left >= 0), pos - left, 0)
    m = torch.where(masked & (right < T), right - pos, 0)
    return k, m


class HeatPredictor(nn.Module):
    """Predicts masked positions' features from visible neighbours through the shared linear map I ± A (see module doc).

    Args:
        d: feature size.
        mode: extrapolate (left neighbour only) or interpolate (both sides, weighted by distance).
        max_distance: K; neighbours farther away are not used.
    """

    def __init__(self, d: int, mode: Literal["extrapolate", "interpolate"] = "interpolate", max_distance: int = 8):
        super().__init__()
        if mode not in ("extrapolate", "interpolate"):
            raise ValueError(f"mode must be extrapolate or interpolate, got {mode!r}")
        if max_distance < 1:
            raise ValueError(f"max_distance must be ≥ 1, got {max_distance}")
        self.mode, self.max_distance = mode, max_distance
        self.A = nn.Parameter(torch.zeros(d, d))

    def propagate(self, h: torch.Tensor, steps: torch.Tensor, sign: float) -> torch.Tensor:
        """(I + sign·A)^steps h for rows h [N, d] and steps [N] (≥ 1), by repeated application."""
        out, v = h, h
        for j in range(1, int(steps.max()) + 1 if steps.numel() else 1):
            v = v + sign * (v @ self.A.to(v.dtype).T)
            out = torch.where((steps == j)[:, None], v, out)
        return out

    def forward(self, hidden: torch.Tensor, masked: torch.Tensor):
        """hidden [B, T, d], masked [B, T] bool → (predictions [N, d], (batch index [N], position [N]))."""
        dtype = fp32_or_wider(hidden)
        k, m = nearest_visible(masked)
        K = self.max_distance
        use_l = (k > 0) & (k <= K)
        use_r = (m > 0) & (m <= K) if self.mode == "interpolate" else torch.zeros_like(use_l)
        b, t = (use_l | use_r).nonzero(as_tuple=True)
        k, m, use_l, use_r = k[b, t], m[b, t], use_l[b, t], use_r[b, t]
        h = hidden.to(dtype)
        from_l = self.propagate(h[b, (t - k).clamp(min=0)], k.clamp(min=1), 1.0)
        from_r = self.propagate(h[b, (t + m).clamp(max=hidden.shape[1] - 1)], m.clamp(min=1), -1.0)
        # linear interpolation: the nearer side weighs more; a missing side gets weight 0
        both = use_l & use_r
        w_l = torch.where(both, m.to(dtype) / (k + m).clamp(min=1).to(dtype), use_l.to(dtype))
        pred = w_l[:, None] * from_l + (1 - w_l)[:, None] * from_r
        return pred, (b, t)

    def loss(self, hidden: torch.Tensor, target: torch.Tensor, masked: torch.Tensor):
        """→ (mean over predicted positions of (1/d)‖ẑ − LN(target)‖², number of predicted positions).
        `target` [B, T, d] is detached here (stop-gradient)."""
        pred, (b, t) = self(hidden, masked)
        if pred.shape[0] == 0:
            return hidden.new_zeros((), dtype=pred.dtype) + 0 * self.A.sum(), 0
        z = target.detach()[b, t].to(pred.dtype)
        z = F.layer_norm(z, z.shape[-1:])
        return (pred - z).pow(2).mean(-1).mean(), pred.shape[0]


__all__ = ["HeatPredictor", "nearest_visible"]
