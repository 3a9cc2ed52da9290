"""Backbone-level invariants: checkpoint round trip, left-padding invariance, KV-cache decoding, FLOPs formula."""

import io

import pytest
import torch
from helpers import ids, matmul_params, tiny_backbone

from kslm.nn import Backbone, BackboneConfig

# fp32 RoPE / relu² internals (by design): float64 runs of different shapes agree to ~1e-7
CLOSE = {"rtol": 1e-5, "atol": 1e-6}


@pytest.mark.parametrize(
    "kw",
    [
        {"block": "transformer", "norm": "pre", "tied_init": "ortho"},
        {"block": "transformer", "norm": "deepnorm", "tied_init": "swap", "attention": "relu2"},
        {"block": "gau", "norm": "post", "tie_embeddings": False, "attention": "softmax_plus"},
    ],
)
def test_state_dict_round_trip(kw):
    src = tiny_backbone(seed=0, train_length=8, **kw)
    x = ids(2, 9)
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    dst = tiny_backbone(seed=1, train_length=8, **kw)
    with torch.no_grad():
        before = dst.logits(dst(x))
        assert not torch.allclose(before, src.logits(src(x)))
        dst.load_state_dict(torch.load(buf))  # strict: same keys both ways
        assert torch.equal(dst.logits(dst(x)), src.logits(src(x)))


def naive_positions(mask_row):
    """Left-padded row: real tokens get 0, 1, 2, …; pads get 0."""
    out, k = [], 0
    for m in mask_row:
        out.append(k if m else 0)
        k += int(m)
    return out


@pytest.mark.parametrize("block", ["transformer", "gau"])
@pytest.mark.parametrize("mask", ["causal", "bidirectional"])
@pytest.mark.parametrize("attention", ["softmax", "softmax_plus", "relu2"])
def test_left_padding_invariance(block, mask, attention):
    m = tiny_backbone(block, mask, attention=attention, train_length=8)
    T, L = 12, 7
    x = ids(2, T, seed=3)
    am = torch.ones(2, T, dtype=torch.long)
    am[1, : T - L] = 0
    x[1, : T - L] = 5  # whatever sits under the padding must not matter
    assert m.positions(x, am).tolist() == [naive_positions(r) for r in am.tolist()]
    with torch.no_grad():
        padded = m.logits(m(x, attention_mask=am))
        alone = m.logits(m(x[1:, T - L :]))
        full = m.logits(m(x[:1]))
        x2 = x.clone()
        x2[1, : T - L] = 17
        padded2 = m.logits(m(x2, attention_mask=am))
    torch.testing.assert_close(padded[1, T - L :], alone[0], **CLOSE)
    torch.testing.assert_close(padded[0], full[0], **CLOSE)
    torch.testing.assert_close(padded2[am.bool()], padded[am.bool()], **CLOSE)
    # guard: without the attention mask the pads do leak (so the mask is what makes this pass)
    with torch.no_grad():
        leaky = m.logits(m(x))[1, T - L :]
    assert (leaky - alone[0]).abs().max() > 1e-3


@pytest.mark.parametrize("block", ["transformer", "gau"])
@pytest.mark.parametrize("attention", ["softmax", "softmax_plus", "relu2"])
@pytest.mark.parametrize("mask,first_chunk", [("causal", 1), ("causal", 5), ("prefix", 6)])
def test_kv_cache_decoding_matches_full_forward(block, attention, mask, first_chunk):
    """Feed `first_chunk` tokens (the whole prefix for a prefix LM), then one token at a time, with cache={}."""
    m = tiny_backbone(block, mask, attention=attention, train_length=8, max_length=64)
    T = 20  # > 16: softmax_plus's log n varies along the decode
    x = ids(2, T, seed=4)
    kw = {"prefix_lengths": torch.tensor([first_chunk, first_chunk])} if mask == "prefix" else {}
    with torch.no_grad():
        full = m.logits(m(x, **kw))
        cache = {}
        steps = [m.logits(m(x[:, :first_chunk], cache=cache, **kw))]
        for t in range(first_chunk, T):
            steps.append(m.logits(m(x[:, t : t + 1], cache=cache, **kw)))
    inc = torch.cat(steps, dim=1)
    assert len(cache) == len(m.layers) // (2 if block == "transformer" else 1)  # one K/V entry per attention
    assert all(k.shape[-2] == T for k, _ in cache.values())
    torch.testing.assert_close(inc, full, **CLOSE)


def test_cache_respects_max_length():
    m = tiny_backbone(train_length=8, max_length=6)
    cache = {}
    with torch.no_grad():
        m(ids(1, 6), cache=cache)
        with pytest.raises(ValueError):
            m(ids(1, 1), cache=cache)


@pytest.mark.parametrize(
    "kw",
    [
        {"d_model": 64, "n_layers": 2, "n_heads": 4, "d_ff": 256, "vocab_size": 100},
        {"d_model": 32, "n_layers": 3, "n_heads": 2, "vocab_size": 77, "tied_init": "ortho"},  # d_ff defaults to 4d
    ],
)
@pytest.mark.parametrize("T", [32, 512])
def test_flops_per_token_transformer(kw, T):
    m = Backbone(BackboneConfig(**kw))
    d, L = kw["d_model"], kw["n_layers"]
    N = matmul_params(m)
    assert m.flops_per_token(T) == 6 * N + 12 * L * d * T  # PaLM: 6N + 12·L·H·Q·T with H·Q = d
    assert m.flops_per_token(T, training=False) == 2 * N + 4 * L * d * T


def test_flops_per_token_known_number():
    # d = 64, L = 2, d_ff = 256, V = 100: N = 2·(4·64² + 2·64·256) + 64·100 = 104704; T = 32
    m = Backbone(BackboneConfig(d_model=64, n_layers=2, n_heads=4, d_ff=256, vocab_size=100))
    assert m.flops_per_token(32) == 6 * 104704 + 12 * 2 * 64 * 32 == 677376


def test_flops_per_token_gau():
    m = Backbone(BackboneConfig(block="gau", d_model=32, n_layers=4, qk_dim=16, expansion=2, vocab_size=50))
    T, L, e, s = 128, 4, 64, 16
    N = matmul_params(m)
    assert N == L * (32 * (2 * e + s) + e * 32) + 32 * 50
    assert m.flops_per_token(T) == 6 * N + 6 * L * T * (s + e)  # QKᵀ (s) and AV (e) per key, ×2 FLOPs ×3 passes
