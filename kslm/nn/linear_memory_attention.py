"""Attention that never stores the T × S score matrix, for the cases SDPA's fused kernels do not take as they are:
GAU's single head (q/k size s = 128, value size e = 2d = 1536 in GAU-α; Su, kexue.fm/archives/8934) and relu².

Split values (softmax, and softmax_plus, whose per-row log-n scale kslm.nn.attention.attend applies to q before):

    softmax(q kᵀ/√s) · [V₁ | V₂ | … | Vₙ] = [softmax(q kᵀ/√s) V₁ | … | softmax(q kᵀ/√s) Vₙ]     Vⱼ of width s

so ONE scaled_dot_product_attention call over n = ⌈e/s⌉ heads that share q and k (expanded: a view, no copy) and
each take one s-wide slice of the values (the last one zero-padded) has equal q/k/v sizes, which CUDA's flash /
cuDNN / memory-efficient kernels accept: nothing of size T × S is kept for the backward. The price is n − 1 extra
q kᵀ products and softmaxes: 2·T·S·2·n·s attention FLOPs instead of 2·T·S·(s + e), 1.85× at s 128, e 1536.
torch.nn.attention.flex_attention (torch 2.13) also takes e ≠ s (checked on CPU, eager and compiled) and a per-row
scale as a score_mod, but its kernel keeps a [block, e] fp32 accumulator per query block, too large for e = 1536
on one GPU SM; softmax_plus's scale needs no score_mod (it is a scale of q), so flex adds nothing here.

relu² (relu(q kᵀ/√s)² / n_i, no normalisation across keys): rows are independent, so queries go in chunks of
QUERY_CHUNK rows, each under non-reentrant activation checkpointing: the forward holds one [chunk, S] block of
scores at a time, and the backward recomputes each block (one more q kᵀ and A·V per chunk).

Both are exact re-orderings of the dense path (same values up to fp32 rounding). Attention dropout would draw
different masks per value slice / chunk, so with dropout > 0 `attend` keeps the dense path.
"""

import math

import torch
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

QUERY_CHUNK = 256  # relu²: query rows per chunk ([B, H, 256, S] fp32 scores at a time)


def split_value_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask, is_causal: bool) -> torch.Tensor:
    """softmax(q kᵀ/√s) v for q, k [B, H, T|S, s] and v [B, H, S, e], e ≠ s, as one SDPA call over H·⌈e/s⌉ heads of
    size s → [B, H, T, e]. attn_mask: None or [B|1, 1, T, S] (broadcast over the heads)."""
    B, H, T, s = q.shape
    S, e = v.shape[-2], v.shape[-1]
    n = -(-e // s)
    if n * s != e:
        v = F.pad(v, (0, n * s - e))
    v = v.unflatten(-1, (n, s)).transpose(2, 3).reshape(B, H * n, S, s)  # [B, H·n, S, s]: slice j of head h at h·n + j
    q = q.unsqueeze(2).expand(B, H, n, T, s).reshape(B, H * n, T, s)  # a view when H = 1 (stride 0 over the slices)
    k = k.unsqueeze(2).expand(B, H, n, S, s).reshape(B, H * n, S, s)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=1 / math.sqrt(s))
    out = out.unflatten(1, (H, n)).transpose(2, 3).reshape(B, H, T, n * s)  # [B, H, T, n·s]
    return out[..., :e] if n * s != e else out


def _chunk_allowed(mask, i0: int, i1: int, T: int, S: int, device):
    """The mask's rows i0:i1 as [B|1, 1, i1 − i0, S] bool, or None when every key is visible."""
    if mask.allowed is not None:
        return mask.allowed[..., i0:i1, :]
    if not mask.causal:
        return None
    past = S - T  # query i sits at position past + i (keys from a cache come first)
    rows = torch.arange(i0, i1, device=device)[:, None] + past
    return (torch.arange(S, device=device)[None, :] <= rows)[None, None]


def _relu2_rows(q, k, v, allowed, n_visible):
    """The dense path of attend's relu² restricted to some query rows (the same operations, in the same order)."""
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    weights = torch.relu(scores).square()
    if allowed is not None:
        weights = weights.masked_fill(~allowed, 0.0)
    weights = weights / n_visible
    return torch.matmul(weights.to(v.dtype), v)


def relu2_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, chunk: int = 0) -> torch.Tensor:
    """relu(q kᵀ/√s)² / n_i · v over query chunks of `chunk` rows (default QUERY_CHUNK), each checkpointed when a
    gradient is being recorded. mask: kslm.nn.attention.AttentionMask."""
    chunk = chunk or QUERY_CHUNK
    T, S = q.shape[-2], k.shape[-2]
    record = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    outs = []
    for i0 in range(0, T, chunk):
        i1 = min(i0 + chunk, T)
        args = (q[..., i0:i1, :], k, v, _chunk_allowed(mask, i0, i1, T, S, q.device), mask.n_visible[..., i0:i1, :])
        outs.append(checkpoint(_relu2_rows, *args, use_reentrant=False) if record else _relu2_rows(*args))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-2)


__all__ = ["QUERY_CHUNK", "split_value_sdpa", "relu2_chunked"]
