"""Arithmetic precision shared by every floor: fp32 for half / bf16 / fp32 tensors, fp64 for fp64 tensors.

Softmax/logsumexp, pointer logits, losses, scan products and optimiser slots run at `fp32_or_wider`: bf16/fp16
products and sums over long ranges are inaccurate (relative error up to n·2⁻⁸ in bf16 over n terms), and a float64
module keeps float64 (the references the tests compare with). A leaf module: it imports torch only.
"""

import torch


def fp32_or_wider(t: torch.Tensor) -> torch.dtype:
    """fp32, or the tensor's dtype when it is wider (fp64)."""
    return torch.promote_types(t.dtype, torch.float32)


def to_fp32_or_wider(t: torch.Tensor) -> torch.Tensor:
    return t.to(fp32_or_wider(t))


__all__ = ["fp32_or_wider", "to_fp32_or_wider"]
