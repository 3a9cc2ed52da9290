"""`block: rnn` in the Backbone: incremental decoding, padding, bidirectional masks, config errors, FLOPs."""

import pytest
import torch
from helpers import TINY_VOCAB as VOCAB
from helpers import ids, matmul_params, tiny_backbone

from kslm.errors import ConfigError
from kslm.nn import Backbone, BackboneConfig

VARIANTS = [
    {},
    {"rnn_cell": "gru"},
    {"rnn_iterations": 2},  # Newton, not converged: the model is the 2-iteration map
    {"rnn_method": "fixed", "rnn_iterations": 3},  # Su's "iterations as layers"
    {"rnn_cell": "gru", "rnn_method": "fixed", "rnn_iterations": 2, "norm": "deepnorm"},
]


@pytest.mark.parametrize("kw", VARIANTS)
@pytest.mark.parametrize("first_chunk", [1, 6])
def test_cached_decoding_matches_full_forward(kw, first_chunk):
    m = tiny_backbone("rnn", d_ff=32, max_length=32, **kw)
    T = 20
    x = ids(2, T, seed=4)
    with torch.no_grad():
        full = m.logits(m(x))
        cache = {}
        steps = [m.logits(m(x[:, :first_chunk], cache=cache))]
        for t in range(first_chunk, T):
            steps.append(m.logits(m(x[:, t : t + 1], cache=cache)))
    assert len(cache) == m.cfg.n_layers  # one state per RNN mixer
    assert all(marker.shape[-2] == T and marker.numel() == 0 for marker, _ in cache.values())
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-9, atol=1e-9)
    with torch.no_grad(), pytest.raises(ValueError, match="max_length"):
        m(ids(2, 13), cache=cache)


def test_the_rnn_is_causal():
    m = tiny_backbone("rnn", d_ff=32)
    x = ids(1, 12, seed=1)
    y = x.clone()
    y[0, 8:] = (y[0, 8:] + 1) % VOCAB
    with torch.no_grad():
        a, b = m.logits(m(x)), m.logits(m(y))
    torch.testing.assert_close(a[:, :8], b[:, :8], rtol=0, atol=1e-12)
    assert (a[:, 8:] - b[:, 8:]).abs().max() > 1e-3


@pytest.mark.parametrize("mask", ["causal", "bidirectional"])
def test_padding_changes_nothing(mask):
    """Left padding (row 1) and, for bidirectional, right padding (row 0): real tokens see only real tokens."""
    m = tiny_backbone("rnn", mask, d_ff=32)
    T = 12
    x = ids(2, T, seed=3)
    am = torch.ones(2, T, dtype=torch.long)
    am[1, :5] = 0
    am[0, 9:] = 0
    with torch.no_grad():
        padded = m.logits(m(x, attention_mask=am))
        torch.testing.assert_close(padded[1, 5:], m.logits(m(x[1:, 5:]))[0], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(padded[0, :9], m.logits(m(x[:1, :9]))[0], rtol=1e-9, atol=1e-9)
        leaky = m.logits(m(x))  # guard: without the mask the pads do leak in
    assert (leaky[1, 5:] - padded[1, 5:]).abs().max() > 1e-3
    if mask == "bidirectional":
        assert (leaky[0, :9] - padded[0, :9]).abs().max() > 1e-3


def test_bidirectional_sees_the_future_and_cannot_decode():
    m = tiny_backbone("rnn", "bidirectional", d_ff=32)
    x = ids(1, 10, seed=2)
    y = x.clone()
    y[0, -1] = (y[0, -1] + 1) % VOCAB
    with torch.no_grad():
        assert (m.logits(m(x))[:, 0] - m.logits(m(y))[:, 0]).abs().max() > 1e-6
        with pytest.raises(ValueError, match="bidirectional RNN"):
            m(x, cache={})


def test_prefix_mask_and_bad_iterations_are_config_errors():
    with pytest.raises(ConfigError, match="rnn.*prefix"):
        BackboneConfig(block="rnn", mask="prefix", vocab_size=10)
    with pytest.raises(ConfigError, match="rnn_iterations"):
        BackboneConfig(block="rnn", rnn_iterations=0, vocab_size=10)


@pytest.mark.parametrize("kw", [{}, {"rnn_cell": "gru", "mask": "bidirectional", "tied_init": "ortho"}])
def test_flops_per_token_rnn(kw):
    m = Backbone(BackboneConfig(block="rnn", d_model=32, n_layers=3, vocab_size=50, **kw))
    N = matmul_params(m)  # the 1-D λ / u_z, u_r, u_h vectors and biases are not matmuls
    assert m.flops_per_token(64) == 6 * N and m.flops_per_token(4096, training=False) == 2 * N


def test_trains_a_step_in_bf16_autocast():
    m = tiny_backbone("rnn", d_ff=32).float().train()
    x = ids(2, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(m.logits(m(x[:, :-1])).float().flatten(0, 1), x[:, 1:].flatten())
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    assert m.layers[0].sublayer.recurrent.grad.abs().sum() > 0
