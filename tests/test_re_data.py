"""REDataModule: windows, <s>-shifted GPLinker targets, counted (never silent) skips; the decoding cap."""

import json
import logging

import pytest
import torch
from helpers import CANONICAL, DUIE, SAMPLES

from kslm.data.re import REDataModule
from kslm.errors import DataError
from kslm.heads.gplinker import decode_triples

WEBNLG = SAMPLES / "webnlg.json"


def gold(path=CANONICAL):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.parametrize("max_length,stride", [(8, 2), (10, 5), (64, None)])
def test_windows_hold_exactly_the_triples_that_fit(tmp_path, caplog, max_length, stride):
    """Char tokenizer on Chinese: token k = char k. A triple belongs to every window holding both its spans; one that
    fits in no window is counted in a warning. Expected sets from a naive loop over the window starts."""
    caplog.set_level(logging.WARNING)
    dm = REDataModule(str(CANONICAL), str(CANONICAL), max_length=max_length, stride=stride, cache_dir=str(tmp_path))
    dm.setup("fit")
    n, step_overlap = max_length - 2, (max_length - 2) // 4 if stride is None else stride
    missing = 0
    for rec, enc in zip(gold(), dm.val_set, strict=True):
        starts = [0]
        while starts[-1] + n < len(rec["text"]):
            starts.append(starts[-1] + n - step_overlap)
        assert len(enc["windows"]) == len(starts)
        for a, w in zip(starts, enc["windows"], strict=True):
            assert w["ids"][0] == 2 and w["ids"][-1] == 3 and len(w["ids"]) == min(n, len(rec["text"]) - a) + 2
            expect = set()
            for t in rec["triples"]:
                (sa, sb), (oa, ob) = t["subject_span"], t["object_span"]
                if a <= min(sa, oa) and max(sb, ob) <= a + n:  # chars [a, a + n) in this window; +1 for <s>
                    expect.add((sa - a + 1, sb - a, dm.predicates.index(t["predicate"]), oa - a + 1, ob - a))
            assert set(w["triples"]) == expect
        for t in rec["triples"]:
            lo, hi = min(t["subject_span"][0], t["object_span"][0]), max(t["subject_span"][1], t["object_span"][1])
            missing += not any(a <= lo and hi <= a + n for a in starts)
    if missing:
        assert f"{missing} triples have an entity that is not on token boundaries" in caplog.text
    else:
        assert "triples have an entity" not in caplog.text


def test_targets_decode_back_to_the_window_triples(tmp_path):
    """Logits +1 on the target cells, −1 elsewhere → decode_triples gives each window's triples back."""
    dm = REDataModule(str(CANONICAL), str(CANONICAL), max_length=12, stride=4, cache_dir=str(tmp_path))
    dm.setup("fit")
    batch = dm.collate_windows(dm.train_set)
    B, T = batch["input_ids"].shape
    P = len(dm.predicates)
    logits = []
    for key, heads in (("entity_labels", 2), ("head_labels", P), ("tail_labels", P)):
        x = -torch.ones(B, heads, T, T)
        pairs = batch[key]
        b, h, k = torch.nonzero(pairs.sum(-1) > 0, as_tuple=True)
        x[b, h, pairs[b, h, k, 0], pairs[b, h, k, 1]] = 1.0
        logits.append(x)
    assert decode_triples(*logits) == [set(w["triples"]) for w in dm.train_set]
    assert batch["span_mask"][:, 0].sum() == 0 and (batch["span_mask"].sum(1) == batch["attention_mask"].sum(1) - 2).all()


def test_predicates_sorted_and_unknown_val_predicate(tmp_path, caplog):
    val = tmp_path / "val.jsonl"
    rec = {"text": "周星驰主演喜剧之王", "triples": [{"subject": "喜剧之王", "predicate": "配音", "object": "周星驰",
                                              "subject_span": [5, 9], "object_span": [0, 3]}]}
    val.write_text(json.dumps(rec, ensure_ascii=False) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{val}:1.*triples\[0\]\.predicate.*配音"):
        REDataModule(str(CANONICAL), str(val), cache_dir=str(tmp_path)).setup("fit")
    caplog.set_level(logging.WARNING)
    dm = REDataModule(str(CANONICAL), str(val), unknown_predicates="keep", cache_dir=str(tmp_path))
    dm.setup("fit")
    assert dm.predicates == sorted({t["predicate"] for r in gold() for t in r["triples"]})
    assert "1 triples have a predicate unseen in training" in caplog.text
    assert dm.val_set[0]["triples"] == rec["triples"] and dm.val_set[0]["windows"][0]["triples"] == []


def test_unlocatable_entities_are_skipped_only_on_request_and_counted(tmp_path, caplog):
    bad = tmp_path / "duie.jsonl"
    lines = DUIE.read_text(encoding="utf-8").splitlines()
    rec = json.loads(lines[1])
    rec["spo_list"][0]["object"] = "青莲居士"
    bad.write_text("\n".join([lines[0], json.dumps(rec, ensure_ascii=False), *lines[2:]]) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{bad}:2.*spo_list\[0\]\.object"):
        REDataModule(str(bad), str(DUIE), cache_dir=str(tmp_path)).setup("fit")
    caplog.set_level(logging.WARNING)
    dm = REDataModule(str(bad), str(bad), skip_unlocatable=True, cache_dir=str(tmp_path))
    dm.setup("fit")
    assert caplog.text.count("skipped 1 triples whose entity is not in the text") == 2  # train and val
    assert sum(len(w["triples"]) for w in dm.train_set) == sum(len(json.loads(x)["spo_list"]) for x in lines) - 1


def test_webnlg_bpe_windows_map_back_to_entity_strings(tmp_path, caplog):
    """Byte-level BPE glues the space to the next word; the trimmed offsets still put every entity on token
    boundaries, and the <s>-shifted spans give the entity strings back."""
    caplog.set_level(logging.WARNING)
    dm = REDataModule(str(WEBNLG), str(WEBNLG), tokenizer_kind="bpe", vocab_size=300, cache_dir=str(tmp_path))
    dm.setup("fit")
    assert "triples have an entity" not in caplog.text
    for rec in dm.val_set:
        (w,) = rec["windows"]
        found = {(rec["text"][w["offsets"][sh - 1][0]:w["offsets"][st - 1][1]], dm.predicates[p],
                  rec["text"][w["offsets"][oh - 1][0]:w["offsets"][ot - 1][1]]) for sh, st, p, oh, ot in w["triples"]}
        assert found == {(t["subject"], t["predicate"], t["object"]) for t in rec["triples"]}


def test_cap_entities_keeps_the_top_scoring_spans_of_crowded_rows():
    from kslm.tasks.re import cap_entities

    torch.manual_seed(0)
    x = torch.randn(3, 2, 6, 6)
    x[0] = -1.0
    x[0, 0, 1, 2] = x[0, 1, 3, 3] = 2.0  # few positives: untouched
    capped, n = cap_entities(x, 4)
    assert n == 4  # windows 1 and 2, subject and object rows each have > 4 positives
    assert torch.equal(capped[0], x[0])
    for b in (1, 2):
        for k in (0, 1):
            row = x[b, k].flatten()
            keep = set(row.topk(4).indices.tolist())
            assert {i for i in range(36) if capped[b, k].flatten()[i] > float("-inf")} == keep
