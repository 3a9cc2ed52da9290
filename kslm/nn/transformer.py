"""Transformer sub-layers: multi-head attention (fused QKV, RoPE, SDPA) and the two-matrix FFN.

Init: Xavier-normal on every matrix, as in the DeepNet paper's pseudocode; DeepNorm's β then scales exactly
the V slice of the fused QKV, the output projection and both FFN matrices (`deepnorm_targets`).
"""

from torch import nn

from kslm.nn.activations import build_activation
from kslm.nn.attention import attend


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, attention: str, train_length: int, dropout: float, rope: bool):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.attention, self.train_length, self.attn_dropout, self.rope = attention, train_length, dropout, rope
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)

    def reset_parameters(self):
        d = self.o_proj.in_features
        for w in self.qkv.weight.split(d):  # Xavier per projection (fan d → d), not over the fused 3d rows
            nn.init.xavier_normal_(w)
        nn.init.xavier_normal_(self.o_proj.weight)

    def deepnorm_targets(self):
        d = self.o_proj.in_features
        return [self.qkv.weight[2 * d :], self.o_proj.weight]

    def forward(self, x, ctx):
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.rope:
            q, k = ctx.rotate(q), ctx.rotate(k)
        k, v = ctx.extend_cache(self, k, v)
        out = attend(q, k, v, ctx.mask, self.attention, self.train_length, self.attn_dropout if self.training else 0.0,
                     ctx.kernel)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, D))


class FeedForward(nn.Module):
    ffn_output = "fc2"  # its output matrix: Amos η = √(2/fan_in) (kslm.optim.roles)

    def __init__(self, d_model: int, d_ff: int, activation: str, squareplus_b: float = 4.0):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff, bias=False)
        self.act = build_activation(activation, squareplus_b)
        self.fc2 = nn.Linear(d_ff, d_model, bias=False)

    def reset_parameters(self):
        nn.init.xavier_normal_(self.fc1.weight)
        nn.init.xavier_normal_(self.fc2.weight)

    def deepnorm_targets(self):
        return [self.fc1.weight, self.fc2.weight]

    def forward(self, x, ctx=None):
        return self.fc2(self.act(self.fc1(x)))


def transformer_sublayers(cfg):
    """One Transformer block = [attention, FFN], two residual sub-layers."""
    rope = cfg.position == "rope"
    return [
        MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attention, cfg.train_length, cfg.dropout, rope),
        FeedForward(cfg.d_model, cfg.d_ff or 4 * cfg.d_model, cfg.activation, cfg.squareplus_b),
    ]


__all__ = ["MultiHeadAttention", "FeedForward", "transformer_sublayers"]
