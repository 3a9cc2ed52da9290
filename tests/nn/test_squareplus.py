"""SquarePlus (x + √(x² + b))/2 (kexue.fm/archives/8833) against exact decimal arithmetic, autograd against the
closed-form derivative, and Su's two constants (minimax b = 1.52382103 with error 0.075931; b ≥ 4·ln²2 ⇔
SquarePlus ≥ SoftPlus) on a grid."""

import math
from decimal import Decimal, getcontext

import pytest
import torch

from kslm.nn.activations import SQUAREPLUS_MINIMAX_B, SQUAREPLUS_UPPER_B, SquarePlus, build_activation, squareplus

getcontext().prec = 60


def exact(x: float, b: float) -> float:
    """(x + √(x² + b)) / 2 with 60 significant digits: no cancellation whatever the sign of x."""
    X, B = Decimal(x), Decimal(b)
    return float((X + (X * X + B).sqrt()) / 2)


def exact_grad(x: float, b: float) -> float:
    """½ (1 + x / √(x² + b)) with 60 significant digits."""
    X, B = Decimal(x), Decimal(b)
    return float((1 + X / (X * X + B).sqrt()) / 2)


def exact_grad2(x: float, b: float) -> float:
    """b / (2 (x² + b)^{3/2}) with 60 significant digits."""
    X, B = Decimal(x), Decimal(b)
    r = (X * X + B).sqrt()
    return float(B / (2 * r * r * r))


GRID = [-50.0, -7.5, -3.0, -1.0, -0.25, -1e-3, 0.0, 1e-3, 0.25, 1.0, 3.0, 7.5, 50.0]


@pytest.mark.parametrize("b", [0.5, SQUAREPLUS_MINIMAX_B, 4.0])
def test_formula_float64(b):
    x = torch.tensor(GRID, dtype=torch.float64)
    want = torch.tensor([exact(v, b) for v in GRID], dtype=torch.float64)
    torch.testing.assert_close(squareplus(x, b), want, rtol=1e-14, atol=0)
    torch.testing.assert_close(SquarePlus(b)(x), want, rtol=1e-14, atol=0)


def test_default_b_is_4():
    x = torch.tensor([-2.0, 0.0, 3.0], dtype=torch.float64)
    want = torch.tensor([exact(v, 4.0) for v in (-2.0, 0.0, 3.0)], dtype=torch.float64)
    torch.testing.assert_close(SquarePlus()(x), want, rtol=1e-14, atol=0)
    torch.testing.assert_close(build_activation("squareplus")(x), want, rtol=1e-14, atol=0)
    assert want[1].item() == 1.0  # √4 / 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("b", [SQUAREPLUS_MINIMAX_B, 4.0])
def test_stable_for_very_negative_x(dtype, b):
    xs = [-1e4, -1e5, -1e6, -1e7, -1e8]
    x = torch.tensor(xs, dtype=dtype)
    y = squareplus(x, b)
    assert torch.isfinite(y).all() and (y > 0).all(), y
    # reference on the values actually stored in `dtype` (x and b both rounded to it)
    bq = torch.tensor(b, dtype=dtype).item()
    want = torch.tensor([exact(v, bq) for v in x.tolist()], dtype=torch.float64)
    rel = ((y.double() - want) / want).abs().max().item()
    assert rel < 8 * torch.finfo(dtype).eps, rel
    # and the tail is b / (4|x|) to first order
    torch.testing.assert_close(y.double(), b / (4 * x.double().abs()), rtol=1e-6, atol=0)


def test_naive_form_would_fail_the_stability_check():
    """Guards the test above: the textbook form cancels to exactly 0 in float32 at x = -1e4."""
    x = torch.tensor([-1e4], dtype=torch.float32)
    assert ((x + torch.sqrt(x * x + 4.0)) / 2).item() == 0.0
    assert squareplus(x, 4.0).item() > 0.0


def test_b_zero_is_relu_with_finite_gradient():
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)  # includes 0
    assert torch.equal(SquarePlus(0.0)(x), torch.relu(x))
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(squareplus(xg, 0.0).sum(), xg)
    assert torch.isfinite(g).all()
    torch.testing.assert_close(g[x != 0], (x[x != 0] > 0).double(), rtol=0, atol=0)


def test_negative_b_rejected():
    with pytest.raises(ValueError):
        SquarePlus(-1.0)


@pytest.mark.parametrize("b", [SQUAREPLUS_MINIMAX_B, 4.0])
def test_derivative_matches_closed_form(b):
    xs = [-1e6, -300.0] + torch.linspace(-30, 30, 121, dtype=torch.float64).tolist() + [300.0, 1e6]
    x = torch.tensor(xs, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(squareplus(x, b).sum(), x)
    want = torch.tensor([exact_grad(v, b) for v in xs], dtype=torch.float64)
    torch.testing.assert_close(g, want, rtol=1e-12, atol=0)
    assert g[xs.index(0.0)].item() == 0.5
    assert (g > 0).all()  # monotone


def _grid():
    return torch.linspace(-40, 40, 800_001, dtype=torch.float64)  # step 1e-4


def _softplus(x):
    return torch.logaddexp(torch.zeros_like(x), x)  # log(1 + eˣ) in float64


def _max_err(b, x):
    return (squareplus(x, b) - _softplus(x)).abs().max().item()


def test_minimax_constant():
    assert SQUAREPLUS_MINIMAX_B == 1.52382103
    x = _grid()
    err = _max_err(SQUAREPLUS_MINIMAX_B, x)
    assert abs(err - 0.075931) < 2e-6, err
    # minimax: moving b either way increases the worst-case error
    assert _max_err(1.50, x) > err + 1e-3
    assert _max_err(1.55, x) > err + 1e-3
    # at x = 0 the error is √b/2 − ln 2 = −0.075931…, one of the equioscillation points
    assert abs(math.sqrt(SQUAREPLUS_MINIMAX_B) / 2 - math.log(2) + 0.075931) < 2e-6


def test_upper_bound_constant():
    assert abs(SQUAREPLUS_UPPER_B - 1.921812) < 1e-6
    assert abs(SQUAREPLUS_UPPER_B - 4 * math.log(2) ** 2) < 1e-15
    x = _grid()
    diff = squareplus(x, SQUAREPLUS_UPPER_B) - _softplus(x)
    assert diff.min().item() > -1e-12  # SquarePlus ≥ SoftPlus everywhere (touching at x = 0)
    assert (squareplus(x, 4.0) - _softplus(x)).min().item() > 0
    # slightly below the bound it dips under SoftPlus (at x = 0: √b/2 < ln 2)
    below = (squareplus(x, 1.92) - _softplus(x)).min().item()
    assert -1e-3 < below < -1e-4, below


@pytest.mark.parametrize("b", [SQUAREPLUS_MINIMAX_B, 4.0])
def test_gradient_and_double_backward_against_finite_differences(b):
    """The custom backward (closed form, built from differentiable ops) against numerical differentiation, first and
    second order: the input gradient penalty differentiates through it twice."""
    torch.manual_seed(0)
    x = (torch.randn(64, dtype=torch.float64) * 4).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: squareplus(t, b), (x,))
    assert torch.autograd.gradgradcheck(lambda t: squareplus(t, b), (x,))


@pytest.mark.parametrize("b", [0.5, SQUAREPLUS_MINIMAX_B, SQUAREPLUS_UPPER_B, 4.0, 100.0])
def test_create_graph_branch_matches_closed_forms(b):
    """The backward's create_graph branch (the one the input gradient penalty differentiates through) against the
    closed forms f'(x) = ½(1 + x/√(x² + b)) and f''(x) = b / (2 (x² + b)^{3/2}). gradgradcheck compares that branch with
    itself, so a wrong value there would pass it; the test above only reaches the no-graph branch.
    f'' comes from autograd through the branch's ops: on the x ≥ 0 side it is a difference of two ≈ 1/r terms, so
    its relative error grows like eps·x²/b, hence the grid stops at |x| = 1e3 for it."""
    xs = [-1e3, -300.0] + torch.linspace(-30, 30, 121, dtype=torch.float64).tolist() + [300.0, 1e3]
    assert 0.0 in xs
    x = torch.tensor(xs + [-1e6, 1e6], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(squareplus(x, b).sum(), x, create_graph=True)
    assert g.grad_fn is not None  # the graph-building branch did run
    want = torch.tensor([exact_grad(v, b) for v in x.tolist()], dtype=torch.float64)
    torch.testing.assert_close(g.detach(), want, rtol=1e-12, atol=0)
    (h,) = torch.autograd.grad(g.sum(), x)
    want2 = torch.tensor([exact_grad2(v, b) for v in xs], dtype=torch.float64)
    torch.testing.assert_close(h[:len(xs)], want2, rtol=1e-9, atol=0)
    # f''(0) = 1/(2√b): |x| has no derivative at 0 and autograd's abs' (0) = 0 must not zero the branch's x-term
    assert h[xs.index(0.0)].item() == pytest.approx(1 / (2 * math.sqrt(b)), rel=1e-14)
    assert (h[:len(xs)] > 0).all()  # convex


@pytest.mark.parametrize("block", ["transformer", "gau", "rnn"])
def test_backbone_squareplus_b_reaches_every_activation(block):
    """`backbone.squareplus_b` sets b in every SquarePlus the blocks build; a negative b is a config error."""
    from kslm.errors import ConfigError
    from kslm.nn import Backbone, BackboneConfig

    cfg = BackboneConfig(block=block, vocab_size=50, d_model=32, n_layers=2, n_heads=2, qk_dim=16,
                         activation="squareplus", squareplus_b=SQUAREPLUS_MINIMAX_B)
    found = [m.b for m in Backbone(cfg).modules() if isinstance(m, SquarePlus)]
    assert found and all(b == SQUAREPLUS_MINIMAX_B for b in found)
    assert BackboneConfig.from_dict(cfg.to_dict()).squareplus_b == SQUAREPLUS_MINIMAX_B
    with pytest.raises(ConfigError, match="squareplus_b"):
        BackboneConfig(squareplus_b=-1.0)
