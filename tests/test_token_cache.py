"""The LM token-block cache (kslm.data.token_cache): reused by a second run without tokenizing, the same blocks
whatever the number of tokenizing processes, rebuilt when the tokenizer or the files change; the tokenizer's
training sample is bounded."""

import logging

import pytest

import kslm.data.lm as lm
from kslm.data.lm import LMDataModule
from kslm.data.token_cache import FILE

LOGGER = "kslm.data.token_cache"


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    paras = [f"第{i}段：床前明月光，疑是地上霜。The quick brown fox {i} jumps over the lazy dog." for i in range(400)]
    path.write_text("\n\n".join(paras), encoding="utf-8")
    return path


def _dm(corpus, cache, **kw):
    return LMDataModule(data_files=str(corpus), vocab_size=300, seq_len=16, cache_dir=str(cache), **kw)


def _events(caplog):
    return [r.getMessage().split()[2] for r in caplog.records if r.name == LOGGER]  # "tokenized" / "reusing"


def test_second_run_reuses_the_cache_and_num_proc_gives_the_same_blocks(corpus, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    first = _dm(corpus, tmp_path / "c1", num_proc=1)._blocks()
    again = _dm(corpus, tmp_path / "c1", num_proc=1)._blocks()
    assert _events(caplog) == ["tokenized", "reusing"]
    assert again["input_ids"] == first["input_ids"] and len(first) > 20
    assert (tmp_path / "c1" / "lm-blocks").is_dir() and len(list((tmp_path / "c1" / "lm-blocks").glob(f"*/{FILE}"))) == 1
    assert not list((tmp_path / "c1" / "lm-blocks").glob("*/ids*"))  # the intermediate ids are not kept
    # the same tokenizer, tokenized by 2 processes into another cache: the same blocks
    tok = next((tmp_path / "c1").glob("tokenizer-*.json"))
    two = _dm(corpus, tmp_path / "c2", num_proc=2, tokenizer=str(tok))._blocks()
    assert two["input_ids"] == first["input_ids"]
    assert "2 processes" in caplog.records[-1].getMessage()


def test_a_new_tokenizer_or_changed_files_rebuild_the_cache(corpus, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    _dm(corpus, tmp_path).setup("fit")
    LMDataModule(data_files=str(corpus), vocab_size=320, seq_len=16, cache_dir=str(tmp_path))._blocks()
    with open(corpus, "a", encoding="utf-8") as f:
        f.write("\n\n多一段文字。One more paragraph.")
    _dm(corpus, tmp_path)._blocks()  # a new file size: a new corpus key (and tokenizer)
    assert _events(caplog) == ["tokenized", "tokenized", "tokenized"]
    assert len(list((tmp_path / "lm-blocks").iterdir())) == 3


def test_tokenizer_trains_on_a_bounded_sample(corpus, tmp_path, monkeypatch):
    seen = []

    def capture(path, texts_fn, kind, vocab_size):
        seen.extend(texts_fn())
        raise SystemExit  # nothing to train: only the sample matters

    monkeypatch.setattr(lm, "cached_tokenizer", capture)
    with pytest.raises(SystemExit):
        _dm(corpus, tmp_path, tokenizer_sample_mb=0.002).build_tokenizer()  # 2,000 bytes of a ~40 kB corpus
    size = sum(len(t.encode("utf-8")) for t in seen)
    assert 1500 <= size <= 2000 + 100 and len(seen) < 30  # at most the cap and one paragraph past it
    numbers = [int(t.split("段")[0][1:]) for t in seen]  # spread over the corpus, not its first paragraphs
    assert numbers[0] == 0 and numbers[1] > 5


def test_bad_num_proc_is_one_line(corpus, tmp_path):
    from kslm.errors import DataError

    with pytest.raises(DataError, match="num_proc"):
        _dm(corpus, tmp_path, num_proc=0)


def test_sampler_order_is_distributed_samplers_without_a_list():
    """The resumable sampler builds its order as a tensor (a large corpus has millions of blocks): the same order
    as torch's DistributedSampler, padding included."""
    from torch.utils.data import DistributedSampler

    from kslm.data.sampler import ResumableSampler

    for n, world in ((7, 3), (100, 2), (1, 2), (64, 1)):
        for rank in range(world):
            for shuffle in (True, False):
                ref = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=shuffle, seed=5)
                ours = ResumableSampler(range(n), num_replicas=world, rank=rank, shuffle=shuffle, seed=5)
                ref.set_epoch(2)
                ours.set_epoch(2)
                assert list(ours) == list(ref), (n, world, rank, shuffle)
