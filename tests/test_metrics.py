"""SpanF1 / TripleF1 against hand-computed values, accumulation, reset, and a 2-rank gloo DDP sync."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import REPO

from kslm.metrics import SpanF1, TripleF1


def values(metric) -> dict:
    out = metric.compute()
    assert set(out) == {"precision", "recall", "f1"}
    assert all(isinstance(v, torch.Tensor) and not v.isnan() for v in out.values())
    return {k: v.item() for k, v in out.items()}


def prf(tp, n_pred, n_gold) -> dict:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def check(metric, preds, targets, tp, n_pred, n_gold):
    metric.update(preds, targets)
    assert values(metric) == pytest.approx(prf(tp, n_pred, n_gold), abs=1e-6)


# Sample 1: gold has a span nested in another; the prediction gets the inner one, the wrong type for the outer one,
# and repeats a span. Sample 2: one exact hit, one boundary miss, one gold span missed.
SPAN_PREDS = [[(0, 5, "ORG"), (2, 3, "LOC"), (2, 3, "LOC"), (0, 5, "LOC")], [(7, 9, "PER"), (10, 12, "PER")]]
SPAN_GOLD = [[(0, 5, "ORG"), (2, 3, "LOC"), (0, 8, "ORG")], [(7, 9, "PER"), (10, 13, "PER"), (14, 15, "LOC")]]
# tp = 2 + 1 = 3; predicted = 3 (duplicate counted once) + 2 = 5; gold = 3 + 3 = 6 → P = 3/5, R = 1/2, F1 = 6/11


def test_span_f1_hand_computed_nested_and_duplicates():
    m = SpanF1()
    check(m, SPAN_PREDS, SPAN_GOLD, tp=3, n_pred=5, n_gold=6)
    assert values(m)["f1"] == pytest.approx(6 / 11)


def test_span_f1_matches_per_sample_not_across_samples():
    # (0, 1, "A") is predicted for sample 0 but gold only in sample 1: no true positive.
    check(SpanF1(), [[(0, 1, "A")], []], [[], [(0, 1, "A")]], tp=0, n_pred=1, n_gold=1)


def test_span_f1_gold_duplicates_count_once_and_tensor_or_list_items():
    preds = [[[torch.tensor(1), torch.tensor(4), torch.tensor(0)], (6, 8, 1)]]
    gold = [[(1, 4, 0), (1, 4, 0), (6, 8, 2)]]
    check(SpanF1(), preds, gold, tp=1, n_pred=2, n_gold=2)


@pytest.mark.parametrize(
    "preds, gold, counts",
    [
        ([[], []], [[(0, 1, "A")], [(2, 3, "B")]], (0, 0, 2)),  # empty preds: P = 0 (not NaN), R = 0
        ([[(0, 1, "A")], [(2, 3, "B")]], [[], []], (0, 2, 0)),  # empty gold
        ([[], []], [[], []], (0, 0, 0)),  # both empty: all 0
        ([[(0, 1, "A")]], [[(0, 1, "A")]], (1, 1, 1)),  # perfect
    ],
)
def test_span_f1_empty_cases(preds, gold, counts):
    check(SpanF1(), preds, gold, *counts)


def test_span_f1_accumulation_equals_one_update_and_reset():
    preds = SPAN_PREDS + [[(1, 2, "X")], [], [(3, 4, "Y"), (5, 6, "Y")]]
    gold = SPAN_GOLD + [[(1, 2, "X")], [(0, 2, "X")], [(3, 4, "Y")]]
    whole = SpanF1()
    whole.update(preds, gold)
    parts = SpanF1()
    for lo, hi in [(0, 1), (1, 4), (4, 4), (4, 5)]:
        parts.update(preds[lo:hi], gold[lo:hi])
    assert values(parts) == values(whole) == pytest.approx(prf(3 + 1 + 1, 5 + 1 + 2, 6 + 1 + 1 + 1))
    parts.reset()
    assert values(parts) == prf(0, 0, 0)
    check(parts, [[(0, 1, "A")]], [[(0, 1, "A"), (1, 2, "A")]], tp=1, n_pred=1, n_gold=2)


def test_update_rejects_mismatched_sample_counts_and_bad_items():
    with pytest.raises(ValueError):
        SpanF1().update([[]], [[], []])
    with pytest.raises(ValueError):
        SpanF1().update([[(0, 1)]], [[]])


def test_triple_f1_strings():
    preds = [[("Paris", "capital_of", "France"), ("Paris", "capital_of", "France"), ("France", "capital", "Paris")], []]
    gold = [[("Paris", "capital_of", "France")], [("Bern", "capital_of", "Switzerland")]]
    check(TripleF1(), preds, gold, tp=1, n_pred=2, n_gold=2)
    with pytest.raises(ValueError):  # span-bearing triples need with_spans=True
        TripleF1().update([[("Paris", "capital_of", "France", (0, 5), (19, 25))]], [[]])


def test_triple_f1_with_spans():
    # Same strings, but the second "Paris" mention is a different span: a miss with spans, a hit without.
    preds = [[("Paris", "capital_of", "France", (0, 5), [19, 25]), ("Paris", "in", "France", (30, 35), (39, 45))]]
    gold = [[("Paris", "capital_of", "France", (0, 5), (19, 25)), ("Paris", "in", "France", (0, 5), (39, 45))]]
    check(TripleF1(with_spans=True), preds, gold, tp=1, n_pred=2, n_gold=2)
    strip = [[t[:3] for t in s] for s in preds], [[t[:3] for t in s] for s in gold]
    check(TripleF1(), *strip, tp=2, n_pred=2, n_gold=2)
    with pytest.raises(ValueError):
        TripleF1(with_spans=True).update([[("Paris", "capital_of", "France")]], [[]])


# Rank 0 gets 3 samples over two updates, rank 1 one sample; each rank's local F1 differs from the global one.
DDP_PREDS = [[[(0, 2, "A"), (3, 5, "B")]], [[(1, 2, "A")], []], [[(0, 9, "C"), (2, 4, "C"), (5, 6, "C")]]]
DDP_GOLD = [[[(0, 2, "A")]], [[(1, 2, "A")], [(7, 8, "B")]], [[(2, 4, "C"), (9, 10, "C")]]]
DDP_RANKS = [[0, 1], [2]]  # which update batches each rank runs

DDP_WORKER = textwrap.dedent(
    """
    import json, sys
    import torch.distributed as dist
    from kslm.metrics import SpanF1

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": float(v)})
        return out

    rank, port, data = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    m = SpanF1(labels=["A", "B", "C"], nested=True)
    for i in data["ranks"][rank]:
        m.update(*([[tuple(x) for x in sample] for sample in data[key][i]] for key in ("preds", "gold")))
    print(json.dumps(flat(m.compute())))
    dist.destroy_process_group()
    """
)


def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": float(v)})
    return out


def test_span_f1_ddp_sync_equals_single_process(tmp_path):
    """Micro, per-type, macro and flat/nested counts all sync: each rank's result equals the single process's."""
    single = SpanF1(labels=["A", "B", "C"], nested=True)
    for p, g in zip(DDP_PREDS, DDP_GOLD, strict=True):
        single.update(p, g)
    res = single.compute()
    micro = {k: float(res[k]) for k in ("precision", "recall", "f1")}
    assert micro == pytest.approx(prf(3, 6, 5))  # hits (0,2,A), (1,2,A), (2,4,C); rank 0 alone: 2/3, 2/3
    assert float(res["per_label"]["C"]["f1"]) == pytest.approx(2 * 1 / (3 + 2))
    expected = flat(res)
    script = tmp_path / "ddp_span_f1.py"
    script.write_text(DDP_WORKER)
    data = json.dumps({"preds": DDP_PREDS, "gold": DDP_GOLD, "ranks": DDP_RANKS})
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    # both ranks started here at once (no launcher process of their own to import torch first)
    ranks = [subprocess.Popen([sys.executable, str(script), str(rank), port, data], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in range(2)]
    per_rank = []
    try:
        for proc in ranks:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err[-3000:]
            per_rank.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in ranks:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for res in per_rank:
        assert res == pytest.approx(expected, abs=1e-6)


def naive_report(preds, gold, labels):
    """Per-label / macro / flat-nested P, R, F1 by plain loops over sets (the independent reference)."""
    def nested(x, own):
        return any((a, b) != (x[0], x[1]) and ((a <= x[0] and x[1] <= b) or (x[0] <= a and b <= x[1]))
                   for a, b, _ in own)

    counts = {k: [0, 0, 0] for k in [*labels, "flat", "nested"]}
    for p, g in zip(preds, gold, strict=True):
        p, g = set(p), set(g)
        for x in p & g:
            counts[x[2]][0] += 1
            counts["nested" if nested(x, g) else "flat"][0] += 1
        for x in p:  # a hit where gold places it, a false positive where the predictions do
            counts[x[2]][1] += 1
            counts["nested" if nested(x, g if x in g else p) else "flat"][1] += 1
        for x in g:
            counts[x[2]][2] += 1
            counts["nested" if nested(x, g) else "flat"][2] += 1
    rep = {k: prf(*c) for k, c in counts.items()}
    seen = [k for k in labels if counts[k][1] or counts[k][2]]
    macro = {m: sum(rep[k][m] for k in seen) / len(seen) for m in ("precision", "recall", "f1")}
    return rep, macro, {k: counts[k][2] for k in counts}


@pytest.mark.parametrize("seed", range(6))
def test_span_f1_per_type_macro_nested_vs_naive(seed):
    import random

    rng = random.Random(seed)
    labels = ["LOC", "ORG", "PER", "UNSEEN"]

    def sample():
        return [(s, s + rng.randint(0, 6), rng.choice(labels[:3])) for s in (rng.randint(0, 12) for _ in range(rng.randint(0, 6)))]

    gold = [sample() for _ in range(20)]
    preds = [[x for x in g if rng.random() < 0.6] + sample()[:2] for g in gold]
    m = SpanF1(labels=labels, nested=True)
    m.update(preds[:7], gold[:7])
    m.update(preds[7:], gold[7:])
    res = m.compute()
    rep, macro, support = naive_report(preds, gold, labels)
    for label in labels:
        got = {k: float(res["per_label"][label][k]) for k in ("precision", "recall", "f1")}
        assert got == pytest.approx(rep[label], abs=1e-6) and res["per_label"][label]["support"] == support[label]
    for cat in ("flat", "nested"):
        got = {k: float(res["per_category"][cat][k]) for k in ("precision", "recall", "f1")}
        assert got == pytest.approx(rep[cat], abs=1e-6) and res["per_category"][cat]["support"] == support[cat]
    assert {k: float(res[f"macro_{k}"]) for k in macro} == pytest.approx(macro, abs=1e-6)  # UNSEEN is left out


def test_triple_f1_per_predicate():
    preds = [[("a", "p", "b"), ("a", "q", "b")], [("c", "p", "d")]]
    gold = [[("a", "p", "b")], [("c", "q", "d")]]
    m = TripleF1(labels=["p", "q"])
    m.update(preds, gold)
    res = m.compute()
    assert float(res["per_label"]["p"]["precision"]) == pytest.approx(0.5) and float(res["per_label"]["p"]["recall"]) == 1
    assert float(res["per_label"]["q"]["f1"]) == 0 and res["per_label"]["q"]["support"] == 1
    assert float(res["macro_f1"]) == pytest.approx((2 / 3 + 0) / 2)


@pytest.mark.parametrize("metric, preds, gold", [
    (SpanF1(labels=["A", "B", "C"]), [[(0, 1, "A"), (2, 3, "B")], [(4, 6, "B")]], [[(0, 1, "A")], [(5, 6, "A")]]),
    (TripleF1(labels=["p", "q", "r"]), [[("a", "p", "b"), ("a", "q", "b")]], [[("a", "p", "b"), ("c", "p", "d")]]),
])
def test_macro_counts_labels_only_predicted_and_leaves_out_labels_in_neither(metric, preds, gold):
    """The macro average is over the labels in gold OR predictions (seqeval's macro avg): a label only predicted
    (B, q: never gold) scores 0 and pulls the average down; a label in neither (C, r) is left out."""
    metric.update(preds, gold)
    res = metric.compute()
    labels = metric.labels
    pos = 2 if isinstance(metric, SpanF1) else 1
    counts = {label: [0, 0, 0] for label in labels}  # tp, predicted, gold by plain loops
    for p, g in zip(preds, gold, strict=True):
        for x in set(p) & set(g):
            counts[x[pos]][0] += 1
        for x in set(p):
            counts[x[pos]][1] += 1
        for x in set(g):
            counts[x[pos]][2] += 1
    seen = [label for label in labels if counts[label][1] or counts[label][2]]
    only_predicted = [label for label in seen if not counts[label][2]]
    assert len(seen) == 2 and len(only_predicted) == 1  # the case the average must not drop
    for m in ("precision", "recall", "f1"):
        want = sum(prf(*counts[label])[m] for label in seen) / len(seen)
        assert float(res[f"macro_{m}"]) == pytest.approx(want, abs=1e-6), m
    assert float(res["macro_f1"]) < max(prf(*counts[label])["f1"] for label in seen)  # the 0 counts


def test_nested_breakdown_of_a_hit_among_overlapping_predictions():
    """A flat gold entity predicted exactly, among wrong predictions that overlap it (so it is nested among the
    predictions): a hit of the flat category on both sides — flat P = 1/1, R = 1/1; the wrong spans are nested false
    positives (P 0). Per-category precision never exceeds 1 (it was 1/0 → 1 here, and 6.0 on a real validation)."""
    m = SpanF1(labels=["A"], nested=True)
    m.update([[(0, 2, "A"), (0, 5, "A"), (1, 2, "A")]], [[(0, 2, "A")]])
    cat = {c: {k: float(v[k]) for k in ("precision", "recall", "f1")} for c, v in m.compute()["per_category"].items()}
    assert cat["flat"] == pytest.approx(prf(1, 1, 1)) and cat["nested"] == pytest.approx(prf(0, 2, 0))
    rng = __import__("random").Random(0)
    for _ in range(200):
        gold = [[(s, s + rng.randint(0, 3), "A") for s in rng.sample(range(10), 3)]]
        preds = [gold[0][:rng.randint(0, 3)] + [(s, s + rng.randint(0, 5), "A") for s in rng.sample(range(10), 4)]]
        m = SpanF1(labels=["A"], nested=True)
        m.update(preds, gold)
        for v in m.compute()["per_category"].values():
            assert 0 <= float(v["precision"]) <= 1 and 0 <= float(v["recall"]) <= 1 and 0 <= float(v["f1"]) <= 1
