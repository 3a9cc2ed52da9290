"""Parallel non-linear RNN (kslm/nn/rnn.py) against the sequential loop, autograd Jacobians and a naive loop of
Su's fixed-λ iteration (kexue.fm/archives/9783):
x_t^{(n)} − λx_{t−1}^{(n)} = tanh(λx_{t−1}^{(n−1)} + u_t) − λx_{t−1}^{(n−1)}."""

import pytest
import torch

from kslm.nn.rnn import GRUCell, RNNDivergenceError, TanhCell, linear_scan, parallel_rnn, sequential_rnn


def gen(seed):
    return torch.Generator().manual_seed(seed)


def tanh_case(B, T, D, seed=0, lam=(0.0, 0.9), scale=0.5, dtype=torch.float32):
    g = gen(seed)
    lam = (lam[0] + (lam[1] - lam[0]) * torch.rand(D, generator=g)).to(dtype)
    return TanhCell(lam), (scale * torch.randn(B, T, D, generator=g)).to(dtype)


def gru_case(B, T, D, seed=0, dtype=torch.float32):
    g = gen(seed)
    uz, ur, uh = (2 * torch.rand(3, D, generator=g) - 1).to(dtype)
    return GRUCell(uz, ur, uh), torch.randn(B, T, 3 * D, generator=g).to(dtype)


@pytest.mark.parametrize("T", [1, 2, 7, 64, 301])
def test_linear_scan_equals_loop(T):
    g = gen(T)
    a, b, h0 = 1.2 * torch.rand(2, T, 5, generator=g, dtype=torch.float64), torch.randn(2, T, 5, generator=g,
                                                                                        dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    h, out = h0, []
    for t in range(T):
        h = a[:, t] * h + b[:, t]
        out.append(h)
    torch.testing.assert_close(linear_scan(a, b, h0), torch.stack(out, 1), rtol=1e-12, atol=1e-12)


def test_scan_runs_in_fp32_for_bf16_inputs():
    a, b = torch.full((1, 1024, 1), 0.998).bfloat16(), torch.ones(1, 1024, 1).bfloat16()
    out = linear_scan(a, b)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, linear_scan(a.double(), b.double()).float(), rtol=1e-5, atol=0)
    h = torch.zeros(1, dtype=torch.bfloat16)  # the same loop in bf16 stalls where 1 < half an ulp of h
    for t in range(1024):
        h = a[0, t] * h + b[0, t]
    assert (out[0, -1] - h.float()).abs() > 20


@pytest.mark.parametrize("make", [tanh_case, gru_case])
def test_diagonal_jacobian_matches_autograd(make):
    cell, u = make(1, 6, 4, dtype=torch.float64)
    h = torch.randn(1, 6, 4, dtype=torch.float64)
    f, J = cell.linearise(h, u)
    full = torch.autograd.functional.jacobian(lambda x: cell(x, u), h)  # [1, 6, 4, 1, 6, 4]
    dense = full.reshape(24, 24)
    torch.testing.assert_close(dense.diagonal().reshape(1, 6, 4), J)
    assert torch.count_nonzero(dense - torch.diag(dense.diagonal())) == 0  # elementwise: nothing off the diagonal
    torch.testing.assert_close(f, cell(h, u))


@pytest.mark.parametrize("T", [1, 33, 1000, 4096])
@pytest.mark.parametrize("make", [tanh_case, gru_case])
def test_newton_equals_sequential_fp32(make, T):
    cell, u = make(2, T, 8, seed=T)
    h0 = 0.5 * torch.randn(2, 8, generator=gen(1))
    x, info = parallel_rnn(cell, u, h0)
    assert x.dtype == torch.float32 and info["iterations"] <= 12
    torch.testing.assert_close(x, sequential_rnn(cell, u, h0), rtol=0, atol=1e-5)


def test_padding_carries_the_state():
    cell, u = tanh_case(2, 9, 3, seed=4)
    keep = torch.ones(2, 9)
    keep[0, :4] = 0  # left padding: the state stays at h0 = 0
    keep[1, 6:] = 0  # right padding: the final state is the last real token's
    x, _ = parallel_rnn(cell, u, keep=keep)
    torch.testing.assert_close(x, sequential_rnn(cell, u, keep=keep), rtol=0, atol=1e-6)
    assert torch.equal(x[0, :4], torch.zeros(4, 3))
    torch.testing.assert_close(x[0, 4:], sequential_rnn(cell, u[:1, 4:])[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(x[1, 6:], x[1, 5:6].expand(3, 3), rtol=0, atol=1e-6)


def leaves(make):
    cell, u = make(2, 50, 4, seed=9, dtype=torch.float64)
    params = [cell.lam] if isinstance(cell, TanhCell) else [cell.uz, cell.ur, cell.uh]
    return cell, [p.clone().requires_grad_() for p in params], u.clone().requires_grad_()


@pytest.mark.parametrize("make", [tanh_case, gru_case])
@pytest.mark.parametrize("mode", [{"gradient": "implicit"}, {"gradient": "autograd", "iterations": 12}])
def test_gradient_equals_sequential_loop(make, mode):
    grads = []
    for solve in (sequential_rnn, lambda c, u: parallel_rnn(c, u, **mode)[0]):
        cell, params, u = leaves(make)
        cell = type(cell)(*params)
        w = torch.cos(torch.arange(200.0, dtype=torch.float64)).reshape(50, 4)  # a loss that weighs every state
        (solve(cell, u) * w).sum().backward()
        grads.append([p.grad for p in params] + [u.grad])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


def test_implicit_gradient_keeps_one_scan_in_the_graph():
    """Implicit: the solve runs under no_grad; the graph holds one Newton step, however many iterations ran."""
    cell, u = tanh_case(1, 64, 4, seed=2)
    lam = cell.lam.clone().requires_grad_()
    x, info = parallel_rnn(TanhCell(lam), u)
    assert info["iterations"] > 2
    x_auto, _ = parallel_rnn(TanhCell(lam), u, iterations=info["iterations"])

    def graph_size(t):
        seen, todo = set(), [t.grad_fn]
        while todo:
            fn = todo.pop()
            if fn is not None and fn not in seen:
                seen.add(fn)
                todo.extend(f for f, _ in fn.next_functions)
        return len(seen)

    assert graph_size(x_auto) > 2 * graph_size(x)


def naive_su_iteration(lam, u, n):
    """Su's fixed-λ iteration written out as a double loop (kexue.fm/archives/9783), float64."""
    T, D = u.shape
    prev = torch.zeros(T, D, dtype=torch.float64)
    for _ in range(n):
        new, h = torch.zeros_like(prev), torch.zeros(D, dtype=torch.float64)
        for t in range(T):
            p = prev[t - 1] if t else torch.zeros(D, dtype=torch.float64)
            h = lam * h + torch.tanh(lam * p + u[t]) - lam * p
            new[t] = h
        prev = new
    return prev


def test_fixed_iteration_equals_su_loop_and_blows_up():
    """λ ∈ [0, 0.9), u ~ N(0, 0.5²), T = 300 (error gain λ(1 − sech²)/(1 − λ) > 1): the cheap iteration diverges —
    genuinely (the naive loop does the same), and the solver raises instead of returning garbage; Newton converges on
    the same input."""
    cell, u = tanh_case(1, 300, 16, seed=0, dtype=torch.float64)
    ref = sequential_rnn(cell, u)
    x6, _ = parallel_rnn(cell, u, method="fixed", iterations=6)
    torch.testing.assert_close(x6[0], naive_su_iteration(cell.lam, u[0], 6), rtol=1e-9, atol=1e-9)
    assert (x6 - ref).abs().max() > 50  # error 1.3e2 after 6 iterations, 4.7e5 after 12
    with pytest.raises(RNNDivergenceError, match="max \\|x\\|"):
        parallel_rnn(cell, u, method="fixed", iterations=40)
    with pytest.raises(RNNDivergenceError):
        parallel_rnn(cell, u, method="fixed")  # solving to tolerance: detected too
    x, info = parallel_rnn(cell, u)
    assert info["iterations"] <= 6
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-10)


def test_fixed_iteration_converges_for_small_lambda():
    cell, u = tanh_case(2, 300, 16, seed=1, lam=(0.0, 0.5), scale=0.3)
    x, info = parallel_rnn(cell, u, method="fixed")
    torch.testing.assert_close(x, sequential_rnn(cell, u), rtol=0, atol=1e-5)
    assert info["deltas"][-1] < 1e-5 and info["iterations"] < 20


def test_not_converged_is_an_error_and_bad_arguments_are_refused():
    cell, u = tanh_case(1, 300, 16)
    with pytest.raises(RNNDivergenceError, match="did not converge in 2"):
        parallel_rnn(cell, u, max_iterations=2)
    with pytest.raises(ValueError, match="fixed point"):
        parallel_rnn(cell, u, iterations=3, gradient="implicit")
    with pytest.raises(ValueError, match="newton \\| fixed"):
        parallel_rnn(cell, u, method="jacobi")


@pytest.mark.parametrize("method,k", [("newton", None), ("newton", 2), ("fixed", 3)])
def test_chunked_solve_with_levels_equals_one_solve(method, k):
    """The end-of-past state of every iterate (`levels`) lets a fixed-count model run chunk by chunk exactly."""
    cell, u = gru_case(2, 40, 4, seed=5, dtype=torch.float64)
    full, _ = parallel_rnn(cell, u, method=method, iterations=k)
    levels, parts = None, []
    for lo, hi in [(0, 7), (7, 8), (8, 40)]:
        x, info = parallel_rnn(cell, u[:, lo:hi], method=method, iterations=k, levels=levels)
        parts.append(x)
        levels = info["levels"]
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=0, atol=1e-9)


@pytest.mark.parametrize("method", ["newton", "fixed"])
def test_iterate_n_is_exact_on_the_first_n_steps(method):
    """Why max_iterations defaults to T + 1: x_t^{(n)} depends on x_{t−1}^{(n−1)} only, so iterate n is exact up to t < n."""
    cell, u = tanh_case(1, 300, 16, seed=0, dtype=torch.float64)  # the case where the fixed form blows up
    ref = sequential_rnn(cell, u)
    x, _ = parallel_rnn(cell, u, method=method, iterations=3, blowup=float("inf"))
    torch.testing.assert_close(x[:, :3], ref[:, :3], rtol=0, atol=1e-12)
    assert (x[:, 3:] - ref[:, 3:]).abs().max() > 1e-6
