"""Attention masks and the three normalisers.

Masks (bert4keras LM_Mask / UniLM_Mask; Su, kexue.fm/archives/9529):
    causal        allowed[i, j] = j ≤ i
    bidirectional allowed[i, j] = 1
    prefix        allowed[b, i, j] = j < prefix_b  or  j ≤ i       (UniLM: the prefix attends both ways)
Padding keys are never attended. Query i sits at absolute position past + i when keys come from a cache.

Normalisers (a = q·k/√s; n_i = number of keys row i may see — padding and the mask excluded):
    softmax       softmax(a)
    softmax_plus  softmax(log(max(n_i, 16)) / log(n₀) · a)     entropy-invariant scale (kexue.fm/archives/8823),
                  n₀ = train_length (512 in GAU-α). Done by scaling each query row, so SDPA kernels still apply.
    relu2         relu(a)² / n_i                                (FLASH/GAU as Su defines it, kexue.fm/archives/8934)

Kernels (`attend(kernel=…)`, the backbone's attention_kernel):
    dense          SDPA as it is (flash / cuDNN when q, k and v have one size) and, for GAU's unequal sizes on CUDA
                   and for relu², the full T × S score matrix
    linear_memory  never the T × S scores: values split into q/k-sized heads for SDPA's fused kernels, relu² in
                   checkpointed query chunks (kslm/nn/linear_memory_attention.py); dense when attention dropout is on
    auto           linear_memory on CUDA, dense elsewhere (on CPU the split path only adds FLOPs)
"""

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from kslm.nn.linear_memory_attention import QUERY_CHUNK, relu2_chunked, split_value_sdpa

KERNELS = ("auto", "dense", "linear_memory")


@dataclass
class AttentionMask:
    """allowed: [B, 1, T, S] bool (True = attend) or None for the kernels' fast paths (then `causal` says
    which); n_visible: [B or 1, 1, T, 1] float32 count of visible keys per query row."""

    allowed: Optional[torch.Tensor]
    causal: bool
    n_visible: torch.Tensor

    def dense(self, T: int, S: int, device) -> torch.Tensor:
        if self.allowed is not None:
            return self.allowed
        if self.causal:
            past = S - T
            i = torch.arange(T, device=device)[:, None] + past
            return (torch.arange(S, device=device)[None, :] <= i)[None, None]
        return torch.ones(1, 1, T, S, dtype=torch.bool, device=device)


def positions_from_mask(attention_mask: torch.Tensor, T: int) -> torch.Tensor:
    """Position ids of the last T columns of a padding mask [B, past + T] (1 = token): real tokens count 0, 1, 2, …
    from each row's first token, so left-padded rows start at 0; pads get 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]


def build_attention_mask(
    kind: str,
    T: int,
    device=None,
    attention_mask: Optional[torch.Tensor] = None,
    prefix_lengths: Optional[torch.Tensor] = None,
    past_length: int = 0,
) -> AttentionMask:
    """attention_mask: [B, past + T] with 1 for real tokens, 0 for padding (keys and queries)."""
    S = past_length + T
    q_pos = torch.arange(T, device=device)[:, None] + past_length  # [T, 1]
    k_pos = torch.arange(S, device=device)[None, :]  # [1, S]
    if kind not in ("causal", "bidirectional", "prefix"):
        raise ValueError(f"unknown mask {kind!r} (causal | bidirectional | prefix)")
    if kind == "prefix" and prefix_lengths is None:
        raise ValueError("mask 'prefix' needs prefix_lengths (one per sample)")
    if attention_mask is None and kind != "prefix":
        # fast paths: no padding, a mask the kernels know
        if kind == "causal":
            n = (q_pos + 1).to(torch.float32)
        else:
            n = torch.full((T, 1), float(S), device=device, dtype=torch.float32)  # not the default dtype (bf16-true)
        return AttentionMask(None, kind == "causal", n[None, None])
    if kind == "causal":
        allowed = (k_pos <= q_pos)[None]
    elif kind == "bidirectional":
        allowed = torch.ones(1, T, S, dtype=torch.bool, device=device)
    else:
        prefix = prefix_lengths.to(device)[:, None, None]
        allowed = (k_pos <= q_pos)[None] | (k_pos[None] < prefix)
    if attention_mask is not None:
        allowed = allowed & attention_mask.to(device=device, dtype=torch.bool)[:, None, :]
    # a row with nothing visible (a padded query) would give NaN in softmax: let it see everything; its output
    # is never used (padded positions are masked out of every loss and every key set)
    empty = ~allowed.any(-1, keepdim=True)
    allowed = allowed | empty
    allowed = allowed[:, None]  # [B, 1, T, S]
    return AttentionMask(allowed, False, allowed.sum(-1, keepdim=True, dtype=torch.float32))


def entropy_invariant_scale(n_visible: torch.Tensor, train_length: int) -> torch.Tensor:
    """log(max(n, 16)) / log(n₀): the factor multiplying q·k/√s in softmax_plus (fp32)."""
    return torch.log(n_visible.clamp(min=16.0)) / math.log(train_length)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: AttentionMask,
    normaliser: str = "softmax",
    train_length: int = 512,
    dropout_p: float = 0.0,
    kernel: str = "auto",
) -> torch.Tensor:
    """q, k: [B, H, T, s], [B, H, S, s]; v: [B, H, S, e] → [B, H, T, e]. kernel: auto, dense or linear_memory."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown attention kernel {kernel!r} ({' | '.join(KERNELS)})")
    linear = dropout_p == 0 and (kernel == "linear_memory" or (kernel == "auto" and q.is_cuda))
    if normaliser == "softmax_plus":
        q = q * entropy_invariant_scale(mask.n_visible, train_length).to(q.dtype)
        normaliser = "softmax"
    if normaliser == "softmax":
        causal = mask.causal and mask.allowed is None and q.shape[-2] == k.shape[-2]
        attn_mask = mask.allowed
        if mask.causal and mask.allowed is None and not causal:
            attn_mask = mask.dense(q.shape[-2], k.shape[-2], q.device)
        if linear and q.shape[-1] != v.shape[-1]:
            return split_value_sdpa(q, k, v, attn_mask, causal)
        if q.is_cuda and q.shape[-1] != v.shape[-1]:
            # GAU: one head whose value size e differs from its q/k size s. CUDA's flash and cuDNN kernels need
            # equal sizes, so SDPA would pick the memory-efficient kernel, which ran 2.1-2.3x slower than the math
            # path on an H100 (bf16, d = 1024, T = 1024-4096; bench/README.md, "GPU"), for 12-27 % less memory.
            with sdpa_kernel(SDPBackend.MATH):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal, dropout_p=dropout_p)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal, dropout_p=dropout_p)
    if normaliser == "relu2":
        if linear and (kernel == "linear_memory" or q.shape[-2] > QUERY_CHUNK):
            return relu2_chunked(q, k, v, mask)
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
        weights = torch.relu(scores).square()
        allowed = mask.dense(q.shape[-2], k.shape[-2], q.device)
        weights = weights.masked_fill(~allowed, 0.0) / mask.n_visible
        if dropout_p > 0:
            weights = F.dropout(weights, dropout_p)
        return torch.matmul(weights.to(v.dtype), v)
    raise ValueError(f"unknown attention {normaliser!r} (softmax | softmax_plus | relu2)")
