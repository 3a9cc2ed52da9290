"""Masks and attention normalisers against naive Python loops: relu²(a)/n (kexue.fm/archives/8934), softmax and
softmax(log_512(max(n, 16))·a) (archives/8823, 9019), n = visible keys per query; causal and UniLM prefix masks,
allowed = idx_j ≤ idx_i with idx = cumsum(segment) (archives/9529).

The normalisers are checked through `attend` on random float64 q/k/v; the masks through `build_attention_mask` and
through whole (tiny) Backbones whose outputs must or must not move when one token changes."""

import math

import pytest
import torch
from helpers import tiny_backbone

from kslm.nn.attention import attend, build_attention_mask, entropy_invariant_scale

# ---------------------------------------------------------------- naive references


def naive_allowed(kind, T, B, valid=None, prefix=None, past=0):
    """allowed[b][i][j] for queries i (absolute position past + i) and keys j < past + T, as nested lists.
    prefix: bert4keras UniLM rule, idx = cumsum(segment_ids) with segment 0 for t < prefix_b, 1 after;
    allowed = idx_j <= idx_i. valid[b][j]: 1 for real tokens (padding keys are never attended)."""
    S = past + T
    out = []
    for b in range(B):
        if kind == "prefix":
            idx, run = [], 0
            for t in range(S):
                run += 1 if t >= prefix[b] else 0
                idx.append(run)
        rows = []
        for i in range(T):
            qi = past + i
            row = []
            for j in range(S):
                if kind == "causal":
                    ok = j <= qi
                elif kind == "bidirectional":
                    ok = True
                else:
                    ok = idx[j] <= idx[qi]
                if valid is not None:
                    ok = ok and bool(valid[b][j])
                row.append(ok)
            rows.append(row)
        out.append(rows)
    return out


def naive_attend(q, k, v, allowed, normaliser, train_length=512):
    """Row by row: the visible keys, n = their count, scores q·k/√d, then the normaliser written out."""
    B, H, T, d = q.shape
    out = torch.zeros(B, H, T, v.shape[-1], dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            for i in range(T):
                js = [j for j, ok in enumerate(allowed[b][i]) if ok]
                n = len(js)
                if n == 0:
                    continue
                s = [float(torch.dot(q[b, h, i], k[b, h, j])) / math.sqrt(d) for j in js]
                if normaliser == "relu2":
                    w = [max(x, 0.0) ** 2 / n for x in s]
                else:
                    lam = math.log(max(n, 16)) / math.log(train_length) if normaliser == "softmax_plus" else 1.0
                    m = max(lam * x for x in s)
                    e = [math.exp(lam * x - m) for x in s]
                    w = [x / sum(e) for x in e]
                for wj, j in zip(w, js, strict=False):
                    out[b, h, i] += wj * v[b, h, j]
    return out


def valid_rows(allowed):
    """Query rows that see at least one key (padded queries are unconstrained by design)."""
    return [[any(r) for r in rows] for rows in allowed]


def qkv(B, H, T, d, seed, S=None):
    g = torch.Generator().manual_seed(seed)
    S = S or T
    q = torch.randn(B, H, T, d, generator=g, dtype=torch.float64) * 1.5
    k = torch.randn(B, H, S, d, generator=g, dtype=torch.float64) * 1.5
    v = torch.randn(B, H, S, d, generator=g, dtype=torch.float64)
    return q, k, v


# ---------------------------------------------------------------- cases: (kind, T, valid, prefix)

T = 24
PAD_RIGHT = [[1] * T, [1] * 17 + [0] * (T - 17)]
PAD_LEFT = [[1] * T, [0] * 5 + [1] * (T - 5)]
CASES = {
    "causal": ("causal", None, None),
    "causal_leftpad": ("causal", PAD_LEFT, None),
    "bidirectional": ("bidirectional", None, None),
    "bidirectional_pad": ("bidirectional", PAD_RIGHT, None),
    "prefix": ("prefix", None, [6, 19]),
    "prefix_pad": ("prefix", PAD_RIGHT, [3, 9]),
}


def build(case):
    kind, valid, prefix = CASES[case]
    mask = build_attention_mask(
        kind,
        T,
        attention_mask=None if valid is None else torch.tensor(valid),
        prefix_lengths=None if prefix is None else torch.tensor(prefix),
    )
    return mask, naive_allowed(kind, T, 2, valid, prefix)


def assert_rows_close(out, want, allowed, atol):
    rows = valid_rows(allowed)
    for b in range(out.shape[0]):
        keep = torch.tensor(rows[b])
        torch.testing.assert_close(out[b][:, keep], want[b][:, keep], rtol=0, atol=atol)


# ---------------------------------------------------------------- masks


@pytest.mark.parametrize("case", list(CASES))
def test_mask_and_visible_counts_match_naive_rules(case):
    mask, allowed = build(case)
    dense = mask.dense(T, T, None).expand(2, 1, T, T)
    rows = valid_rows(allowed)
    for b in range(2):
        for i in range(T):
            if not rows[b][i]:
                continue
            assert dense[b, 0, i].tolist() == allowed[b][i], (case, b, i)
            assert mask.n_visible.expand(2, 1, T, 1)[b, 0, i, 0].item() == sum(allowed[b][i])


def test_prefix_mask_is_unilm_cumsum_rule():
    """Spelled-out consequences of idx_j <= idx_i: prefix rows see exactly the prefix, target rows the prefix + past."""
    P = 4
    dense = build_attention_mask("prefix", 7, prefix_lengths=torch.tensor([P])).dense(7, 7, None)[0, 0]
    for i in range(7):
        want = [j < P for j in range(7)] if i < P else [j <= i for j in range(7)]
        assert dense[i].tolist() == want


def test_causal_mask_with_cache_offsets_queries():
    mask = build_attention_mask("causal", 3, past_length=5)
    assert mask.n_visible.flatten().tolist() == [6.0, 7.0, 8.0]
    dense = mask.dense(3, 8, None)[0, 0]
    assert dense.tolist() == [[j <= 5 + i for j in range(8)] for i in range(3)]


def test_unknown_mask_and_missing_prefix_rejected():
    with pytest.raises(ValueError):
        build_attention_mask("sliding", 4)
    with pytest.raises(ValueError):
        build_attention_mask("prefix", 4)


# ---------------------------------------------------------------- normalisers


@pytest.mark.parametrize("case", list(CASES))
def test_relu2_divides_by_visible_keys(case):
    mask, allowed = build(case)
    q, k, v = qkv(2, 2, T, 8, seed=10)
    out = attend(q, k, v, mask, "relu2")
    want = naive_attend(q, k, v, allowed, "relu2")
    assert_rows_close(out, want, allowed, atol=1e-5)  # relu² is computed in fp32 by design
    assert want.abs().max() > 0.1  # outputs are O(1), so 1e-5 is tight (n off by one would be ~1/n ≫ 1e-5)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("normaliser,train_length", [("softmax", 512), ("softmax_plus", 512), ("softmax_plus", 20)])
def test_softmax_and_softmax_plus_match_explicit_formula(case, normaliser, train_length):
    mask, allowed = build(case)
    q, k, v = qkv(2, 2, T, 8, seed=11)
    out = attend(q, k, v, mask, normaliser, train_length=train_length)
    want = naive_attend(q, k, v, allowed, normaliser, train_length)
    # the log-n factor is computed in fp32 by design (relative error ~1e-7 on the logits)
    assert_rows_close(out, want, allowed, atol=1e-12 if normaliser == "softmax" else 1e-6)


def test_softmax_plus_differs_from_softmax():
    """Guard for the test above: with T = 24 the log-n scale is far from 1, so the two outputs must differ."""
    mask, _allowed = build("causal")
    q, k, v = qkv(2, 2, T, 8, seed=11)
    diff = attend(q, k, v, mask, "softmax_plus") - attend(q, k, v, mask, "softmax")
    assert diff.abs().max() > 0.05


def test_causal_cache_rows_match_naive():
    """Queries at absolute positions past + i against all cached keys (fast causal path, T ≠ S)."""
    past, t = 20, 3
    q, k, v = qkv(1, 2, t, 8, seed=12, S=past + t)
    mask = build_attention_mask("causal", t, past_length=past)
    allowed = naive_allowed("causal", t, 1, past=past)
    for normaliser, atol in (("softmax", 1e-12), ("softmax_plus", 1e-6), ("relu2", 1e-5)):
        torch.testing.assert_close(
            attend(q, k, v, mask, normaliser), naive_attend(q, k, v, allowed, normaliser), rtol=0, atol=atol
        )


def test_log512_values():
    n = torch.tensor([16.0, 64.0, 128.0, 512.0, 2048.0, 8192.0])
    got = entropy_invariant_scale(n, 512).tolist()
    for g, want in zip(got, [0.444, 0.667, 0.778, 1.0, 1.222, 1.444], strict=False):
        assert abs(g - want) < 5e-4, (g, want)
    # n < 16 is clamped to 16
    assert entropy_invariant_scale(torch.tensor([1.0, 4.0]), 512).tolist() == pytest.approx([4 / 9, 4 / 9], abs=1e-7)


def test_unknown_normaliser_rejected():
    q, k, v = qkv(1, 1, 2, 4, seed=0)
    with pytest.raises(ValueError):
        attend(q, k, v, build_attention_mask("causal", 2), "sigmoid")


# ---------------------------------------------------------------- whole-backbone mask behaviour


def per_position_change(model, x, t, **kw):
    """max |Δ output| at each position when token t is replaced."""
    y = x.clone()
    y[:, t] = (y[:, t] + 7) % 40
    with torch.no_grad():
        return (model(x, **kw) - model(y, **kw)).abs().amax(dim=(0, 2))


X = torch.tensor([[3, 14, 15, 9, 26, 5, 35, 8, 9, 7, 9, 32]])


@pytest.mark.parametrize("block", ["transformer", "gau"])
@pytest.mark.parametrize("attention", ["softmax", "softmax_plus", "relu2"])
def test_causal_ignores_future(block, attention):
    model = tiny_backbone(block, "causal", attention=attention, train_length=8)
    d = per_position_change(model, X, 7)
    assert d[:7].max().item() == 0.0
    assert (d[7:] > 1e-6).all()


@pytest.mark.parametrize("block", ["transformer", "gau"])
@pytest.mark.parametrize("attention", ["softmax_plus", "relu2"])
def test_prefix_attends_both_ways_inside_prefix_only(block, attention):
    model = tiny_backbone(block, "prefix", attention=attention, train_length=8)
    P = torch.tensor([6])
    inside = per_position_change(model, X, 5, prefix_lengths=P)  # a later prefix token ...
    assert inside[:5].max() > 1e-4 and (inside[5:] > 1e-6).all()  # ... moves earlier prefix positions too
    if attention != "relu2":  # (relu² can zero a row's only link to the edited key; softmax never does)
        assert (inside > 1e-6).all()
    after = per_position_change(model, X, 8, prefix_lengths=P)  # a target token ...
    assert after[:8].max().item() == 0.0  # ... moves neither the prefix nor earlier targets
    assert (after[8:] > 1e-6).all()
    # the same edit at 5 under a causal mask leaves positions 0..4 alone: the prefix mask is what differs
    causal = per_position_change(tiny_backbone(block, "causal", attention=attention, train_length=8), X, 5)
    assert causal[:5].max().item() == 0.0


@pytest.mark.parametrize("block", ["transformer", "gau"])
def test_bidirectional_sees_everything(block):
    model = tiny_backbone(block, "bidirectional", train_length=8)
    d = per_position_change(model, X, X.shape[1] - 1)
    assert (d > 1e-6).all()
