"""The LM token-block cache (kslm.data.token_cache): reused by a second run without tokenizing, the same blocks
whatever the number of tokenizing processes, rebuilt when the tokenizer or the files change; the tokenizer's
training sample is bounded."""

import json
import logging
import os

import pytest
import torch

import kslm.data.lm as lm
from kslm.data.lm import LMDataModule
from kslm.data.token_cache import FILE, META, TokenBlocks, split_blocks

LOGGER = "kslm.data.token_cache"


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    paras = [f"第{i}段：床前明月光，疑是地上霜。The quick brown fox {i} jumps over the lazy dog." for i in range(400)]
    path.write_text("\n\n".join(paras), encoding="utf-8")
    return path


def _dm(corpus, cache, **kw):
    return LMDataModule(data_files=str(corpus), vocab_size=300, seq_len=16, cache_dir=str(cache), **kw)


def _rows(blocks):
    return [blocks[i]["input_ids"].tolist() for i in range(len(blocks))]


def _events(caplog):
    return [r.getMessage().split()[2] for r in caplog.records if r.name == LOGGER]  # "tokenized" / "reusing"


def test_second_run_reuses_the_cache_and_num_proc_gives_the_same_blocks(corpus, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    first = _dm(corpus, tmp_path / "c1", num_proc=1)._blocks()
    again = _dm(corpus, tmp_path / "c1", num_proc=1)._blocks()
    assert _events(caplog) == ["tokenized", "reusing"]
    assert _rows(again) == _rows(first) and len(first) > 20
    assert (tmp_path / "c1" / "lm-blocks").is_dir() and len(list((tmp_path / "c1" / "lm-blocks").glob(f"*/{FILE}"))) == 1
    assert not list((tmp_path / "c1" / "lm-blocks").glob("*/ids*"))  # the intermediate ids are not kept
    # the same tokenizer, tokenized by 2 processes into another cache: the same blocks
    tok = next((tmp_path / "c1").glob("tokenizer-*.json"))
    two = _dm(corpus, tmp_path / "c2", num_proc=2, tokenizer=str(tok))._blocks()
    assert _rows(two) == _rows(first)
    assert "2 processes" in caplog.records[-1].getMessage()


def test_blocks_are_the_documents_joined_with_eos_and_cut_per_packing_batch(tmp_path, monkeypatch):
    """Against a plain loop: each non-empty paragraph's ids + </s>, joined in corpus order within each packing batch
    of documents, cut into blocks of seq_len + 1, each batch's remainder dropped."""
    import kslm.data.token_cache as tc
    from kslm.data.tokenizer import EOS_ID

    monkeypatch.setattr(tc, "PACK_BATCH", 7)  # several batches, each with a remainder
    path = tmp_path / "c.txt"
    paras = [f"Paragraph {i}: " + " ".join(["lorem ipsum dolor"] * (i % 5 + 1)) for i in range(40)]
    path.write_text("\n\n".join(paras), encoding="utf-8")
    dm = _dm(path, tmp_path, num_proc=1)
    blocks, tok = dm._blocks(), dm.load_tokenizer()
    docs = [e.ids + [EOS_ID] for e in tok.encode_batch(paras)]
    want = []
    for b in range(0, len(docs), 7):
        flat = [t for d in docs[b : b + 7] for t in d]
        want += [flat[i : i + 17] for i in range(0, len(flat) // 17 * 17, 17)]
    assert _rows(blocks) == want and len(want) > 10


def test_blocks_are_read_from_disk_not_mapped(corpus, tmp_path):
    """A block is one positioned read: the file is never memory-mapped (mapped pages would count in the process's
    resident memory and grow with the corpus); the dataset pickles without its descriptor (spawned workers)."""
    import pickle

    blocks = _dm(corpus, tmp_path)._blocks()
    folder = blocks.folder
    assert [blocks[i]["input_ids"].dtype for i in (0, -1)] == [torch.int64] * 2
    assert blocks[-1]["input_ids"].tolist() == blocks[len(blocks) - 1]["input_ids"].tolist()
    with pytest.raises(IndexError):
        blocks[len(blocks)]
    maps = open("/proc/self/maps", encoding="utf-8").read() if os.path.exists("/proc/self/maps") else ""
    assert str(folder / FILE) not in maps
    copy = pickle.loads(pickle.dumps(blocks))
    assert _rows(copy) == _rows(blocks)
    assert (folder / FILE).stat().st_size == len(blocks) * 17 * 2  # uint16 ids for a 300-token vocabulary
    meta = json.loads((folder / META).read_text(encoding="utf-8"))
    assert meta == {"format": 1, "dtype": "<u2", "block": 17, "blocks": len(blocks)}


def test_split_is_a_seeded_permutation_of_the_blocks(corpus, tmp_path):
    """The first n_val of numpy's seeded permutation are the validation blocks (the split datasets' train_test_split
    makes): disjoint, covering, the same for the same seed."""
    import numpy as np

    blocks = _dm(corpus, tmp_path)._blocks()
    train, val = split_blocks(blocks, 5, seed=3)
    perm = np.random.default_rng(3).permutation(len(blocks))
    assert list(val.indices) == list(perm[:5]) and list(train.indices) == list(perm[5:])
    assert _rows(val) == [blocks[int(i)]["input_ids"].tolist() for i in perm[:5]]
    assert sorted([*train.indices, *val.indices]) == list(range(len(blocks)))


def test_a_damaged_cache_is_rebuilt(corpus, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    blocks = _dm(corpus, tmp_path)._blocks()
    rows = _rows(blocks)
    with open(blocks.folder / FILE, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="bytes, expected"):
        TokenBlocks(blocks.folder)
    again = _dm(corpus, tmp_path)._blocks()
    assert _rows(again) == rows and _events(caplog) == ["tokenized", "token", "tokenized"]
    assert "damaged" in caplog.records[1].getMessage()


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


def _word_tokenizer(vocab_size):
    """A word-level tokenizer of exactly `vocab_size` ids: kslm's 5 specials, then w5, w6, … (id = the number)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from kslm.data.tokenizer import SPECIAL_TOKENS

    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    vocab.update({f"w{i}": i for i in range(len(SPECIAL_TOKENS), vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok


@pytest.mark.parametrize("vocab_size, dtype", [(2**16, "<u2"), (2**16 + 1, "<u4"), (70_000, "<u4")])
def test_block_ids_above_uint16_survive_the_cache(tmp_path, vocab_size, dtype):
    """uint16 holds ids 0 … 65,535, so a vocabulary of 65,536 ids is stored as uint16 and a larger one as uint32; the
    largest ids (65,535 / 65,536 / 69,999) come back as written, against the documents' ids joined by a plain loop."""
    from datasets import Dataset

    from kslm.data.token_cache import packed_blocks
    from kslm.data.tokenizer import EOS_ID

    tok = _word_tokenizer(vocab_size)
    top = vocab_size - 1
    docs = [" ".join(f"w{i}" for i in ids) for ids in ([top, 5, top - 1, 6], [7, top, top - 2], [top] * 5, [8, 9, 10])]
    blocks, reused = packed_blocks(lambda: Dataset.from_dict({"text": docs}), tok, "text", 4, tmp_path / "c", num_proc=1)
    flat = [t for d in docs for t in [int(w[1:]) for w in d.split()] + [EOS_ID]]
    want = [flat[i:i + 4] for i in range(0, len(flat) // 4 * 4, 4)]
    assert not reused and _rows(blocks) == want and top in flat
    assert json.loads((blocks.folder / META).read_text(encoding="utf-8"))["dtype"] == dtype
    assert (blocks.folder / FILE).stat().st_size == len(want) * 4 * int(dtype[-1])
