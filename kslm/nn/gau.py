"""Gated Attention Unit (Hua et al. 2022, "Transformer Quality in Linear Time"; Su, kexue.fm/archives/8934).

    U = φ(X W_u), V = φ(X W_v)   (W_u, W_v: d → e, e = expansion·d = 2d),   Z = φ(X W_z)   (W_z: d → s = 128)
    Q = Z ⊙ γ_q + β_q,  K = Z ⊙ γ_k + β_k          (per-dimension scale-offset; γ = 1, β = 0 at init)
    Q, K ← RoPE(Q), RoPE(K)
    A = relu²(Q Kᵀ / √s) / n                         (n = keys visible to the row; or softmax / softmax_plus)
    O = (U ⊙ A V) W_o                                 single head, φ = SiLU on U, V and Z

Layout as in bert4keras `GatedAttentionUnit`: one dense d → 2e + s split into [U, V, Z]. Init LeCun-normal
(std 1/√fan_in), the assumption of Su's warmup analysis (kexue.fm/archives/8990). DeepNorm's β scales the U and
V rows (the GLU-FFN part) and W_o, never Z (which feeds Q and K).
"""

import math

import torch
from torch import nn

from kslm.nn.activations import build_activation
from kslm.nn.attention import attend


class GatedAttentionUnit(nn.Module):
    ffn_output = "o_dense"  # its output matrix: Amos η = √(2/fan_in) (kslm.optim.roles)

    def __init__(self, d_model: int, expansion: int, qk_dim: int, activation: str, attention: str,
                 train_length: int, dropout: float, rope: bool, squareplus_b: float = 4.0):
        super().__init__()
        self.e, self.s = expansion * d_model, qk_dim
        self.attention, self.train_length, self.attn_dropout, self.rope = attention, train_length, dropout, rope
        self.i_dense = nn.Linear(d_model, 2 * self.e + self.s, bias=False)
        self.act = build_activation(activation, squareplus_b)
        self.q_scale = nn.Parameter(torch.ones(self.s))
        self.q_offset = nn.Parameter(torch.zeros(self.s))
        self.k_scale = nn.Parameter(torch.ones(self.s))
        self.k_offset = nn.Parameter(torch.zeros(self.s))
        self.o_dense = nn.Linear(self.e, d_model, bias=False)

    def reset_parameters(self):
        for lin in (self.i_dense, self.o_dense):
            nn.init.normal_(lin.weight, std=1 / math.sqrt(lin.in_features))
        for p in (self.q_scale, self.k_scale):
            nn.init.ones_(p)
        for p in (self.q_offset, self.k_offset):
            nn.init.zeros_(p)

    def deepnorm_targets(self):
        return [self.i_dense.weight[: 2 * self.e], self.o_dense.weight]

    def forward(self, x, ctx):
        u, v, z = self.act(self.i_dense(x)).split([self.e, self.e, self.s], dim=-1)
        q = z * self.q_scale + self.q_offset
        k = z * self.k_scale + self.k_offset
        q, k, v = q[:, None], k[:, None], v[:, None]  # one head
        if self.rope:
            q, k = ctx.rotate(q), ctx.rotate(k)
        k, v = ctx.extend_cache(self, k, v)
        a = attend(q, k, v, ctx.mask, self.attention, self.train_length, self.attn_dropout if self.training else 0.0,
                   ctx.kernel)
        return self.o_dense(u * a[:, 0])


def gau_sublayers(cfg):
    """One GAU layer is one residual sub-layer (two GAU layers ≈ one attention + FFN block)."""
    return [GatedAttentionUnit(cfg.d_model, cfg.expansion, cfg.qk_dim, cfg.activation, cfg.attention,
                               cfg.train_length, cfg.dropout, cfg.position == "rope", cfg.squareplus_b)]
