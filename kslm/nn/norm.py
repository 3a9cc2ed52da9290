"""LayerNorm / RMSNorm factory (RMSNorm: x / sqrt(mean(x²) + eps) · g, Zhang & Sennrich 2019)."""

from torch import nn


def build_norm(norm_type: str, dim: int, eps: float = 1e-6) -> nn.Module:
    if norm_type == "layernorm":
        return nn.LayerNorm(dim, eps=eps)
    if norm_type == "rmsnorm":
        return nn.RMSNorm(dim, eps=eps)
    raise ValueError(f"unknown norm_type {norm_type!r} (layernorm | rmsnorm)")
