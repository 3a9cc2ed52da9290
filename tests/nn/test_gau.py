"""Gated Attention Unit (kexue.fm/archives/8934, bert4keras layout) against a float64 re-implementation written from the formulas:

U = φ(X W_u), V = φ(X W_v), Z = φ(X W_z)       φ = SiLU = x·sigmoid(x)
Q = Z ⊙ γ_q + β_q,  K = Z ⊙ γ_k + β_k,  Q, K ← RoPE (interleaved pairs)
A = relu²(Q Kᵀ / √s) / n   (n = keys visible to the row)   | softmax(QKᵀ/√s) | softmax(log_{n₀}(max(n,16)) QKᵀ/√s)
O = (U ⊙ A V) W_o
"""

import math

import pytest
import torch

from kslm.nn.attention import build_attention_mask
from kslm.nn.backbone import Context
from kslm.nn.gau import GatedAttentionUnit
from kslm.nn.rope import RotaryEmbedding

D, EXP, S, TRAIN_LEN = 12, 2, 8, 16
E = EXP * D


def make_gau(attention, rope=True, seed=0):
    torch.manual_seed(seed)
    gau = GatedAttentionUnit(D, EXP, S, "silu", attention, TRAIN_LEN, 0.0, rope)
    gau.reset_parameters()
    with torch.no_grad():  # non-trivial scale-offsets (init is γ = 1, β = 0, which would hide a Q/K mix-up)
        for p in (gau.q_scale, gau.k_scale):
            p.copy_(1 + 0.5 * torch.randn(S))
        for p in (gau.q_offset, gau.k_offset):
            p.copy_(0.5 * torch.randn(S))
    return gau.double().eval()


def visible(kind, T, valid, prefix, b, i):
    """Keys row i of sample b may see (mask rule written out; padding keys excluded)."""
    js = []
    for j in range(T):
        if kind == "causal":
            ok = j <= i
        elif kind == "bidirectional":
            ok = True
        else:
            ok = j < prefix[b] or j <= i
        if ok and (valid is None or valid[b][j]):
            js.append(j)
    return js


def rope64(x, positions):
    """Interleaved RoPE in float64; x [T, s], positions list of T ints."""
    out = x.clone()
    for t, m in enumerate(positions):
        for i in range(x.shape[-1] // 2):
            th = m * 10000.0 ** (-2.0 * i / x.shape[-1])
            a, b = x[t, 2 * i].item(), x[t, 2 * i + 1].item()
            out[t, 2 * i] = a * math.cos(th) - b * math.sin(th)
            out[t, 2 * i + 1] = b * math.cos(th) + a * math.sin(th)
    return out


def reference(gau, x, attention, kind, valid=None, prefix=None, positions=None, rope=True):
    """x [B, T, D] float64 → [B, T, D]; only rows that are real tokens are meaningful."""
    W = gau.i_dense.weight.detach().double()  # [2e + s, d]
    Wo = gau.o_dense.weight.detach().double()  # [d, e]
    gq, bq = gau.q_scale.detach().double(), gau.q_offset.detach().double()
    gk, bk = gau.k_scale.detach().double(), gau.k_offset.detach().double()
    B, T, _ = x.shape
    def silu(t):
        return t * torch.sigmoid(t)
    out = torch.zeros(B, T, D, dtype=torch.float64)
    for b in range(B):
        U = silu(x[b] @ W[:E].T)
        V = silu(x[b] @ W[E : 2 * E].T)
        Z = silu(x[b] @ W[2 * E :].T)
        Q, K = Z * gq + bq, Z * gk + bk
        if rope:
            pos = positions[b] if positions is not None else list(range(T))
            Q, K = rope64(Q, pos), rope64(K, pos)
        for i in range(T):
            js = visible(kind, T, valid, prefix, b, i)
            if not js or (valid is not None and not valid[b][i]):
                continue
            n = len(js)
            a = torch.stack([Q[i] @ K[j] for j in js]) / math.sqrt(S)
            if attention == "relu2":
                w = torch.relu(a) ** 2 / n
            else:
                lam = math.log(max(n, 16)) / math.log(TRAIN_LEN) if attention == "softmax_plus" else 1.0
                w = torch.softmax(lam * a, dim=0)
            av = sum(wj * V[j] for wj, j in zip(w, js, strict=False))
            out[b, i] = (U[i] * av) @ Wo.T
    return out


def run(gau, x, kind, attention_mask=None, prefix=None, positions=None):
    _B, T, _ = x.shape
    mask = build_attention_mask(kind, T, None, attention_mask, prefix)
    if positions is None:
        positions = torch.arange(T)
    phases = RotaryEmbedding(S).rotation(positions)
    with torch.no_grad():
        return gau(x, Context(mask, phases))


def data(B, T, seed=1):
    return torch.randn(B, T, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# RoPE tables, relu² and the log-n factor run in fp32 by design, so those paths agree to ~1e-6 relative;
# plain softmax without RoPE is float64 end to end.
def tol(attention, rope):
    if attention == "softmax" and not rope:
        return {"rtol": 0, "atol": 1e-12}
    return {"rtol": 1e-5, "atol": 1e-6}


@pytest.mark.parametrize("attention", ["relu2", "softmax", "softmax_plus"])
@pytest.mark.parametrize("rope", [True, False])
@pytest.mark.parametrize("kind", ["causal", "bidirectional", "prefix"])
def test_matches_float64_reference(attention, rope, kind):
    T = 20  # > 16 so softmax_plus's clamp and log n both matter
    gau = make_gau(attention, rope)
    x = data(2, T)
    prefix = [5, 13] if kind == "prefix" else None
    got = run(gau, x, kind, prefix=None if prefix is None else torch.tensor(prefix))
    want = reference(gau, x, attention, kind, prefix=prefix, rope=rope)
    assert want.abs().max() > 0.05
    torch.testing.assert_close(got, want, **tol(attention, rope))


@pytest.mark.parametrize("attention", ["relu2", "softmax_plus"])
@pytest.mark.parametrize("kind", ["causal", "bidirectional"])
def test_padding_excluded_from_keys_and_from_n(attention, kind):
    """Right padding: the reference drops pad keys and counts only real keys in n (relu²) / log n (softmax_plus)."""
    T = 18
    valid = [[1] * T, [1] * 11 + [0] * (T - 11)]
    gau = make_gau(attention)
    x = data(2, T, seed=2)
    got = run(gau, x, kind, attention_mask=torch.tensor(valid))
    want = reference(gau, x, attention, kind, valid=valid)
    torch.testing.assert_close(got[0], want[0], **tol(attention, True))
    torch.testing.assert_close(got[1, :11], want[1, :11], **tol(attention, True))


@pytest.mark.parametrize("attention", ["relu2", "softmax", "softmax_plus"])
@pytest.mark.parametrize("kind", ["causal", "bidirectional"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_batch_equals_unpadded_sample(attention, kind, side):
    T, L = 14, 9
    gau = make_gau(attention)
    x = data(2, T, seed=3) * 2  # pads carry large garbage that must not leak
    short = x[1:, :L] if side == "right" else x[1:, T - L :]
    am = torch.zeros(2, T, dtype=torch.long)
    am[0] = 1
    if side == "right":
        am[1, :L] = 1
    else:
        am[1, T - L :] = 1
    positions = (am.cumsum(-1) - 1).clamp(min=0)  # real tokens count from 0, as Backbone.positions does
    padded = run(gau, x, kind, attention_mask=am, positions=positions)
    alone = run(gau, short, kind)
    got = padded[1, :L] if side == "right" else padded[1, T - L :]
    # RoPE rounds q, k to fp32, which turns last-bit float64 differences of the batched matmul into fp32 ulps
    close = tol(attention, True)
    torch.testing.assert_close(got, alone[0], **close)
    torch.testing.assert_close(padded[0], run(gau, x[:1], kind)[0], **close)


def test_layout_u_v_z_and_shapes():
    gau = make_gau("relu2")
    assert gau.i_dense.weight.shape == (2 * E + S, D) and gau.o_dense.weight.shape == (D, E)
    assert gau.i_dense.bias is None and gau.o_dense.bias is None
    # init: LeCun normal std 1/√fan_in, γ = 1, β = 0
    torch.manual_seed(0)
    big = GatedAttentionUnit(256, 2, 128, "silu", "relu2", 512, 0.0, True)
    big.reset_parameters()
    assert abs(big.i_dense.weight.std().item() * math.sqrt(256) - 1) < 0.01
    assert abs(big.o_dense.weight.std().item() * math.sqrt(512) - 1) < 0.01
    assert torch.equal(big.q_scale, torch.ones(128)) and torch.equal(big.k_offset, torch.zeros(128))
