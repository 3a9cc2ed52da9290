"""Tokenizers, the LM data module (loading, packing, deterministic split), the resumable sampler, prompts."""

import json

import pytest
import torch

from kslm.data.lm import LMDataModule, read_prompts, resolve_files
from kslm.data.sampler import ResumableSampler
from kslm.data.tokenizer import EOS_ID, SPECIAL_TOKENS, load_tokenizer, train_tokenizer
from kslm.errors import DataError

ZH = ["床前明月光，疑是地上霜。举头望明月，低头思故乡。", "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。"] * 20
EN = ["The quick brown fox jumps over the lazy dog.", "A class statement defines a class object."] * 20


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_tokenizer_special_ids_and_roundtrip(kind):
    tok = train_tokenizer(ZH + EN, kind=kind, vocab_size=300, min_frequency=1)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    for text in (ZH[0], EN[0], "举头 望明月 the fox"):
        assert tok.decode(tok.encode(text).ids) == text
    if kind == "char":  # an unseen character is <unk>, not dropped
        assert tok.encode("月\u263a").ids[-1] == tok.token_to_id("<unk>")
    else:  # byte-level BPE has no unknowns
        assert tok.decode(tok.encode("月\u263a").ids) == "月\u263a"


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_chinese_tokenizes_into_characters_with_offsets(kind):
    """A token never spans two CJK characters (BPE may split a rare one into bytes), and the character
    offsets cover the text in order."""
    tok = train_tokenizer(ZH, kind=kind, vocab_size=300, min_frequency=1)
    text = ZH[1] + "鬯"  # a character absent from training
    enc = tok.encode(text)
    assert all(e - s == 1 for s, e in enc.offsets), enc.offsets
    covered = sorted({s for s, _ in enc.offsets})
    assert covered == list(range(len(text)))
    if kind == "char":
        assert len(enc.ids) == len(text)


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_tokenizer(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json"):
        load_tokenizer(bad)


def test_resolve_files(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("y")
    assert [p.name for p in resolve_files(tmp_path)] == ["a.txt", "b.txt"]
    with pytest.raises(DataError, match="not found"):
        resolve_files(tmp_path / "nope.txt")
    (tmp_path / "c.csv").write_text("z")
    with pytest.raises(DataError, match="unsupported"):
        resolve_files(tmp_path / "c.csv")
    (tmp_path / "d.jsonl").write_text("{}")
    assert [p.name for p in resolve_files([tmp_path / "a.txt", tmp_path / "d.jsonl"])] == ["a.txt", "d.jsonl"]


def test_mixed_text_and_json_corpus_keeps_every_text(tmp_path):
    """.txt paragraphs plus JSON files with different schemas (CLUENER labels, DuIE spo_list, a JSON array) → one
    corpus of their `text` fields, nothing dropped."""
    (tmp_path / "a.txt").write_text("第一段。\n\n第二段。\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text('{"text": "北京", "label": {"address": {"北京": [[0, 1]]}}}\n', encoding="utf-8")
    (tmp_path / "c.jsonl").write_text('{"text": "上海", "spo_list": []}\n{"text": "广州", "spo_list": []}\n', encoding="utf-8")
    (tmp_path / "d.json").write_text('[{"text": "深圳", "entities": []}]', encoding="utf-8")
    dm = LMDataModule(data_files=[str(tmp_path / n) for n in ("a.txt", "b.jsonl", "c.jsonl", "d.json")],
                      cache_dir=str(tmp_path / "cache"))
    texts = [t.strip() for t in dm._raw()["text"]]
    assert texts == ["第一段。", "第二段。", "北京", "上海", "广州", "深圳"]
    dm.files = [tmp_path / "c.jsonl"]
    dm.text_field = "body"
    with pytest.raises(DataError, match="c.jsonl.*no 'body' field"):
        dm._raw()


def test_packing_and_deterministic_split(small_corpus, tmp_path):
    kw = dict(data_files=str(small_corpus), vocab_size=400, seq_len=32, batch_size=4, cache_dir=str(tmp_path))
    a, b = LMDataModule(**kw), LMDataModule(**kw)
    for dm in (a, b):
        dm.prepare_data()
        dm.setup("fit")
    def rows(blocks):
        return torch.stack([blocks[i]["input_ids"] for i in range(len(blocks))])

    assert rows(a.train_set).shape[1] == 33
    assert torch.equal(rows(a.val_set), rows(b.val_set)) and torch.equal(rows(a.train_set), rows(b.train_set))
    # packing keeps the text: decoding a block gives a substring of the corpus (documents joined by </s>)
    ids = a.train_set[0]["input_ids"].tolist()
    corpus = small_corpus.read_text(encoding="utf-8")
    pieces = [p for p in a.tokenizer.decode(ids, skip_special_tokens=False).split("</s>") if len(p) > 20]
    assert pieces and all(p.strip() in corpus for p in pieces)
    assert (rows(a.train_set) == EOS_ID).any()
    # train and val partition the blocks
    total = len(a._blocks())
    assert len(a.train_set) + len(a.val_set) == total and len(a.val_set) == max(1, round(0.02 * total))


def test_jsonl_text_field(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"body": t}) + "\n" for t in EN * 10))
    dm = LMDataModule(data_files=str(path), text_field="body", vocab_size=300, seq_len=16, cache_dir=str(tmp_path))
    dm.setup("fit")
    assert len(dm.train_set) > 5
    wrong = LMDataModule(data_files=str(path), text_field="text", vocab_size=300, seq_len=16, cache_dir=str(tmp_path))
    with pytest.raises(DataError, match="no 'text' field"):
        wrong.setup("fit")


def test_embedded_corpus_is_large_natural_text(tmp_path):
    from kslm.data.corpus import embedded_corpus_path

    text = embedded_corpus_path(tmp_path).read_text(encoding="utf-8")
    assert len(text) >= 1_000_000
    words = text.split()
    assert sum(w.lower() in {"the", "a", "of", "is", "to"} for w in words) / len(words) > 0.05


def test_resumable_sampler_skips_and_keeps_permutation():
    data = list(range(40))
    full = list(ResumableSampler(data, num_replicas=2, rank=1, seed=3).__iter__())
    s = ResumableSampler(data, num_replicas=2, rank=1, seed=3)
    s.resume(0, 8)
    assert len(s) == len(full)  # the epoch's length, as Lightning counts a resumed epoch from its position
    assert list(iter(s)) == full[8:]
    assert list(iter(s)) == full  # the skip is used up
    # resuming into epoch 1 while Lightning numbers it 0: later epochs keep the offset
    s = ResumableSampler(data, seed=3)
    ref = ResumableSampler(data, seed=3)
    ref.set_epoch(2)
    s.resume(1, 0)
    s.set_epoch(0)
    list(iter(s))
    s.set_epoch(1)
    assert list(iter(s)) == list(iter(ref))


@pytest.mark.parametrize("workers", [False, True])
def test_resumed_sampler_numbers_later_epochs_whichever_comes_first(workers):
    """Resumed into data epoch 3 while Lightning numbers it 1: without workers Lightning's set_epoch(1) comes before
    the iteration begins, with workers after it (the iterator prefetches when it is created); either way the next
    epoch serves data epoch 4."""
    data = list(range(30))
    ref = {e: ResumableSampler(data, seed=5) for e in (3, 4)}
    for e, r in ref.items():
        r.set_epoch(e)
    s = ResumableSampler(data, seed=5)
    s.resume(3, 6)
    if workers:
        first = list(iter(s))
        s.set_epoch(1)
    else:
        s.set_epoch(1)
        first = list(iter(s))
    assert first == list(iter(ref[3]))[6:] and s.data_epoch == 3
    s.set_epoch(2)
    assert list(iter(s)) == list(iter(ref[4])) and s.data_epoch == 4


def test_read_prompts(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("one\n\ntwo\n")
    assert [(p["line"], p["prompt"]) for p in read_prompts(txt)] == [(1, "one"), (3, "two")]
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": 3}\n')
    with pytest.raises(DataError, match=r"p.jsonl:2.*prompt"):
        read_prompts(bad)
    bad.write_text('{"prompt": "ok"}\n{oops\n')
    with pytest.raises(DataError, match=r"p.jsonl:2.*invalid JSON"):
        read_prompts(bad)
