"""`block: rnn` — a parallel non-linear RNN mixer + FFN, the "RNN + MLP" stack of Su's post (kexue.fm/archives/9783).

    [u, g] = X W_in + b                        u: the cell's inputs (tanh: D; GRU: 3D per direction), g: gate
    H = RNN(u)                                 x_t = f(x_{t−1}, u_t) solved in parallel (kslm.nn.rnn), fp32
    O = (H ⊙ φ(g)) W_out                       φ = the FFN activation

tanh cell: λ = sigmoid(ν) ∈ (0, 1), ν initialised so that λ ~ U[0.5, 0.95] (memories of 2–20 tokens). GRU cell:
diagonal recurrent weights u_z, u_r, u_h ~ U[−1, 1] (zero gate biases, so gates ≈ ½ and Su's A = ½(1 + ½u_h) ∈
(¼, ¾)). `rnn_iterations` empty: solve to tolerance with the implicit gradient (the exact RNN); a number k: exactly
k iterations with autograd through them (Su's "iterations as layers" model; with `rnn_method fixed` it is his
cheap form, which raises RNNDivergenceError if it blows up).

Masks: causal runs one forward RNN. bidirectional runs a second RNN over the reversed sequence and adds the two
state sequences (a classic bidirectional RNN: position t sees x_{≤t} and x_{≥t}). prefix is refused by
BackboneConfig (a prefix LM needs a bidirectional prefix and a causal rest, which a recurrence does not give).
Padding (attention_mask = 0) carries the state, so pads on either side change nothing.

KV-cache interface: `cache[mixer] = (marker, levels)`. `levels` holds the end-of-past state of every iterate
(one state when converged, k + 1 for a fixed count), so decoding token by token gives the full forward's output
exactly. `marker` is a zero-size [B, past, 0] tensor: Backbone reads the past length from the first cache entry's
first item (shape[-2]), as it does from an attention layer's keys.
"""

import math

import torch
from torch import nn

from kslm.nn.activations import build_activation
from kslm.nn.rnn import GRUCell, TanhCell, parallel_rnn
from kslm.nn.transformer import FeedForward


class RNNMixer(nn.Module):
    def __init__(self, d_model: int, cell: str = "tanh", method: str = "newton", iterations=None,
                 activation: str = "silu", bidirectional: bool = False, squareplus_b: float = 4.0):
        super().__init__()
        if cell not in ("tanh", "gru"):
            raise ValueError(f"unknown RNN cell {cell!r} (tanh | gru)")
        self.d, self.cell, self.method, self.iterations = d_model, cell, method, iterations
        self.n_dir = 2 if bidirectional else 1
        self.n_in = 1 if cell == "tanh" else 3
        self.in_proj = nn.Linear(d_model, self.n_dir * self.n_in * d_model + d_model)
        self.recurrent = nn.Parameter(torch.empty(self.n_dir, 1 if cell == "tanh" else 3, d_model))
        self.act = build_activation(activation, squareplus_b)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def reset_parameters(self):
        nn.init.normal_(self.in_proj.weight, std=1 / math.sqrt(self.d))
        nn.init.zeros_(self.in_proj.bias)
        nn.init.xavier_normal_(self.out_proj.weight)
        if self.cell == "tanh":
            lam = torch.empty_like(self.recurrent).uniform_(0.5, 0.95)
            self.recurrent.data.copy_(torch.log(lam / (1 - lam)))  # sigmoid⁻¹
        else:
            nn.init.uniform_(self.recurrent, -1.0, 1.0)

    def deepnorm_targets(self):
        return [self.in_proj.weight, self.out_proj.weight]

    def make_cell(self, direction: int):
        w = self.recurrent[direction]
        return TanhCell(torch.sigmoid(w[0])) if self.cell == "tanh" else GRUCell(w[0], w[1], w[2])

    def run(self, direction, u, keep, levels=None):
        return parallel_rnn(self.make_cell(direction), u, keep=keep, method=self.method, iterations=self.iterations,
                            levels=levels)

    def forward(self, x, ctx):
        B, T, _ = x.shape
        *us, g = self.in_proj(x).split([self.n_in * self.d] * self.n_dir + [self.d], dim=-1)
        pad = getattr(ctx, "attention_mask", None)
        keep = None if pad is None else pad[:, -T:]
        cache = getattr(ctx, "cache", None)
        if cache is not None and self.n_dir == 2:
            raise ValueError("a bidirectional RNN cannot decode incrementally (the backward pass needs the future)")
        marker, levels = cache.get(self, (None, None)) if cache is not None else (None, None)
        h, info = self.run(0, us[0], keep, levels)
        if cache is not None:
            past = 0 if marker is None else marker.shape[-2]
            cache[self] = (x.new_empty(B, past + T, 0), info["levels"].detach())
        if self.n_dir == 2:
            back, _ = self.run(1, us[1].flip(1), None if keep is None else keep.flip(1))
            h = h + back.flip(1)
        return self.out_proj((h * self.act(g)).to(x.dtype))


def rnn_sublayers(cfg):
    """One RNN block = [RNN mixer, FFN], two residual sub-layers (like a Transformer block)."""
    return [
        RNNMixer(cfg.d_model, cfg.rnn_cell, cfg.rnn_method, cfg.rnn_iterations, cfg.activation,
                 bidirectional=cfg.mask == "bidirectional", squareplus_b=cfg.squareplus_b),
        FeedForward(cfg.d_model, cfg.d_ff or 4 * cfg.d_model, cfg.activation, cfg.squareplus_b),
    ]


__all__ = ["RNNMixer", "rnn_sublayers"]
