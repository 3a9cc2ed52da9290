"""Tied input/output embeddings (kexue.fm/archives/9698): the initial loss ≈ log(e^{dσ} + V − 1) of an untrained DeepNorm
backbone (near-identity residual branches), Su's remedies, the init statistics, and that the tie is real."""

import io
import math

import pytest
import torch
from torch.nn import functional as F

from kslm.nn import Backbone, BackboneConfig

D, V = 256, 4000
LN_V = math.log(V)


def model(tied_init="none", tie=True, block="transformer", norm="deepnorm", seed=0):
    torch.manual_seed(seed)
    cfg = BackboneConfig(
        block=block,
        vocab_size=V,
        d_model=D,
        n_layers=2,
        n_heads=4,
        qk_dim=64,
        norm=norm,
        tie_embeddings=tie,
        tied_init=tied_init,
    )
    return Backbone(cfg).eval()


def initial_loss(m):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, V, (4, 32), generator=g)
    y = (x + torch.randint(1, V, x.shape, generator=g)) % V  # targets never equal their inputs
    assert (x != y).all()
    with torch.no_grad():
        return F.cross_entropy(m.logits(m(x)).flatten(0, 1), y.flatten()).item()


def formula(sigma):
    return math.log(math.exp(D * sigma) + V - 1)


@pytest.mark.parametrize("block", ["transformer", "gau"])
def test_rescaled_init_loss_is_log_2v(block):
    sigma = LN_V / D
    assert formula(sigma) == pytest.approx(math.log(2 * V - 1), rel=1e-12)
    loss = initial_loss(model("rescaled", block=block))
    assert abs(loss - math.log(2 * V)) / math.log(2 * V) < 0.05, loss


@pytest.mark.parametrize("block", ["transformer", "gau"])
def test_plain_tying_loss_is_about_sqrt_d(block):
    loss = initial_loss(model("none", block=block))
    expected = formula(1 / math.sqrt(D))  # ≈ √d = 16 here
    assert abs(expected - math.sqrt(D)) < 0.01
    assert abs(loss - expected) / expected < 0.05, loss
    assert loss > 1.7 * LN_V


@pytest.mark.parametrize("tied_init,tie", [("swap", True), ("ortho", True), ("none", False)])
def test_remedies_start_near_log_v(tied_init, tie):
    loss = initial_loss(model(tied_init, tie=tie))
    assert abs(loss - LN_V) / LN_V < 0.10, loss


@pytest.mark.parametrize(
    "tied_init,tie,sigma",
    [
        ("rescaled", True, LN_V / D),
        ("none", True, 1 / math.sqrt(D)),
        ("swap", True, 1 / math.sqrt(D)),
        ("ortho", True, 1 / math.sqrt(D)),
        ("rescaled", False, 1 / math.sqrt(D)),  # rescaling is for tied only
    ],
)
def test_embedding_std(tied_init, tie, sigma):
    m = model(tied_init, tie=tie, norm="pre")
    w = m.embed.weight.detach().double()
    assert abs(w.std().item() / sigma - 1) < 0.01
    assert abs(w.mean().item()) < 0.01 * sigma
    if not tie:
        assert abs(m.head.proj.weight.std().item() * math.sqrt(D) - 1) < 0.01
    if tied_init == "ortho":
        P = m.head.ortho.weight.detach().double()
        torch.testing.assert_close(P @ P.T, torch.eye(D, dtype=torch.float64), rtol=0, atol=1e-5)


def small(tied_init, tie=True, seed=0):
    torch.manual_seed(seed)
    cfg = BackboneConfig(vocab_size=50, d_model=8, n_layers=1, n_heads=2, tie_embeddings=tie, tied_init=tied_init)
    return Backbone(cfg).double()


@pytest.mark.parametrize("tied_init", ["none", "rescaled", "swap", "ortho"])
def test_tied_head_uses_the_embedding_matrix(tied_init):
    m = small(tied_init)
    assert m.head.proj is None
    assert not any(k.startswith("head.proj") for k in m.state_dict())
    h = torch.randn(3, 8, dtype=torch.float64)
    if tied_init == "swap":
        s = torch.cat([h[:, 4:], h[:, :4]], dim=-1)
    elif tied_init == "ortho":
        s = h @ m.head.ortho.weight.detach().T
    else:
        s = h
    torch.testing.assert_close(m.logits(h), s @ m.embed.weight.detach().T, rtol=0, atol=1e-12)
    # editing the embedding edits the head
    with torch.no_grad():
        m.embed.weight[7] += 1.0
    torch.testing.assert_close(m.logits(h), s @ m.embed.weight.detach().T, rtol=0, atol=1e-12)


def test_tie_survives_state_dict_round_trip_and_gets_head_gradients():
    src = small("swap", seed=0)
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    dst = small("swap", seed=1)
    dst.load_state_dict(torch.load(buf))
    assert dst.head.proj is None and torch.equal(dst.embed.weight, src.embed.weight)
    x = torch.tensor([[1, 2, 3]])
    dst.logits(dst(x)).sum().backward()
    # rows of tokens that never appear in the input still get a gradient: through the tied output layer
    assert dst.embed.weight.grad[40].abs().sum() > 0


def test_untied_head_is_separate():
    m = small("none", tie=False)
    assert m.head.proj is not None and m.head.proj.weight.data_ptr() != m.embed.weight.data_ptr()
    h = torch.randn(2, 8, dtype=torch.float64)
    torch.testing.assert_close(m.logits(h), h @ m.head.proj.weight.detach().T, rtol=0, atol=1e-12)
