"""Dense and sparse MCCE (kexue.fm/archives/7359, 8888: log(1 + Σ_neg e^{s}) + log(1 + Σ_pos e^{−s})) against a float64
formula written with Python loops."""

import math
import random

import pytest
import torch

from kslm.losses import SPARSE_MCCE_EPS, multilabel_categorical_crossentropy, sparse_multilabel_categorical_crossentropy

INF = float("inf")
KERAS_EPSILON = 1e-7  # K.epsilon(), the clip in bert4keras' sparse MCCE (written out, not read from kslm)

# ---------------------------------------------------------------- naive float64 references


def log1p_sum_exp(xs):
    """log(1 + Σ e^x) in float64, shifted by m = max(0, x...) so that ±1e4 stays finite."""
    m = max([0.0] + list(xs))
    return m + math.log(math.exp(-m) + sum(math.exp(x - m) for x in xs))


def naive_row(labels, scores, skip=()):
    """log(1 + Σ_neg e^s) + log(1 + Σ_pos e^−s); −inf scores and classes in `skip` contribute nothing."""
    neg, pos = [], []
    for c, (y, s) in enumerate(zip(labels, scores, strict=True)):
        if s == -INF or c in skip:
            continue
        (pos if y else neg).append(-s if y else s)
    return log1p_sum_exp(neg) + log1p_sum_exp(pos)


def naive_clipped_row(labels, scores, skip=()):
    """bert4keras' sparse form in float64: a + log(clip(1 − e^{b−a}, ε, 1)) + log(1 + Σ_pos e^−s)."""
    kept = [(y, s) for c, (y, s) in enumerate(zip(labels, scores, strict=True)) if c not in skip]
    a = log1p_sum_exp([s for _, s in kept])
    pos = [s for y, s in kept if y]
    if pos:
        m = max(pos)
        b = m + math.log(sum(math.exp(s - m) for s in pos))
        neg = a + math.log(min(max(1 - math.exp(b - a), KERAS_EPSILON), 1.0))
    else:  # b = −inf: no clipping
        neg = a
    return neg + log1p_sum_exp([-s for y, s in kept if y])


def naive(y_true, y_pred, skip=(), row=naive_row):
    """Apply a row formula to every row of [..., N] tensors; returns a float64 tensor of shape [...]."""
    lead = y_pred.shape[:-1]
    Y = y_true.reshape(-1, y_pred.shape[-1]).tolist()
    S = y_pred.double().reshape(-1, y_pred.shape[-1]).tolist()
    return torch.tensor([row(y, s, skip) for y, s in zip(Y, S, strict=True)], dtype=torch.float64).reshape(lead)


def to_indices(y_true, mask_zero):
    """Multi-hot [..., N] -> index lists [..., K]; mask_zero pads with 0 (class 0 must be negative then)."""
    rows = [[c for c, y in enumerate(r) if y] for r in y_true.reshape(-1, y_true.shape[-1]).tolist()]
    K = max(1, max(len(r) for r in rows))
    if mask_zero:
        rows = [random.sample(r + [0] * (K - len(r)), K) for r in rows]  # padding anywhere, shuffled in
    else:
        assert all(len(r) == K for r in rows)
    return torch.tensor(rows, dtype=torch.long).reshape(*y_true.shape[:-1], K)


def random_problem(shape, scale=3.0, seed=0, k=None):
    """Scores ~ N(0, scale²); labels Bernoulli(0.3), or exactly k positives per row; the first row of every problem
    is all-negative and the last all-positive (or exactly k positives when k is given)."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    if k is None:
        y = (torch.rand(shape, generator=g) < 0.3).long()
        flat = y.view(-1, shape[-1])
        flat[0] = 0
        flat[-1] = 1
    else:
        order = torch.rand(shape, generator=g).argsort(-1)
        y = (order < k).long()
    return y, s


SHAPES = [(6, 7), (2, 3, 11), (4, 1), (3, 40), (5,)]

# ---------------------------------------------------------------- dense


@pytest.mark.parametrize("shape", SHAPES)
def test_dense_matches_naive(shape):
    y, s = random_problem(shape, seed=len(shape) + shape[-1])
    got = multilabel_categorical_crossentropy(y_true=y, y_pred=s.float())
    assert got.shape == s.shape[:-1] and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), naive(y, s.float()), rtol=1e-5, atol=1e-5)
    flat = got.reshape(-1, 1) if got.dim() else got.reshape(1)
    y_rows = y.reshape(-1, shape[-1])
    assert y_rows[-1].sum() == shape[-1] and (len(y_rows) == 1 or y_rows[0].sum() == 0)  # all-pos / all-neg rows
    assert torch.isfinite(flat).all()


def test_dense_masked_classes_contribute_nothing():
    y, s = random_problem((8, 9), seed=3)
    mask = torch.rand(8, 9, generator=torch.Generator().manual_seed(4)) < 0.3
    mask[0] = True  # a fully masked row: loss log(1) + log(1) = 0
    mask[1, :] = False
    mask[1, 0] = True
    y[1, 0] = 1  # a masked positive must not give +inf
    s = s.masked_fill(mask, -INF)
    got = multilabel_categorical_crossentropy(y_true=y, y_pred=s)
    torch.testing.assert_close(got, naive(y, s), rtol=1e-10, atol=1e-10)
    assert got[0] == 0
    # and masking == dropping the class
    torch.testing.assert_close(got[1], multilabel_categorical_crossentropy(y_true=y[1, 1:], y_pred=s[1, 1:]))


def test_dense_labels_any_dtype():
    y, s = random_problem((4, 6), seed=5)
    ref = multilabel_categorical_crossentropy(y_true=y, y_pred=s)
    for yy in (y.bool(), y.float(), y.to(torch.bfloat16), y.int()):
        torch.testing.assert_close(multilabel_categorical_crossentropy(y_true=yy, y_pred=s), ref)


# ---------------------------------------------------------------- sparse


@pytest.mark.parametrize("shape", SHAPES)
def test_sparse_mask_zero_matches_naive_and_dense(shape):
    y, s = random_problem(shape, seed=10 + shape[-1])
    y.view(-1, shape[-1])[:, 0] = 0  # class 0 is padding, never a positive
    idx = to_indices(y, mask_zero=True)
    assert (idx == 0).any() or len(idx.reshape(-1, idx.shape[-1])) == 1  # padding present (multi-row shapes)
    s32 = s.float()
    got = sparse_multilabel_categorical_crossentropy(y_true=idx, y_pred=s32, mask_zero=True)
    assert got.shape == s.shape[:-1] and got.dtype == torch.float32
    ref = naive(y, s32, skip={0})  # class 0 is excluded: neither positive nor negative
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-4)
    masked = s32.clone()
    masked[..., 0] = -INF
    torch.testing.assert_close(got, multilabel_categorical_crossentropy(y_true=y, y_pred=masked), rtol=1e-4, atol=1e-4)


def test_sparse_mask_zero_ignores_class_zero_score_and_repeated_padding():
    y, s = random_problem((5, 8), seed=21)
    y[:, 0] = 0
    y[0] = 0  # no positives at all: the index row is all padding
    idx = to_indices(y, mask_zero=True)
    wide = torch.cat([idx, torch.zeros(5, 4, dtype=torch.long)], dim=-1)  # more repeated padding changes nothing
    a = sparse_multilabel_categorical_crossentropy(y_true=idx, y_pred=s, mask_zero=True)
    b = sparse_multilabel_categorical_crossentropy(y_true=wide, y_pred=s, mask_zero=True)
    s2 = s.clone()
    s2[:, 0] = torch.tensor([50.0, -50.0, 0.0, 1e4, -1e4], dtype=torch.float64)  # class 0's score is irrelevant
    c = sparse_multilabel_categorical_crossentropy(y_true=idx, y_pred=s2, mask_zero=True)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    torch.testing.assert_close(a, c, rtol=0, atol=1e-12)
    torch.testing.assert_close(a, naive(y, s, skip={0}), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape,k", [((6, 7), 3), ((2, 3, 11), 1), ((4, 5), 5), ((3, 40), 7)])
def test_sparse_exact_k_matches_naive_and_dense(shape, k):
    y, s = random_problem(shape, seed=30 + k, k=k)
    idx = to_indices(y, mask_zero=False)
    s32 = s.float()
    got = sparse_multilabel_categorical_crossentropy(y_true=idx, y_pred=s32)
    assert got.shape == s.shape[:-1] and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), naive(y, s32), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got, multilabel_categorical_crossentropy(y_true=y, y_pred=s32), rtol=1e-4, atol=1e-4)
    # without mask_zero, class 0 is an ordinary class: make it a positive somewhere and still agree
    y0 = torch.zeros_like(y)
    y0[..., 0] = 1
    got0 = sparse_multilabel_categorical_crossentropy(y_true=torch.zeros_like(idx[..., :1]), y_pred=s)
    torch.testing.assert_close(got0, naive(y0, s), rtol=1e-10, atol=1e-10)


def test_sparse_clip_regime_is_bert4keras():
    """A positive at +50 with negatives at −50: the true loss is ~0, bert4keras' clipped form gives a + log ε."""
    s = torch.tensor([[50.0, -50.0, -50.0, -50.0]])
    y = torch.tensor([[1, 0, 0, 0]])
    got = sparse_multilabel_categorical_crossentropy(y_true=torch.tensor([[0]]), y_pred=s)
    torch.testing.assert_close(got.double(), naive(y, s, row=naive_clipped_row), rtol=1e-6, atol=1e-6)
    assert abs(got.item() - (50 + math.log(1e-7))) < 1e-4 and SPARSE_MCCE_EPS == KERAS_EPSILON
    assert multilabel_categorical_crossentropy(y_true=y, y_pred=s).item() < 1e-12  # the dense form is exact


# ---------------------------------------------------------------- large magnitudes


@pytest.mark.parametrize("L", [50.0, 1e4])
def test_large_magnitudes(L):
    g = torch.Generator().manual_seed(int(L))
    N = 9
    s = torch.randint(0, 3, (64, N), generator=g).double().sub(1) * L  # scores in {−L, 0, L}
    s = s + torch.randn(64, N, generator=g, dtype=torch.float64)
    y = (torch.rand(64, N, generator=g) < 0.4).long()
    y[:, 0] = 0
    y[0] = 0
    y[1, 1:] = 1
    s32 = s.float()
    dense = multilabel_categorical_crossentropy(y_true=y, y_pred=s32)
    ref = naive(y, s32)
    assert torch.isfinite(ref).all()
    assert torch.isfinite(dense).all()
    torch.testing.assert_close(dense.double(), ref, rtol=1e-5, atol=1e-4)

    idx = to_indices(y, mask_zero=True)
    sparse = sparse_multilabel_categorical_crossentropy(y_true=idx, y_pred=s32, mask_zero=True)
    assert torch.isfinite(sparse).all()
    clipped = naive(y, s32, skip={0}, row=naive_clipped_row)
    exact = naive(y, s32, skip={0})
    # fp32 resolves b − a to ~ulp(L), so the clip argument 1 − e^{b−a} is only known to ~ulp(L) / value
    torch.testing.assert_close(sparse.double(), clipped, rtol=1e-5, atol=1e-4 * L)
    live = (clipped - exact).abs() < 1e-9  # rows where the clip is inactive: the exact formula
    assert live.sum() > 10
    torch.testing.assert_close(sparse.double()[live], exact[live], rtol=1e-5, atol=1e-4 * L)
    for x in (dense, sparse):  # and gradients stay finite
        s_req = s32.clone().requires_grad_()
        f = multilabel_categorical_crossentropy if x is dense else sparse_multilabel_categorical_crossentropy
        kw = dict(y_true=y) if x is dense else dict(y_true=idx, mask_zero=True)
        f(y_pred=s_req, **kw).sum().backward()
        assert torch.isfinite(s_req.grad).all()


# ---------------------------------------------------------------- gradients


def test_dense_gradcheck():
    y, s = random_problem((3, 5), seed=40)
    s.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: multilabel_categorical_crossentropy(y_true=y, y_pred=x), (s,))


def test_dense_gradient_of_masked_entry_is_zero():
    y, s = random_problem((3, 5), seed=41)
    s[0, 2] = -INF
    s[1, 0] = -INF
    y[1, 0] = 1  # masked positive
    s[2] = -INF  # fully masked row
    x = s.clone().requires_grad_()
    multilabel_categorical_crossentropy(y_true=y, y_pred=x).sum().backward()
    assert not torch.isnan(x.grad).any()
    assert x.grad[0, 2] == 0 and x.grad[1, 0] == 0 and (x.grad[2] == 0).all()
    assert (x.grad[0, [0, 1, 3, 4]] != 0).all()
    # the finite entries still have the right gradient (gradcheck perturbs −inf into −inf: numeric gradient 0)
    x = s.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: multilabel_categorical_crossentropy(y_true=y, y_pred=t), (x,))


@pytest.mark.parametrize("mask_zero", [False, True])
def test_sparse_gradcheck(mask_zero):
    if mask_zero:
        y, s = random_problem((4, 6), seed=50)
        y[:, 0] = 0
        y[0] = 0  # an all-padding row
    else:
        y, s = random_problem((4, 6), seed=51, k=2)
    idx = to_indices(y, mask_zero=mask_zero)
    x = s.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t: sparse_multilabel_categorical_crossentropy(y_true=idx, y_pred=t, mask_zero=mask_zero), (x,)
    )
    x.grad = None
    sparse_multilabel_categorical_crossentropy(y_true=idx, y_pred=x, mask_zero=mask_zero).sum().backward()
    assert torch.isfinite(x.grad).all()
    if mask_zero:
        assert (x.grad[:, 0] == 0).all()
    # same gradient as the dense loss (class 0 masked out when it is padding)
    d = s.clone()
    if mask_zero:
        d[:, 0] = -INF
    d.requires_grad_()
    multilabel_categorical_crossentropy(y_true=y, y_pred=d).sum().backward()
    torch.testing.assert_close(x.grad, d.grad, rtol=1e-8, atol=1e-10)


def test_second_derivative_is_finite_and_matches_the_dense_one():
    """The input gradient penalty differentiates the loss twice: with masked (−inf) scores and padded label rows the
    Hessian-vector product must stay finite, and sparse and dense must agree on it."""
    y, s = random_problem((3, 8), seed=52)
    y[:, 0] = 0
    y[0] = 0  # an all-padding row
    s[1, 5] = -INF  # a masked (non-positive) class
    y[1, 5] = 0
    v = torch.randn_like(s)
    hvps = {}
    for kind in ("sparse", "dense"):
        x = s.clone().requires_grad_()
        if kind == "sparse":
            loss = sparse_multilabel_categorical_crossentropy(y_true=to_indices(y, mask_zero=True), y_pred=x, mask_zero=True)
        else:
            xd = torch.cat([x[:, :1].detach() * 0 - INF, x[:, 1:]], dim=1)  # class 0 out of the loss, as mask_zero
            loss = multilabel_categorical_crossentropy(y_true=y, y_pred=xd)
        (g,) = torch.autograd.grad(loss.sum(), x, create_graph=True)
        (hvp,) = torch.autograd.grad((g * v).sum(), x)
        assert torch.isfinite(g).all() and torch.isfinite(hvp).all(), kind
        hvps[kind] = hvp
    torch.testing.assert_close(hvps["sparse"], hvps["dense"], rtol=1e-7, atol=1e-9)


# ---------------------------------------------------------------- precision


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_half_input_computes_in_fp32(half):
    y, s = random_problem((16, 12), seed=60)
    y[:, 0] = 0
    idx = to_indices(y, mask_zero=True)
    s32 = s.float()
    for f, kw in (
        (multilabel_categorical_crossentropy, dict(y_true=y)),
        (sparse_multilabel_categorical_crossentropy, dict(y_true=idx, mask_zero=True)),
    ):
        out = f(y_pred=s32.to(half), **kw)
        assert out.dtype == torch.float32
        # exactly the fp32 computation on the rounded scores ...
        torch.testing.assert_close(out, f(y_pred=s32.to(half).float(), **kw), rtol=0, atol=0)
        # ... and within the input rounding of the fp32 result
        torch.testing.assert_close(out, f(y_pred=s32, **kw), rtol=2e-2, atol=5e-2)


def test_float64_stays_float64():
    y, s = random_problem((2, 3), seed=61, k=1)
    assert multilabel_categorical_crossentropy(y_true=y, y_pred=s).dtype == torch.float64
    assert sparse_multilabel_categorical_crossentropy(y_true=to_indices(y, False), y_pred=s).dtype == torch.float64


# ---------------------------------------------------------------- call convention


def test_keyword_only_and_shape_checks():
    y, s = random_problem((3, 4), seed=70, k=2)
    idx = to_indices(y, mask_zero=False)
    with pytest.raises(TypeError):
        multilabel_categorical_crossentropy(y, s)
    with pytest.raises(TypeError):
        multilabel_categorical_crossentropy(s, y)
    with pytest.raises(TypeError):
        sparse_multilabel_categorical_crossentropy(idx, s)
    with pytest.raises(TypeError):
        sparse_multilabel_categorical_crossentropy(idx, s, True)
    # keyword order does not matter and gives the documented (naive) result
    torch.testing.assert_close(multilabel_categorical_crossentropy(y_pred=s, y_true=y), naive(y, s))
    torch.testing.assert_close(sparse_multilabel_categorical_crossentropy(y_pred=s, y_true=idx), naive(y, s))
    with pytest.raises(ValueError):
        multilabel_categorical_crossentropy(y_true=y[:, :3], y_pred=s)
    with pytest.raises(ValueError):  # [B, 1, K] labels for [B, H, N] scores would be silently sub-gathered
        sparse_multilabel_categorical_crossentropy(y_true=idx[:1], y_pred=s)


def test_no_lightning_import():
    import subprocess
    import sys

    code = "import sys, kslm.losses; sys.exit(int('lightning' in sys.modules or 'pytorch_lightning' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
