"""Optimiser arithmetic precision: slots and updates in fp32 for half / bf16 / fp32 tensors, fp64 for fp64."""

import torch


def fp32_or_wider(t: torch.Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)
