"""GlobalPointer / Efficient GlobalPointer (kexue.fm/archives/8373, 8877; bert4keras layout, EGP:
s_α(i,j) = q_iᵀR_{j−i}k_j/√d + ½w_{2α}·p_j + ½w_{2α+1}·p_i on the pre-RoPE p) against naive float64 per-(type, i, j) loops."""

import copy
import math

import pytest
import torch

from kslm.heads import EfficientGlobalPointer, GlobalPointer

D, T, HS = 8, 3, 6  # hidden size, entity types, head size (small: the reference is pure Python)


# ---------------------------------------------------------------------------------------------------------------------
# Naive reference, written from the posts and bert4keras' layers.py: Python floats, math.cos / math.sin per pair, explicit loops.
# ---------------------------------------------------------------------------------------------------------------------


def dense(layer, h):
    """Dense layer on one vector h (list of floats) in float64 Python arithmetic."""
    w, b = layer.weight.double().tolist(), layer.bias.double().tolist()
    return [sum(w[o][c] * h[c] for c in range(len(h))) + b[o] for o in range(len(b))]


def rope(v, m):
    """Interleaved-pair RoPE at position m: pair (2t, 2t+1) turned by the angle m·10000^{−2t/d}."""
    d, out = len(v), list(v)
    for t in range(d // 2):
        a = m * 10000.0 ** (-2.0 * t / d)
        c, s = math.cos(a), math.sin(a)
        out[2 * t] = v[2 * t] * c - v[2 * t + 1] * s
        out[2 * t + 1] = v[2 * t + 1] * c + v[2 * t] * s
    return out


def dot(a, b):
    return sum(x * y for x, y in zip(a, b, strict=True))


def masked(score, valid, i, j, tril):
    if not (valid[i] and valid[j]) or (tril and i > j):
        return -math.inf
    return score


def naive_gp(head, hidden, mask, rope_on, tril, split="bert4keras"):
    """s_α(i,j) = q_{i,α}·k_{j,α}/√d; chunk α of the Dense output = [q (first d) | k (last d)]."""
    B, L, _ = hidden.shape
    d = head.head_size
    out = torch.empty(B, head.num_types, L, L, dtype=torch.float64)
    for bi in range(B):
        valid = [True] * L if mask is None else [bool(v) for v in mask[bi].tolist()]
        proj = [dense(head.dense, hidden[bi, i].double().tolist()) for i in range(L)]
        for a in range(head.num_types):
            chunk = [p[a * 2 * d:(a + 1) * 2 * d] for p in proj]
            if split == "bert4keras":
                q, k = [c[:d] for c in chunk], [c[d:] for c in chunk]
            else:  # "swapped": q and k halves exchanged (a plausible port bug)
                q, k = [c[d:] for c in chunk], [c[:d] for c in chunk]
            if rope_on:
                q, k = [rope(q[i], i) for i in range(L)], [rope(k[i], i) for i in range(L)]
            for i in range(L):
                for j in range(L):
                    out[bi, a, i, j] = masked(dot(q[i], k[j]) / math.sqrt(d), valid, i, j, tril)
    return out


def naive_egp(head, hidden, mask, rope_on, tril, variant="bert4keras"):
    """s_α(i,j) = q_i·k_j/√d + ½(w_{2α}·p_j + c_{2α}) + ½(w_{2α+1}·p_i + c_{2α+1}); q = p[0::2], k = p[1::2]."""
    B, L, _ = hidden.shape
    d = head.head_size
    out = torch.empty(B, head.num_types, L, L, dtype=torch.float64)
    for bi in range(B):
        valid = [True] * L if mask is None else [bool(v) for v in mask[bi].tolist()]
        p = [dense(head.p_dense, hidden[bi, i].double().tolist()) for i in range(L)]
        if variant == "contiguous":  # first half / second half, as some ports do
            q, k = [v[:d] for v in p], [v[d:] for v in p]
        else:
            q, k = [v[0::2] for v in p], [v[1::2] for v in p]
        if rope_on:
            q, k = [rope(q[i], i) for i in range(L)], [rope(k[i], i) for i in range(L)]
        bias_src = [rope(v, i) for i, v in enumerate(p)] if variant == "post_rope_bias" else p
        bias = [dense(head.q_dense, v) for v in bias_src]  # [L][2T]
        half = 1.0 if variant == "no_half" else 0.5
        for a in range(head.num_types):
            for i in range(L):
                for j in range(L):
                    if variant == "swap_ij":
                        b_ij = bias[i][2 * a] + bias[j][2 * a + 1]
                    else:
                        b_ij = bias[j][2 * a] + bias[i][2 * a + 1]
                    out[bi, a, i, j] = masked(dot(q[i], k[j]) / math.sqrt(d) + half * b_ij, valid, i, j, tril)
    return out


NAIVE = {GlobalPointer: naive_gp, EfficientGlobalPointer: naive_egp}
HEADS = [GlobalPointer, EfficientGlobalPointer]


def make(cls, rope_on=True, tril=True, seed=0):
    torch.manual_seed(seed)
    head = cls(D, T, head_size=HS, rope=rope_on, tril_mask=tril)
    with torch.no_grad():  # non-zero biases so that every bias term is exercised
        for prm in head.parameters():
            prm.normal_(0.0, 0.5)
    return head


def batch(seed=1, B=2, L=5, lengths=(5, 3)):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, L, D, generator=g)
    mask = torch.zeros(B, L, dtype=torch.long)
    for bi, n in enumerate(lengths):
        mask[bi, :n] = 1
    return hidden, mask


def assert_same(out, want, rope_on):
    """Equal where finite (rope runs in fp32 inside RotaryEmbedding: ~1e-6 relative), identical −inf pattern."""
    assert torch.equal(torch.isneginf(out), torch.isneginf(want))
    assert torch.isfinite(out[~torch.isneginf(out)]).all()
    fin = torch.isfinite(want)
    tol = dict(rtol=1e-5, atol=1e-5) if rope_on else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[fin].double(), want[fin], **tol)


# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", HEADS, ids=["gp", "egp"])
@pytest.mark.parametrize("rope_on", [True, False], ids=["rope", "norope"])
@pytest.mark.parametrize("tril", [True, False], ids=["tril", "full"])
def test_matches_naive_float64(cls, rope_on, tril):
    head = make(cls, rope_on, tril).double()
    hidden, mask = batch()
    out = head(hidden.double(), mask)
    assert out.shape == (2, T, 5, 5) and out.dtype == torch.float64
    assert_same(out, NAIVE[cls](head, hidden, mask, rope_on, tril), rope_on)


@pytest.mark.parametrize("cls", HEADS, ids=["gp", "egp"])
def test_matches_naive_fp32_no_mask(cls):
    head = make(cls)
    hidden, _ = batch()
    out = head(hidden)  # fp32 parameters and input, mask omitted: only the triangle is masked
    assert out.dtype == torch.float32
    want = NAIVE[cls](head, hidden, None, True, True)
    assert torch.equal(torch.isneginf(out), torch.isneginf(want))
    fin = torch.isfinite(want)
    torch.testing.assert_close(out[fin].double(), want[fin], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "cls,variant",
    [(GlobalPointer, "swapped"), (EfficientGlobalPointer, "contiguous"), (EfficientGlobalPointer, "swap_ij"),
     (EfficientGlobalPointer, "no_half"), (EfficientGlobalPointer, "post_rope_bias")],
)
def test_reference_rejects_wrong_layouts(cls, variant):
    """The naive reference is sensitive to bert4keras' layout details (split order, bias i/j, ½, pre-RoPE p): a head
    built with any of these port bugs would fail test_matches_naive_float64."""
    head = make(cls).double()
    hidden, mask = batch()
    out = head(hidden.double(), mask)
    kw = {"split": variant} if cls is GlobalPointer else {"variant": variant}
    wrong = NAIVE[cls](head, hidden, mask, True, True, **kw)
    fin = torch.isfinite(wrong)
    assert (out[fin].double() - wrong[fin]).abs().max() > 1e-2


@pytest.mark.parametrize("cls", HEADS, ids=["gp", "egp"])
@pytest.mark.parametrize("tril", [True, False], ids=["tril", "full"])
def test_mask_pattern_exact(cls, tril):
    head = make(cls, tril=tril)
    hidden, mask = batch(lengths=(5, 3))
    out = head(hidden, mask)
    L = 5
    for bi, n in enumerate((5, 3)):
        for i in range(L):
            for j in range(L):
                v = out[bi, :, i, j]
                if i >= n or j >= n or (tril and i > j):
                    assert (v == float("-inf")).all(), (bi, i, j)
                else:
                    assert torch.isfinite(v).all(), (bi, i, j)
    # a bool mask and a float mask give the same result as the integer one
    assert torch.equal(head(hidden, mask.bool()), out)
    assert torch.equal(head(hidden, mask.float()), out)


@pytest.mark.parametrize("cls", HEADS, ids=["gp", "egp"])
@pytest.mark.parametrize("rope_on", [True, False], ids=["rope", "norope"])
def test_padding_invariance(cls, rope_on):
    """A right-padded sample scores its valid block exactly as the unpadded sample does (positions start at 0)."""
    head = make(cls, rope_on).double()
    hidden, mask = batch(B=3, L=7, lengths=(7, 4, 2))
    torch.manual_seed(5)
    hidden[mask == 0] = torch.randn(int((mask == 0).sum()), D) * 100  # garbage under the padding must not leak
    out = head(hidden.double(), mask)
    for bi, n in enumerate((7, 4, 2)):
        alone = head(hidden[bi:bi + 1, :n].double())
        torch.testing.assert_close(out[bi:bi + 1, :, :n, :n], alone, rtol=1e-12, atol=1e-12)
        assert torch.isneginf(out[bi, :, n:, :]).all() and torch.isneginf(out[bi, :, :, n:]).all()


def closed_form(cls, hidden, types, hs):
    if cls is GlobalPointer:
        return hidden * (types * 2 * hs) + types * 2 * hs
    return hidden * 2 * hs + 2 * hs + (2 * hs) * (2 * types) + 2 * types


@pytest.mark.parametrize("cls", HEADS, ids=["gp", "egp"])
@pytest.mark.parametrize("hidden,types,hs", [(8, 3, 6), (768, 9, 64), (32, 1, 16), (100, 10, 4)])
def test_parameter_count_closed_form(cls, hidden, types, hs):
    head = cls(hidden, types, head_size=hs)
    n = sum(p.numel() for p in head.parameters())
    assert n == closed_form(cls, hidden, types, hs)
    assert not list(head.buffers(recurse=True)) or all(not b.requires_grad for b in head.buffers())


def test_post_numbers_and_egp_smaller():
    """kexue.fm/archives/8877: GP costs 2Dd per type (≈98k at D=768, d=64; 100 types ≈ 9.8M); EGP is cheaper for every T ≥ 2."""
    per_type = closed_form(GlobalPointer, 768, 2, 64) - closed_form(GlobalPointer, 768, 1, 64)
    assert per_type == 2 * 768 * 64 + 2 * 64 and abs(per_type - 98_000) < 1_000
    assert abs(closed_form(GlobalPointer, 768, 100, 64) - 9.8e6) < 0.1e6
    assert closed_form(EfficientGlobalPointer, 768, 2, 64) - closed_form(EfficientGlobalPointer, 768, 1, 64) == 4 * 64 + 2
    for types in (2, 3, 9, 10, 100):
        gp = sum(p.numel() for p in GlobalPointer(768, types).parameters())
        egp = sum(p.numel() for p in EfficientGlobalPointer(768, types).parameters())
        assert egp < gp, types
    for hidden, hs in ((8, 6), (16, 4)):
        for types in (2, 5):
            assert closed_form(EfficientGlobalPointer, hidden, types, hs) < closed_form(GlobalPointer, hidden, types, hs)


@pytest.mark.parametrize("cls", HEADS, ids=["gp", "egp"])
def test_bf16_autocast_gives_fp32(cls):
    """Under bf16 autocast (backbone output in bf16) the head still computes in fp32: identical to an fp32 run on the
    same bf16-rounded hidden states, and close to the full-fp32 logits."""
    head = make(cls)
    hidden, mask = batch()
    ref = head(hidden, mask)
    hb = hidden.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(hb, mask)
        out32 = head(hidden, mask)
    assert out.dtype == torch.float32 and out32.dtype == torch.float32
    torch.testing.assert_close(out32, ref, rtol=1e-6, atol=1e-6)  # a bf16 Dense would miss this by ~1e-2
    torch.testing.assert_close(out, head(hb.float(), mask), rtol=1e-6, atol=1e-6)
    assert torch.equal(torch.isneginf(out), torch.isneginf(ref))
    fin = torch.isfinite(ref)
    torch.testing.assert_close(out[fin], ref[fin], rtol=0.05, atol=0.1)


@pytest.mark.parametrize("cls", HEADS, ids=["gp", "egp"])
def test_bf16_module_still_fp32_logits(cls):
    """A head cast with .to(bfloat16) returns fp32 logits equal to the fp32 head with the same (rounded) weights."""
    head = make(cls)
    hidden, mask = batch()
    hb = copy.deepcopy(head).to(torch.bfloat16)
    with torch.no_grad():  # the fp32 head with the bf16-rounded weights
        for p32, p16 in zip(head.parameters(), hb.parameters(), strict=True):
            p32.copy_(p16.float())
    out = hb(hidden.bfloat16(), mask)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, head(hidden.bfloat16().float(), mask), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("cls", HEADS, ids=["gp", "egp"])
def test_gradients_finite_through_masked_logits(cls):
    """−inf in the output does not poison the parameters' gradients when the loss only reads finite entries."""
    head = make(cls)
    hidden, mask = batch()
    out = head(hidden, mask)
    out.masked_fill(torch.isneginf(out), 0.0).square().sum().backward()
    for p in head.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_rejects_odd_head_size_with_rope():
    with pytest.raises(ValueError):
        GlobalPointer(8, 2, head_size=5)
    with pytest.raises(ValueError):
        EfficientGlobalPointer(8, 2, head_size=5)
    GlobalPointer(8, 2, head_size=5, rope=False)  # fine without RoPE
