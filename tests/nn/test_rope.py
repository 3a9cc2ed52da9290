"""RoPE (Su, kexue.fm/archives/8265; bert4keras' interleaved pairs: (x_{2i}, x_{2i+1}) rotated by mθ_i, θ_i = 10000^{−2i/d})
against a naive float64 per-pair formula."""

import math

import pytest
import torch

from kslm.nn.rope import RotaryEmbedding


def naive_rope(x: torch.Tensor, positions, base: float = 10000.0) -> torch.Tensor:
    """x [..., T, dim] (read as float64); positions: a list of T ints, or B such lists for x [B, ..., T, dim].
    (x_{2i}, x_{2i+1}) at position m → (x_{2i} cos mθ_i − x_{2i+1} sin mθ_i, x_{2i+1} cos mθ_i + x_{2i} sin mθ_i),
    θ_i = base^{−2i/dim}, with Python math on every (t, i)."""
    x = x.double()
    out = torch.empty_like(x)
    dim = x.shape[-1]
    per_sample = isinstance(positions[0], (list, tuple))
    rows = [(r,) for r in range(x.shape[0])] if per_sample else [()]
    for r in rows:
        pos = positions[r[0]] if per_sample else positions
        for t, m in enumerate(pos):
            for i in range(dim // 2):
                theta = base ** (-2.0 * i / dim)
                c, s = math.cos(m * theta), math.sin(m * theta)
                even, odd = r + (..., t, 2 * i), r + (..., t, 2 * i + 1)
                a, b = x[even], x[odd]
                out[even] = a * c - b * s
                out[odd] = b * c + a * s
    return out


def test_known_values_dim2_and_dim4():
    rope = RotaryEmbedding(2)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # two positions, both m = 1 → angle 1 rad (θ_0 = 1)
    out = rope(x, torch.tensor([1, 1]))
    want = torch.tensor([[math.cos(1), math.sin(1)], [-math.sin(1), math.cos(1)]])
    torch.testing.assert_close(out, want, rtol=0, atol=1e-7)
    # dim 4: θ_1 = 10000^{-1/2} = 0.01, so the second pair turns by 1 rad at m = 100 and the first by 100 rad
    out = RotaryEmbedding(4)(torch.tensor([[1.0, 0.0, 1.0, 0.0]]), torch.tensor([100]))
    want = torch.tensor([[math.cos(100), math.sin(100), math.cos(1), math.sin(1)]])
    torch.testing.assert_close(out, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_interleaved_layout_vs_naive(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 8, generator=g, dtype=torch.float64).to(dtype)  # [B, H, T, dim]
    pos = [0, 1, 2, 5, 11, 40, 63]
    out = RotaryEmbedding(8)(x, torch.tensor(pos))
    assert out.dtype == dtype
    # fp32 tables for fp32: angle error ≲ 63 · 2⁻²⁴ rad, far below any layout/sign error (O(1)); float64 is float64
    atol = 2e-5 if dtype == torch.float32 else 1e-14
    torch.testing.assert_close(out.double(), naive_rope(x, pos), rtol=0, atol=atol)


def test_per_sample_positions_broadcast_over_heads():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 5, 6, generator=g)
    pos = [[0, 0, 0, 1, 2], [3, 4, 5, 6, 7]]  # e.g. a left-padded row and a row continuing from a cache
    rope = RotaryEmbedding(6)
    out = RotaryEmbedding.rotate(x, rope.rotation(torch.tensor(pos)))
    torch.testing.assert_close(out.double(), naive_rope(x, pos), rtol=0, atol=1e-5)


def test_scores_depend_only_on_relative_position():
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(2, 16, generator=g)
    rope = RotaryEmbedding(16)

    def score(m, n):
        rq = rope(q[None], torch.tensor([m]))[0]
        rk = rope(k[None], torch.tensor([n]))[0]
        return torch.dot(rq.double(), rk.double()).item()

    by_delta = {}
    for delta in (-5, 0, 3, 17):
        vals = [score(m, m - delta) for m in (20, 27, 90, 300)]
        assert max(vals) - min(vals) < 2e-4, (delta, vals)
        by_delta[delta] = vals[0]
        # the value itself: Σ_i Re(q̃_i conj(k̃_i) e^{i·delta·θ_i}) from the naive formula
        naive = torch.dot(naive_rope(q[None], [delta])[0], k.double()).item()
        assert abs(vals[0] - naive) < 2e-4
    assert min(abs(a - b) for a in by_delta.values() for b in by_delta.values() if a != b) > 1e-2


def test_norm_preserved_per_pair():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 9, 32, generator=g)
    out = RotaryEmbedding(32)(x, torch.arange(100, 109))
    def pair(t):
        return t.reshape(*t.shape[:-1], 16, 2).norm(dim=-1)
    torch.testing.assert_close(pair(out), pair(x), rtol=1e-6, atol=0)
    assert (out - x).abs().max() > 0.1  # it did rotate


def test_bf16_input_uses_fp32_tables():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 2, 8, 32, generator=g).bfloat16()
    pos = list(range(1000, 1008))  # bf16 angles would be off by up to ±2 rad here (spacing 8 around 1000)
    rope = RotaryEmbedding(32)
    out = rope(x, torch.tensor(pos))
    assert out.dtype == torch.bfloat16
    assert rope.rotation(torch.tensor(pos)).dtype == torch.complex64
    truth = naive_rope(x, pos)
    err = (out.double() - truth).abs()
    assert (err <= truth.abs() * 2**-8 + 1e-6).all(), err.max()  # only the final bf16 rounding remains
    # same as the fp32 computation rounded once
    assert torch.equal(out, rope(x.float(), torch.tensor(pos)).bfloat16())


def test_tables_stay_fp32_when_module_is_cast_to_bf16():
    """`.to(torch.bfloat16)` (e.g. Lightning precision='bf16-true') must not round the frequencies to bf16."""
    pos = torch.arange(0, 2048, 7)
    ref = RotaryEmbedding(64).rotation(pos)
    for dtype in (torch.bfloat16, torch.float16):
        cast = RotaryEmbedding(64).to(dtype)
        torch.testing.assert_close(cast.rotation(pos), ref, rtol=0, atol=0)


def naive_rope_fp32_theta(x: torch.Tensor, positions, base: float = 10000.0) -> torch.Tensor:
    """naive_rope with each θ_i rounded to fp32 (the rest in float64): what float64 tables cast up from fp32 give."""
    x = x.double()
    out = torch.empty_like(x)
    for t, m in enumerate(positions):
        for i in range(x.shape[-1] // 2):
            theta = torch.tensor(base ** (-2.0 * i / x.shape[-1]), dtype=torch.float32).item()
            c, s = math.cos(m * theta), math.sin(m * theta)
            a, b = x[..., t, 2 * i], x[..., t, 2 * i + 1]
            out[..., t, 2 * i] = a * c - b * s
            out[..., t, 2 * i + 1] = b * c + a * s
    return out


@pytest.mark.parametrize("module", ["double", "bf16_then_double", "fp32_module_float64_input"])
def test_float64_is_float64_at_large_positions(module):
    """A float64 module (however it got there) or a float64 input gets float64 θ_i, m·θ_i and rotation: it matches
    the Python-float formula to 1e-12 at m ≈ 10⁵, where fp32-rounded θ_i is off by ~m·θ_i·2⁻²⁴ ≈ 10⁻³ rad."""
    rope = {"double": lambda: RotaryEmbedding(64).double(),
            "bf16_then_double": lambda: RotaryEmbedding(64).to(torch.bfloat16).double(),
            "fp32_module_float64_input": lambda: RotaryEmbedding(64)}[module]()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 6, 64, generator=g, dtype=torch.float64)  # [B, H, T, dim]
    pos = [0, 1, 99_999, 100_000, 100_001, 123_457]
    out = rope(x, torch.tensor(pos))
    assert out.dtype == torch.float64
    truth = naive_rope(x, pos)
    err = (out - truth).abs().max().item()
    assert err < 1e-12, err
    # the check is sharp: fp32 θ (the rest exact) misses the truth by orders of magnitude more
    assert (naive_rope_fp32_theta(x, pos) - truth).abs().max().item() > 1e-4
    if module != "fp32_module_float64_input":
        assert rope.inv_freq.dtype == torch.float64
        assert rope.rotation(torch.tensor(pos)).dtype == torch.complex128
        torch.testing.assert_close(rope.inv_freq, torch.tensor([10000.0 ** (-2.0 * i / 64) for i in range(32)],
                                                               dtype=torch.float64), rtol=1e-15, atol=0)
        # and back to fp32: the same fp32 tables as a fresh module, bit for bit
        assert torch.equal(rope.float().rotation(torch.tensor(pos)), RotaryEmbedding(64).rotation(torch.tensor(pos)))
    else:
        assert rope.rotation(torch.tensor(pos)).dtype == torch.complex64  # the module's own tables stay fp32


def test_odd_dim_rejected():
    with pytest.raises(ValueError):
        RotaryEmbedding(7)
