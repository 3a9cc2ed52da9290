"""The LM corpus as packed token blocks in one flat file on disk, built once and read by every later run.

`packed_blocks` tokenizes the raw text dataset with `Dataset.map(batched=True, num_proc=N)` (documents are
independent, so N processes give the same ids as one), then packs in one process — documents joined with </s> and
cut into blocks of seq_len + 1 tokens in corpus order, the remainder of each 2,000-document batch dropped — so the
blocks do not depend on N. The result is `<cache_dir>/lm-blocks/<key>/blocks.bin` (the token ids, block after block,
little-endian uint16 for a vocabulary of at most 65,536 ids, else uint32) and `blocks.json` (dtype, block length,
block count), where the key hashes the corpus (files with their sizes and mtimes, or the hub dataset), the text
field, the tokenizer's fingerprint and the block length: another corpus, tokenizer or seq_len is another folder; the
same ones reuse it (one log line says which). The folder appears complete or not at all (kslm.io.atomic_dir), so a
run that was stopped while tokenizing leaves nothing half-written, and ranks that find it read the same file.

Training reads a block with one positioned read (`os.pread`) of its bytes: nothing of the corpus is mapped into
the process, so its resident memory does not grow with the corpus. (An Arrow stream file read through a memory map
did grow it: opening it reads the header of every record batch, and every page fault maps the disk's read-ahead
around it — 725 MB at 100 MB of text, 1,041 MB at ten times the blocks, bench/README.md.)
"""

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from kslm.data.tokenizer import EOS_ID, fingerprint
from kslm.io import atomic_dir

log = logging.getLogger(__name__)
FILE, META = "blocks.bin", "blocks.json"
FORMAT = 1
AUTO_PROC_MB = 32  # data.num_proc null: parallel tokenisation above this much text
PACK_BATCH = 2000  # documents per packing batch (each batch drops its last partial block)


def default_num_proc() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def cache_key(source_key: str, tok, block: int) -> str:
    return hashlib.sha256(f"{source_key}|{fingerprint(tok)}|{block}".encode()).hexdigest()[:20]


class TokenBlocks(Dataset):
    """The blocks of a cache folder: `blocks[i]` → {"input_ids": int64 tensor [block]}, read from disk on demand
    (one pread per block; the file is opened once per process, so DataLoader workers each open their own)."""

    def __init__(self, folder):
        self.folder = Path(folder)
        meta = json.loads((self.folder / META).read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise ValueError(f"{self.folder / META}: token cache format {meta.get('format')}, expected {FORMAT}")
        self.dtype, self.block, self.n = np.dtype(meta["dtype"]), int(meta["block"]), int(meta["blocks"])
        self.nbytes = self.block * self.dtype.itemsize
        size = (self.folder / FILE).stat().st_size
        if size != self.n * self.nbytes:
            raise ValueError(f"{self.folder / FILE}: {size} bytes, expected {self.n} blocks × {self.nbytes}")
        self._fd, self._pid = None, None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        i = int(i)
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(f"block {i} of {self.n}")
        if self._fd is None or self._pid != os.getpid():  # a forked worker opens its own descriptor
            self._fd, self._pid = os.open(self.folder / FILE, os.O_RDONLY), os.getpid()
        buf = os.pread(self._fd, self.nbytes, i * self.nbytes)
        return {"input_ids": torch.from_numpy(np.frombuffer(buf, dtype=self.dtype).astype(np.int64))}

    def __getstate__(self):  # spawned workers pickle the dataset: without the descriptor
        return {**self.__dict__, "_fd": None, "_pid": None}

    def __del__(self, _close=os.close, _getpid=os.getpid):  # bound now: at interpreter exit `os` may be gone
        if getattr(self, "_fd", None) is not None and self._pid == _getpid():
            _close(self._fd)


def split_blocks(blocks: TokenBlocks, n_val: int, seed: int):
    """(train, val) Subsets of the blocks: a seeded permutation of the block indices, its first n_val the validation
    blocks (the split `datasets.Dataset.train_test_split(test_size=n_val, seed=seed)` makes, without its index files).
    Index arrays are int32 below 2³¹ blocks: 4 bytes a block."""
    perm = np.random.default_rng(seed).permutation(len(blocks))
    if len(blocks) < 2**31:
        perm = perm.astype(np.int32)
    return Subset(blocks, perm[n_val:]), Subset(blocks, perm[:n_val])


def _pack(ids, block: int, out: Path, dtype) -> int:
    """Write the blocks of the tokenized documents `ids` (a Dataset with a list column "ids") to `out` → count."""
    n = 0
    with open(out, "wb") as f:
        for table in ids.with_format("arrow").iter(batch_size=PACK_BATCH):
            flat = table.column("ids").combine_chunks().flatten().to_numpy()  # the batch's documents, joined
            usable = len(flat) // block * block
            f.write(flat[:usable].astype(dtype).tobytes())
            n += usable // block
    return n


def packed_blocks(raw_fn, tok, field: str, block: int, folder: Path, num_proc=None):
    """The blocks of the corpus `raw_fn()` returns (a datasets.Dataset with a text column `field`; called only when
    the cache is missing) in `folder`, built if missing → (TokenBlocks, whether it was reused). num_proc None: one
    process under AUTO_PROC_MB of text, else default_num_proc()."""
    from datasets import Features, Sequence, Value

    folder = Path(folder)
    if (folder / META).is_file():
        try:
            blocks = TokenBlocks(folder)
        except (OSError, ValueError, KeyError) as exc:  # a file changed or lost since: tokenize again
            log.warning("LM data: token cache damaged, rebuilding it (%s)", exc)
        else:
            log.info("LM data: reusing the token cache %s (%d blocks)", folder, len(blocks))
            return blocks, True

    def tokenize(batch):
        texts = [t for t in batch[field] if t]
        return {"ids": [e.ids + [EOS_ID] for e in tok.encode_batch(texts)]}

    raw = raw_fn()
    if num_proc is None:  # starting processes costs seconds: worth it only for a corpus of some size
        num_proc = default_num_proc() if raw.data.nbytes > AUTO_PROC_MB * 1e6 else 1
    dtype = np.dtype("<u2") if tok.get_vocab_size() <= 2**16 else np.dtype("<u4")
    t0 = time.perf_counter()
    with atomic_dir(folder, overwrite=True) as tmp:
        num_proc = max(1, min(int(num_proc), len(raw)))
        ids = raw.map(tokenize, batched=True, remove_columns=raw.column_names, num_proc=num_proc if num_proc > 1 else None,
                      features=Features({"ids": Sequence(Value("int32"))}), cache_file_name=str(tmp / "ids.arrow"),
                      desc="tokenizing")
        n = _pack(ids, block, tmp / FILE, dtype)
        del ids  # the intermediate ids go with the temporary folder's leftovers
        for f in tmp.glob("ids*.arrow"):
            f.unlink()
        (tmp / META).write_text(json.dumps({"format": FORMAT, "dtype": dtype.str, "block": block, "blocks": n}) + "\n",
                                encoding="utf-8")
    seconds = time.perf_counter() - t0
    mb = raw.data.nbytes / 1e6
    log.info("LM data: tokenized %.1f MB of text in %.1f s (%.2f MB/s, %d processes) into %d blocks at %s",
             mb, seconds, mb / max(seconds, 1e-9), num_proc, n, folder)
    return TokenBlocks(folder), False


__all__ = ["packed_blocks", "cache_key", "default_num_proc", "TokenBlocks", "split_blocks"]
