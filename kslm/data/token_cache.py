"""The LM corpus as packed token blocks in an Arrow file on disk, built once and memory-mapped by every later run.

`packed_blocks` tokenizes the raw text dataset with `Dataset.map(batched=True, num_proc=N)` (documents are
independent, so N processes give the same ids as one), then packs in one process — documents joined with </s> and
cut into blocks of seq_len + 1 tokens in corpus order, the remainder of each 2,000-document batch dropped — so the
blocks do not depend on N. The result is one Arrow file, `<cache_dir>/lm-blocks/<key>/blocks.arrow`, where the key
hashes the corpus (files with their sizes and mtimes, or the hub dataset), the text field, the tokenizer's
fingerprint and the block length: another corpus, tokenizer or seq_len is another folder; the same ones reuse it
(one log line says which). The folder appears complete or not at all (kslm.io.atomic_dir), so a run that was
stopped while tokenizing leaves nothing half-written, and ranks that find it read the same file.

Training reads the blocks through a memory map (`Dataset.from_file`): resident memory does not grow with the corpus.
"""

import hashlib
import logging
import os
import time
from itertools import chain
from pathlib import Path

from kslm.data.tokenizer import EOS_ID, fingerprint
from kslm.io import atomic_dir

log = logging.getLogger(__name__)
FILE = "blocks.arrow"
AUTO_PROC_MB = 32  # data.num_proc null: parallel tokenisation above this much text
PACK_BATCH = 2000  # documents per packing batch (each batch drops its last partial block)


def default_num_proc() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def cache_key(source_key: str, tok, block: int) -> str:
    return hashlib.sha256(f"{source_key}|{fingerprint(tok)}|{block}".encode()).hexdigest()[:20]


def packed_blocks(raw_fn, tok, field: str, block: int, folder: Path, num_proc=None):
    """The blocks of the corpus `raw_fn()` returns (a datasets.Dataset with a text column `field`; called only when
    the cache is missing) in `folder`, built if missing → (memory-mapped Dataset with one column input_ids of
    `block` tokens, whether it was reused). num_proc None: one process under AUTO_PROC_MB of text, else
    default_num_proc()."""
    from datasets import Dataset

    folder = Path(folder)
    if (folder / FILE).is_file():
        blocks = Dataset.from_file(str(folder / FILE))
        log.info("LM data: reusing the token cache %s (%d blocks)", folder, len(blocks))
        return blocks, True

    def tokenize(batch):
        texts = [t for t in batch[field] if t]
        return {"ids": [e.ids + [EOS_ID] for e in tok.encode_batch(texts)]}

    def pack(batch):
        ids = list(chain.from_iterable(batch["ids"]))
        n = len(ids) // block * block
        return {"input_ids": [ids[i : i + block] for i in range(0, n, block)]}

    raw = raw_fn()
    if num_proc is None:  # starting processes costs seconds: worth it only for a corpus of some size
        num_proc = default_num_proc() if raw.data.nbytes > AUTO_PROC_MB * 1e6 else 1
    t0 = time.perf_counter()
    with atomic_dir(folder, overwrite=True) as tmp:
        num_proc = max(1, min(int(num_proc), len(raw)))
        ids = raw.map(tokenize, batched=True, remove_columns=raw.column_names, num_proc=num_proc if num_proc > 1 else None,
                      cache_file_name=str(tmp / "ids.arrow"), desc="tokenizing")
        packed = ids.map(pack, batched=True, batch_size=PACK_BATCH, remove_columns=["ids"],
                         cache_file_name=str(tmp / FILE), desc="packing")
        n = len(packed)
        del ids, packed  # the intermediate ids go with the temporary folder's leftovers
        for f in tmp.glob("ids*.arrow"):
            f.unlink()
    seconds = time.perf_counter() - t0
    mb = raw.data.nbytes / 1e6
    log.info("LM data: tokenized %.1f MB of text in %.1f s (%.2f MB/s, %d processes) into %d blocks at %s",
             mb, seconds, mb / max(seconds, 1e-9), num_proc, n, folder)
    return Dataset.from_file(str(folder / FILE)), False


__all__ = ["packed_blocks", "cache_key", "default_num_proc"]
