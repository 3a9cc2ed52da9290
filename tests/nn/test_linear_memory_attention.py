"""The linear-memory attention paths (kslm/nn/linear_memory_attention.py) against the dense path of
kslm.nn.attention.attend, in fp32 on CPU: outputs and gradients for every normaliser and mask, with padding and with
a KV cache; that nothing of size T × S is saved for the backward; and a whole Backbone under each kernel."""

import itertools

import pytest
import torch
from helpers import ids, tiny_backbone

from kslm.nn import linear_memory_attention as lm
from kslm.nn.attention import attend, build_attention_mask

B, T, S_QK = 3, 37, 16


def padding():
    am = torch.ones(B, T, dtype=torch.long)
    am[1, -5:] = 0  # right padding
    am[2, :3] = 0  # left padding
    return am


def run(q, k, v, mask, normaliser, kernel):
    out = attend(q, k, v, mask, normaliser, 16, 0.0, kernel)
    weights = torch.linspace(-1, 1, v.shape[-1], dtype=v.dtype)  # a loss that weighs every output column differently
    return (out, *torch.autograd.grad((out * weights).sum(), (q, k, v)))


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("e,kind,pad,normaliser", list(itertools.product(
    (48, 40), ("causal", "bidirectional", "prefix"), (False, True), ("softmax", "softmax_plus", "relu2"))))
def test_linear_memory_equals_dense(e, kind, pad, normaliser, monkeypatch):
    """e = 48 = 3 s (three value slices) and e = 40 (the last slice zero-padded); relu² in chunks of 7 rows."""
    monkeypatch.setattr(lm, "QUERY_CHUNK", 7)
    g = torch.Generator().manual_seed(0)
    mask = build_attention_mask(kind, T, None, padding() if pad else None,
                                torch.tensor([5, 20, 1]) if kind == "prefix" else None)
    q, k = (torch.randn(B, 1, T, S_QK, generator=g, requires_grad=True) for _ in range(2))
    v = torch.randn(B, 1, T, e, generator=g, requires_grad=True)
    dense, linear = run(q, k, v, mask, normaliser, "dense"), run(q, k, v, mask, normaliser, "linear_memory")
    for a, b in zip(linear, dense, strict=True):
        assert rel_err(a, b) < 2e-6


@pytest.mark.parametrize("normaliser", ["softmax_plus", "relu2"])
def test_with_a_kv_cache_and_several_heads(normaliser, monkeypatch):
    """5 new queries after 32 cached keys (causal from position 32 on), 2 heads: the split and chunked paths place the
    queries after the cache as the dense path does."""
    monkeypatch.setattr(lm, "QUERY_CHUNK", 2)
    g = torch.Generator().manual_seed(1)
    mask = build_attention_mask("causal", 5, None, None, None, past_length=32)
    q = torch.randn(2, 2, 5, 8, generator=g, requires_grad=True)
    k = torch.randn(2, 2, 37, 8, generator=g, requires_grad=True)
    v = torch.randn(2, 2, 37, 20, generator=g, requires_grad=True)
    for a, b in zip(run(q, k, v, mask, normaliser, "linear_memory"), run(q, k, v, mask, normaliser, "dense"), strict=True):
        assert rel_err(a, b) < 2e-6


@pytest.mark.parametrize("kind", ["causal", "bidirectional"])
@pytest.mark.parametrize("normaliser", ["softmax_plus", "relu2"])
def test_nothing_of_size_t_by_s_is_saved_for_backward(kind, normaliser, monkeypatch):
    """Every tensor autograd keeps for the backward, per sample: the dense path keeps T × S scores; linear_memory keeps
    at most q/k/v-sized tensors (and, for relu², one chunk's [chunk, S] mask rows). Without padding."""
    monkeypatch.setattr(lm, "QUERY_CHUNK", 32)
    n = 256
    mask = build_attention_mask(kind, n)
    q, k = (torch.randn(2, 1, n, S_QK, requires_grad=True) for _ in range(2))
    v = torch.randn(2, 1, n, 48, requires_grad=True)

    def largest_saved(kernel):
        sizes = []

        def pack(t):
            sizes.append(t.numel() // t.shape[0] if t.dim() > 1 else t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            attend(q, k, v, mask, normaliser, 16, 0.0, kernel)
        return max(sizes)

    assert largest_saved("dense") >= n * n
    assert largest_saved("linear_memory") <= max(3 * n * S_QK, 32 * n)  # [3 slices, T, s] or one [32, S] chunk


def test_dropout_keeps_the_dense_path():
    """Attention dropout draws one mask over the whole score matrix: with dropout > 0 linear_memory must give the
    dense path's result under the same RNG (it falls back to it)."""
    mask = build_attention_mask("causal", 9)
    q, k, v = torch.randn(1, 1, 9, 8), torch.randn(1, 1, 9, 8), torch.randn(1, 1, 9, 24)
    torch.manual_seed(3)
    dense = attend(q, k, v, mask, "relu2", 16, 0.5, "dense")
    torch.manual_seed(3)
    assert torch.equal(attend(q, k, v, mask, "relu2", 16, 0.5, "linear_memory"), dense)


def test_unknown_kernel_is_refused():
    with pytest.raises(ValueError, match="flash.*auto | dense | linear_memory"):
        attend(*(torch.zeros(1, 1, 2, 2) for _ in range(3)), build_attention_mask("causal", 2), kernel="flash")


@pytest.mark.parametrize("block,attention", [("gau", "softmax_plus"), ("gau", "relu2"), ("transformer", "softmax")])
@pytest.mark.parametrize("mask", ["causal", "prefix"])
def test_backbone_kernels_agree(block, attention, mask, monkeypatch):
    """A whole fp32 Backbone (padding in row 1, prefix lengths for the prefix mask): hidden states and every parameter
    gradient under linear_memory equal the dense path's; `auto` on CPU is the dense path exactly."""
    monkeypatch.setattr(lm, "QUERY_CHUNK", 5)
    model = tiny_backbone(block, mask, double=False, attention=attention)
    x, am = ids(2, 13), torch.ones(2, 13, dtype=torch.long)
    am[1, -4:] = 0
    prefix = torch.tensor([4, 6]) if mask == "prefix" else None
    probe = torch.randn(2, 13, 16, generator=torch.Generator().manual_seed(5))

    def run_with(kernel):
        model.set_execution(attention_kernel=kernel)
        model.zero_grad()
        h = model(x, attention_mask=am, prefix_lengths=prefix)
        (h * am[..., None] * probe).sum().backward()  # a random projection: not the norm-invariant Σh²
        return h.detach(), [p.grad.clone() for p in model.parameters()]

    (h_dense, g_dense), (h_lin, g_lin), (h_auto, g_auto) = map(run_with, ("dense", "linear_memory", "auto"))
    assert rel_err(h_lin, h_dense) < 1e-5
    for a, b in zip(g_lin, g_dense, strict=True):
        assert rel_err(a, b) < 2e-5
    assert torch.equal(h_auto, h_dense) and all(torch.equal(a, b) for a, b in zip(g_auto, g_dense, strict=True))
