"""GPLinker (kexue.fm/archives/8888): model layout, sparse targets + loss vs the dense MCCE, and the vectorised decoder vs
a naive Python loop written from the post's decoding pseudo-code."""

import random

import pytest
import torch

from kslm.heads import EfficientGlobalPointer, GPLinker, decode_triples, flatten_pairs, gplinker_loss, gplinker_targets
from kslm.losses import multilabel_categorical_crossentropy

# ---------------------------------------------------------------------------------------------------------------------
# Independent references (plain Python, from kexue.fm/archives/8888: S = S(sh,st) + S(oh,ot) + S(sh,oh|p) + S(st,ot|p))
# ---------------------------------------------------------------------------------------------------------------------


def naive_decode(entity, head, tail, threshold=0.0, valid=None):
    """The post's decoding loop on one sample: entity [2, L, L], head/tail [P, L, L] (nested lists or tensors)."""
    entity, head, tail = entity.tolist(), head.tolist(), tail.tolist()
    L, P = len(entity[0]), len(head)
    ok = [True] * L if valid is None else [bool(v) for v in valid]
    subjects, objects = set(), set()
    for lab in range(2):
        for h in range(L):
            for t in range(L):
                if entity[lab][h][t] > threshold and ok[h] and ok[t]:
                    (subjects if lab == 0 else objects).add((h, t))
    out = set()
    for sh, st in subjects:
        for oh, ot in objects:
            p1 = {p for p in range(P) if head[p][sh][oh] > threshold}
            p2 = {p for p in range(P) if tail[p][st][ot] > threshold}
            for p in p1 & p2:
                out.add((sh, st, p, oh, ot))
    return out


def closure(gold):
    """Everything the four-set decomposition accepts given the gold sets (⊇ gold; = gold unless ambiguous)."""
    subj = {(t[0], t[1]) for t in gold}
    obj = {(t[3], t[4]) for t in gold}
    heads = {(t[2], t[0], t[3]) for t in gold}
    tails = {(t[2], t[1], t[4]) for t in gold}
    return {
        (sh, st, p, oh, ot)
        for sh, st in subj
        for oh, ot in obj
        for p in {q for q, _, _ in heads}
        if (p, sh, oh) in heads and (p, st, ot) in tails
    }


def gold_logits(batch, L, P, pos=10.0, neg=-10.0):
    """+10 at every gold cell of the four sets, −10 elsewhere."""
    B = len(batch)
    ent = torch.full((B, 2, L, L), neg)
    head = torch.full((B, P, L, L), neg)
    tail = torch.full((B, P, L, L), neg)
    for b, gold in enumerate(batch):
        for sh, st, p, oh, ot in gold:
            ent[b, 0, sh, st] = pos
            ent[b, 1, oh, ot] = pos
            head[b, p, sh, oh] = pos
            tail[b, p, st, ot] = pos
    return ent, head, tail


def dense_labels(batch, L, P):
    """Multi-hot [B, H, L, L] labels built straight from the triples (not from gplinker_targets)."""
    B = len(batch)
    ent, head, tail = torch.zeros(B, 2, L, L), torch.zeros(B, P, L, L), torch.zeros(B, P, L, L)
    for b, gold in enumerate(batch):
        for sh, st, p, oh, ot in gold:
            ent[b, 0, sh, st] = ent[b, 1, oh, ot] = 1
            head[b, p, sh, oh] = tail[b, p, st, ot] = 1
    return ent, head, tail


def random_span(rng, lo, hi, maxlen=4):
    s = rng.randint(lo, hi)
    return s, min(hi, s + rng.randint(0, maxlen - 1))


def random_instance(rng, L, P, n_ent=5, n_triples=6):
    """Triples over a small pool of entities in [1, L−2] ([CLS] = 0, [SEP] = L−1): nested/overlapping spans, spans
    reused as subject and object, one subject with several objects, several predicates per pair."""
    pool = set()
    while len(pool) < n_ent:
        h, t = random_span(rng, 1, L - 2)
        pool.add((h, t))
        if rng.random() < 0.4:  # nested span with the same start (the head-only ambiguity the tail term resolves)
            pool.add((h, min(L - 2, t + rng.randint(1, 3))))
    pool = sorted(pool)
    gold = set()
    while len(gold) < n_triples:
        s, o = rng.choice(pool), rng.choice(pool)
        gold.add((s[0], s[1], rng.randrange(P), o[0], o[1]))
    return gold


# ---------------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------------


def test_layout_matches_post():
    m = GPLinker(16, 7, head_size=8)
    assert all(isinstance(x, EfficientGlobalPointer) for x in (m.entity, m.head, m.tail))
    assert (m.entity.num_types, m.head.num_types, m.tail.num_types) == (2, 7, 7)
    assert m.entity.rope is not None and m.entity.tril_mask
    assert m.head.rope is None and not m.head.tril_mask  # no RoPE, no tril (post 8888): s_h may come after o_h
    assert m.tail.rope is None and not m.tail.tril_mask


@pytest.mark.parametrize("hidden,P,d", [(16, 7, 8), (768, 49, 64), (32, 1, 4)])
def test_parameter_count_closed_form(hidden, P, d):
    m = GPLinker(hidden, P, head_size=d)
    expected = 3 * (hidden * 2 * d + 2 * d) + (2 * d + 1) * 2 * (2 + 2 * P)
    assert sum(p.numel() for p in m.parameters()) == expected


def test_post_parameter_scale():
    """Post 12: the Efficient GP heads have ≈ 300k parameters (BERT base, 49 predicates)."""
    n = sum(p.numel() for p in GPLinker(768, 49).parameters())
    assert 250_000 < n < 350_000


def test_output_shapes_dtypes_and_masks():
    torch.manual_seed(0)
    B, L, D, P = 3, 9, 16, 5
    m = GPLinker(D, P, head_size=8)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, 6:] = 0
    ent, head, tail = m(torch.randn(B, L, D), mask)
    assert ent.shape == (B, 2, L, L) and head.shape == tail.shape == (B, P, L, L)
    assert ent.dtype == head.dtype == tail.dtype == torch.float32
    lower = torch.ones(L, L, dtype=torch.bool).tril(-1)
    assert torch.isneginf(ent[0][:, lower]).all() and torch.isfinite(ent[0][:, ~lower]).all()
    assert torch.isfinite(head[0]).all() and torch.isfinite(tail[0]).all()  # no tril on head/tail
    for x in (ent, head, tail):
        assert torch.isneginf(x[1, :, 6:, :]).all() and torch.isneginf(x[1, :, :, 6:]).all()


# ---------------------------------------------------------------------------------------------------------------------
# Targets and loss
# ---------------------------------------------------------------------------------------------------------------------


def test_targets_exact_pairs_dummy_and_dedup():
    batch = [
        [(1, 2, 0, 4, 4), (1, 2, 2, 6, 7), (1, 2, 0, 4, 4)],  # duplicate triple
        [],
    ]
    ent, head, tail = gplinker_targets(batch, num_predicates=3)
    assert ent.shape == (2, 2, 2, 2) and head.shape == (2, 3, 1, 2) and tail.shape == (2, 3, 1, 2)
    assert ent.dtype == torch.long
    assert ent[0, 0].tolist() == [[1, 2], [0, 0]]  # one subject (deduplicated), padded with the dummy
    assert ent[0, 1].tolist() == [[4, 4], [6, 7]]
    assert head[0, :, 0].tolist() == [[1, 4], [0, 0], [1, 6]]  # predicate 1 has no pair: dummy (0, 0)
    assert tail[0, :, 0].tolist() == [[2, 4], [0, 0], [2, 7]]
    assert ent[1].abs().sum() == 0 and head[1].abs().sum() == 0 and tail[1].abs().sum() == 0
    assert flatten_pairs(ent, 10)[0, 1].tolist() == [44, 67]


@pytest.mark.parametrize(
    "bad", [[(0, 0, 0, 3, 3)], [(2, 1, 0, 3, 3)], [(1, 1, 5, 3, 3)], [(1, 1, 0, -1, 3)], [(2, 2, 0, 0, 0)]]
)
def test_targets_reject_bad_triples(bad):
    with pytest.raises(ValueError):
        gplinker_targets([bad], num_predicates=3)


def test_flatten_rejects_positions_beyond_padded_length():
    ent, head, tail = gplinker_targets([[(1, 8, 0, 2, 3)]], num_predicates=1)
    logits = torch.zeros(1, 2, 8, 8), torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)
    with pytest.raises(ValueError):
        gplinker_loss(*logits, ent, head, tail)


def _problem(seed=0):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    B, L, D, P = 3, 12, 16, 4
    lengths = [12, 9, 7]
    batch = [random_instance(rng, n, P, n_ent=4, n_triples=5) for n in lengths]
    mask = torch.zeros(B, L, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    model = GPLinker(D, P, head_size=8)
    logits = model(torch.randn(B, L, D), mask)
    return batch, L, P, lengths, logits


def dense_reference_loss(logits, batch, L, P):
    """Σ_groups mean_batch Σ_heads dense MCCE over the L² cells, cell 0 ([CLS]–[CLS]) excluded (mask_zero)."""
    total = 0.0
    for x, y in zip(logits, dense_labels(batch, L, P), strict=True):
        B, H = x.shape[:2]
        per_row = multilabel_categorical_crossentropy(
            y_true=y.reshape(B, H, L * L)[..., 1:], y_pred=x.reshape(B, H, L * L)[..., 1:]
        )
        total = total + per_row.sum(dim=1).mean()
    return total


def test_sparse_loss_equals_dense_mcce():
    batch, L, P, _, logits = _problem()
    targets = gplinker_targets([sorted(g) for g in batch], num_predicates=P)
    sparse = gplinker_loss(*logits, *targets)
    dense = dense_reference_loss(logits, batch, L, P)
    assert sparse.dim() == 0 and torch.isfinite(sparse)
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-4)


def test_dense_option_equals_the_dense_reference():
    """gplinker_loss(sparse=False) (multi-hot labels through the dense MCCE) is the same loss, also with masked cells."""
    batch, L, P, _, logits = _problem()
    logits = tuple(x.clone() for x in logits)
    for x in logits:
        x[..., 0, :] = float("-inf")  # the <s> row, masked as the model does
    targets = gplinker_targets([sorted(g) for g in batch], num_predicates=P)
    dense = gplinker_loss(*logits, *targets, sparse=False)
    torch.testing.assert_close(dense, dense_reference_loss(logits, batch, L, P), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(dense, gplinker_loss(*logits, *targets), rtol=1e-5, atol=1e-4)


def test_loss_reduction_is_sum_heads_mean_batch_summed_over_groups():
    """Each group contributes mean_batch(sum_heads): doubling the batch by duplication leaves the loss unchanged,
    while the loss is not the mean over heads (which would be smaller by roughly the head count)."""
    batch, L, P, _, logits = _problem(1)
    targets = gplinker_targets(batch, num_predicates=P)
    one = gplinker_loss(*logits, *targets)
    two = gplinker_loss(*(torch.cat([x, x]) for x in logits), *(torch.cat([t, t]) for t in targets))
    torch.testing.assert_close(one, two)
    per_group = []
    for x, t in zip(logits, targets, strict=True):
        B, H, n, _ = x.shape
        from kslm.losses import sparse_multilabel_categorical_crossentropy as smcce

        per_group.append(smcce(y_true=flatten_pairs(t, n), y_pred=x.reshape(B, H, n * n), mask_zero=True))
    torch.testing.assert_close(one, sum(r.sum(1).mean() for r in per_group))
    assert not torch.allclose(one, sum(r.mean() for r in per_group))


def test_flattening_uses_padded_length():
    """Labels flattened with a sample's own (unpadded) length would point at other cells: different loss."""
    batch, L, P, lengths, logits = _problem(2)
    targets = gplinker_targets(batch, num_predicates=P)
    right = gplinker_loss(*logits, *targets)
    wrong = 0.0
    from kslm.losses import sparse_multilabel_categorical_crossentropy as smcce

    for x, t in zip(logits, targets, strict=True):
        B, H, n, _ = x.shape
        flat = torch.stack([flatten_pairs(t[b], lengths[b]) for b in range(B)])  # the pitfall: per-sample, not padded, length
        wrong = wrong + smcce(y_true=flat, y_pred=x.reshape(B, H, n * n), mask_zero=True).sum(1).mean()
    assert not torch.allclose(right, wrong)


def test_loss_backward_finite_with_masked_logits():
    batch, L, P, _, _ = _problem(3)
    torch.manual_seed(3)
    model = GPLinker(16, P, head_size=8)
    mask = torch.ones(3, L, dtype=torch.long)
    mask[1, 9:] = 0
    mask[2, 7:] = 0
    loss = gplinker_loss(*model(torch.randn(3, L, 16), mask), *gplinker_targets(batch, num_predicates=P))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_training_drives_decode_to_gold():
    """80 Adam steps on one fixed batch: the loss falls and decoding the model's logits recovers the gold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: thread overhead dominates
    try:
        _train_and_decode()
    finally:
        torch.set_num_threads(threads)


def _train_and_decode():
    torch.manual_seed(0)
    L, D, P = 8, 16, 2
    batch = [{(1, 2, 0, 4, 5), (1, 3, 1, 4, 4)}, {(2, 2, 1, 5, 6)}]
    hidden = torch.randn(2, L, D)
    model = GPLinker(D, P, head_size=8)
    targets = gplinker_targets(batch, num_predicates=P)
    opt = torch.optim.Adam(list(model.parameters()) + [hidden.requires_grad_()], lr=1e-2)
    first = None
    for _ in range(80):
        loss = gplinker_loss(*model(hidden), *targets)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    # (bert4keras' sparse MCCE is clipped, so once the positives dominate it hovers near 0, even slightly below)
    assert abs(loss.item()) < 0.02 * first
    assert decode_triples(*model(hidden)) == batch


# ---------------------------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------------------------

HANDMADE = {
    "nested_subjects_same_head": {(1, 3, 0, 7, 8), (1, 5, 0, 7, 9)},  # head alone: 4 candidates, tail picks 2
    "nested_objects_same_head": {(2, 2, 1, 5, 6), (2, 2, 1, 5, 9)},
    "one_subject_many_objects": {(1, 2, 0, 4, 4), (1, 2, 0, 6, 7), (1, 2, 2, 9, 10), (1, 2, 1, 4, 4)},
    "span_is_subject_and_object": {(1, 2, 0, 4, 5), (4, 5, 1, 8, 9), (8, 9, 2, 1, 2)},
    "self_relation_and_subject_after_object": {(3, 4, 0, 3, 4), (8, 10, 1, 2, 2)},
    "overlapping_not_nested": {(2, 5, 0, 4, 7), (4, 7, 1, 2, 5)},
    "same_pair_several_predicates": {(1, 1, 0, 3, 3), (1, 1, 1, 3, 3), (1, 1, 2, 3, 3)},
    "empty": set(),
}


@pytest.mark.parametrize("name", sorted(HANDMADE))
def test_decode_gold_logits_handmade(name):
    gold = HANDMADE[name]
    assert closure(gold) == gold  # the case is decodable under the post's four-term decomposition
    assert decode_triples(*gold_logits([gold], 12, 3)) == [gold]


def test_ambiguity_needs_the_tail_term():
    """Post 8888: with nested subjects sharing a head, head + entity sets alone over-generate; the tail set fixes it."""
    gold = HANDMADE["nested_subjects_same_head"]
    ent, head, tail = gold_logits([gold], 12, 3)
    no_tail = decode_triples(ent, head, torch.full_like(tail, 10.0))[0]
    assert no_tail > gold and len(no_tail) == 4
    assert decode_triples(ent, head, tail)[0] == gold


def test_decode_gold_logits_random_instances():
    rng = random.Random(0)
    exact = 0
    for trial in range(60):
        L, P = rng.choice([10, 16, 24]), rng.choice([1, 3, 5])
        batch = [random_instance(rng, L, P) for _ in range(rng.randint(1, 4))]
        expected = [closure(g) for g in batch]
        got = decode_triples(*gold_logits(batch, L, P))
        assert got == expected, trial
        for g, e in zip(batch, got, strict=True):
            assert g <= e
            exact += g == e
    assert exact >= 0.8 * 60  # nearly all instances are unambiguous: decode == gold exactly


@pytest.mark.parametrize("dense_budget", [1 << 20, 0])  # the batch-wide gather and the per-sentence join
def test_decode_matches_naive_loop_on_random_logits(dense_budget):
    torch.manual_seed(0)
    total = 0
    for B, L, P, thr, shift in [(3, 7, 3, 0.0, 0.5), (2, 9, 2, 0.3, 0.8), (1, 6, 4, -0.2, 0.0), (2, 1, 1, 0.0, 1.0)]:
        ent, head, tail = (torch.randn(B, h, L, L) + shift for h in (2, P, P))
        got = decode_triples(ent, head, tail, threshold=thr, dense_budget=dense_budget)
        for b in range(B):
            ref = naive_decode(ent[b], head[b], tail[b], thr)
            assert got[b] == ref
            total += len(ref)
    assert total > 300  # many positives: the join is exercised with many candidates per head cell


def test_decode_matches_naive_loop_on_model_logits_with_padding_and_mask():
    """Model logits carry −inf (padding, tril); the optional mask drops [CLS]/[SEP]-touching entities (as the post's decoder)."""
    torch.manual_seed(1)
    B, L, D, P = 3, 8, 16, 3
    model = GPLinker(D, P, head_size=8)
    lengths = [8, 6, 4]
    mask = torch.zeros(B, L, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3)  # push many logits above 0
        logits = model(torch.randn(B, L, D), mask)
    special = mask.clone()
    special[:, 0] = 0
    for b, n in enumerate(lengths):
        special[b, n - 1] = 0
    for m, budget in ((None, 1 << 20), (special, 1 << 20), (None, 0), (special, 0)):
        got = decode_triples(*logits, mask=m, dense_budget=budget)
        for b in range(B):
            ref = naive_decode(logits[0][b], logits[1][b], logits[2][b], 0.0, None if m is None else m[b].tolist())
            assert got[b] == ref
            n = lengths[b]
            assert all(max(t[1], t[4]) < n for t in got[b])  # padding never decoded
            if m is not None:
                assert all(min(t[0], t[3]) > 0 and max(t[1], t[4]) < n - 1 for t in got[b])
    assert sum(len(x) for x in decode_triples(*logits)) > 20


def test_decode_rejects_bad_shapes():
    with pytest.raises(ValueError):
        decode_triples(torch.zeros(1, 3, 4, 4), torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError):
        decode_triples(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 4, 4))
