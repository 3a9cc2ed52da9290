"""LayerNorm / RMSNorm factory (RMSNorm: x / sqrt(mean(x²) + eps) · g, Zhang & Sennrich 2019).

With fp32 (or fp64) weights these are torch's modules unchanged (under bf16 autocast torch already normalises in
fp32). With bf16 / fp16 weights (a module cast down, Lightning's `bf16-true`) torch keeps the statistics in fp32
but multiplies the normalised x by the gain in bf16, rounding twice (up to 2 ulp); here the whole norm runs in fp32
and the result is rounded once (kslm.precision: norms at fp32 or wider).
"""

from torch import nn
from torch.nn import functional as F

from kslm.precision import fp32_or_wider


class LayerNorm(nn.LayerNorm):
    def forward(self, x):
        if self.weight is None or self.weight.dtype == fp32_or_wider(self.weight):
            return super().forward(x)
        wide = fp32_or_wider(self.weight)
        bias = self.bias.to(wide) if self.bias is not None else None
        return F.layer_norm(x.to(wide), self.normalized_shape, self.weight.to(wide), bias, self.eps).to(x.dtype)


class RMSNorm(nn.RMSNorm):
    def forward(self, x):
        if self.weight is None or self.weight.dtype == fp32_or_wider(self.weight):
            return super().forward(x)
        wide = fp32_or_wider(self.weight)
        return F.rms_norm(x.to(wide), self.normalized_shape, self.weight.to(wide), self.eps).to(x.dtype)


def build_norm(norm_type: str, dim: int, eps: float = 1e-6) -> nn.Module:
    if norm_type == "layernorm":
        return LayerNorm(dim, eps=eps)
    if norm_type == "rmsnorm":
        return RMSNorm(dim, eps=eps)
    raise ValueError(f"unknown norm_type {norm_type!r} (layernorm | rmsnorm)")
