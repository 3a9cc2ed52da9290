"""NERDataModule: NER source files (kslm.data.readers) → tokenizer → windows with [CLS]/[SEP] → dense span labels.

Each text is encoded with `kslm.data.spans.encode_entities` into windows of `max_length − 2` tokens, wrapped in
<s> … </s> (kslm's [CLS]/[SEP]); token spans are shifted by one for the leading <s>. Entities that do not sit on
token boundaries (or fit in no window) are counted and logged as a warning, never dropped silently.

Batches: {"input_ids" [B, T], "attention_mask" [B, T] (1 = token), "span_mask" [B, T] (tokens that may start or
end an entity: not <s>, </s> or padding), "labels" [B, L, T, T] (dense, 1 = entity of type l from i to j
inclusive), "offsets" (per window: char offsets of tokens 1..n), "record" (per window: index of its record in
the batch), "entities" (per record: gold char entities), "line", "text"}. Train batches are windows; validation and
predict batches are whole records (all windows of each record), so F1 and predictions are per record.
"""

import hashlib
import json
import logging
from pathlib import Path
from typing import List, Literal, Optional

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from kslm.data.lm import default_cache_dir
from kslm.data.readers import cluener_train_dev, cmeee_train_dev, read_any, sniff_format
from kslm.data.sampler import ResumableSampler
from kslm.data.spans import encode_entities
from kslm.data.tokenizer import atomic_write_text, load_tokenizer, special_ids, train_tokenizer
from kslm.errors import DataError

log = logging.getLogger(__name__)
JSONL_FORMATS = ("cluener", "canonical", "duie", "cmeie")


def read_records_with_lines(path, fmt: str = "auto") -> List[dict]:
    """Records of `path` with a "line" key: the 1-based line for JSON Lines formats, else the 1-based record number."""
    fmt = sniff_format(path) if fmt == "auto" else fmt
    recs = list(read_any(path, fmt))
    if fmt in JSONL_FORMATS:
        with open(path, encoding="utf-8") as f:
            lines = [n for n, line in enumerate(f, 1) if line.strip()]
    else:
        lines = list(range(1, len(recs) + 1))
    return [{**r, "line": n} for r, n in zip(recs, lines, strict=True)]


class NERDataModule(pl.LightningDataModule):
    """Named-entity recognition data for GlobalPointer / Efficient GlobalPointer.

    Args:
        train_file: training records (cluener JSONL, cmeee JSON, BIO, canonical JSONL; see kslm.data.readers).
        val_file: validation records; empty = carve them from train_file with dev_split.
        predict_file: records to tag with `kslm predict` (any supported format; labels ignored).
        format: the files' format: auto (sniffed), cluener, cmeee, bio or canonical.
        dev_split: without val_file, the dataset's dev split: cluener (last 1,000 lines of train.json) or
            cmeee (first 3,200 records train, the other 800 dev).
        tokenizer: a tokenizer.json or kslm .ckpt to take the tokenizer (and with a .ckpt, the types) from;
            empty = train one on the train texts.
        tokenizer_kind: char (one token per character) or bpe.
        vocab_size: vocabulary size when training a tokenizer.
        min_frequency: a token's minimum count in the train texts when training a tokenizer.
        max_length: tokens per window, <s> and </s> included.
        stride: tokens shared by consecutive windows of a long text; empty = (max_length − 2) // 4.
        batch_size: windows per training batch; records per validation / predict batch.
        num_workers: DataLoader worker processes.
        seed: seed of the shuffling.
        cache_dir: where trained tokenizers are kept (default $KSLM_CACHE or ~/.cache/kslm).
    """

    def __init__(self, train_file: Optional[str] = None, val_file: Optional[str] = None,
                 predict_file: Optional[str] = None,
                 format: Literal["auto", "cluener", "cmeee", "bio", "canonical"] = "auto",
                 dev_split: Optional[Literal["cluener", "cmeee"]] = None, tokenizer: Optional[str] = None,
                 tokenizer_kind: Literal["char", "bpe"] = "char", vocab_size: int = 6000, min_frequency: int = 1,
                 max_length: int = 128, stride: Optional[int] = None, batch_size: int = 16, num_workers: int = 0,
                 seed: int = 1234, cache_dir: Optional[str] = None):
        super().__init__()
        for name, path in (("train_file", train_file), ("val_file", val_file), ("predict_file", predict_file)):
            if path and not Path(path).is_file():
                raise DataError("file not found", path=path, field=f"data.{name}")
        if max_length < 3:
            raise DataError(f"max_length must be at least 3 (<s>, a token, </s>), got {max_length}", field="data.max_length")
        if stride is not None and not 0 <= stride < max_length - 2:
            raise DataError(f"stride must be in [0, max_length − 2), got {stride}", field="data.stride")
        self.train_file, self.val_file, self.predict_file = train_file, val_file, predict_file
        self.format, self.dev_split = format, dev_split
        self.tokenizer_path, self.tokenizer_kind = tokenizer, tokenizer_kind
        self.vocab_size, self.min_frequency = vocab_size, min_frequency
        self.max_length, self.stride, self.batch_size = max_length, stride, batch_size
        self.num_workers, self.seed = num_workers, seed
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.tokenizer = None
        self.types: Optional[List[str]] = None
        self.train_set = self.val_set = self.predict_set = None
        self._records = None  # (train records, val records)
        self._resume = None

    # ---------------------------------------------------------------- reading
    def _read(self):
        if self._records is not None:
            return self._records
        if not self.train_file:
            raise DataError("NER training needs --data.train_file", field="data.train_file")
        if self.val_file:
            train = read_records_with_lines(self.train_file, self.format)
            val = read_records_with_lines(self.val_file, self.format)
        elif self.dev_split:
            split = cluener_train_dev if self.dev_split == "cluener" else cmeee_train_dev
            train, val = split(self.train_file)
            train = [{**r, "line": i + 1} for i, r in enumerate(train)]
            val = [{**r, "line": len(train) + i + 1} for i, r in enumerate(val)]
        else:
            raise DataError("no validation data: give --data.val_file or --data.dev_split", field="data.val_file")
        if not train:
            raise DataError("no records", path=self.train_file, field="data.train_file")
        types = sorted({e["type"] for r in train for e in r.get("entities", [])})
        if not types:
            raise DataError("no entities in the training records", path=self.train_file, field="data.train_file")
        unknown = sorted({e["type"] for r in val for e in r.get("entities", [])} - set(types))
        if unknown:
            raise DataError(f"entity types {unknown} do not occur in the training data (types: {types})",
                            path=self.val_file or self.train_file, field="data.val_file")
        self.types = types
        self._records = (train, val)
        return self._records

    def _source_key(self) -> str:
        p = Path(self.train_file)
        src = [str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns, self.format, self.dev_split, self.min_frequency]
        return hashlib.sha256(json.dumps(src).encode()).hexdigest()[:16]

    def load_tokenizer(self):
        if self.tokenizer is not None:
            return self.tokenizer
        if self.tokenizer_path:
            self.tokenizer = load_tokenizer(self.tokenizer_path, kslm_specials=False)
            return self.tokenizer
        from tokenizers import Tokenizer

        path = self.cache_dir / f"ner-tokenizer-{self.tokenizer_kind}-{self.vocab_size}-{self._source_key()}.json"
        if path.is_file():
            self.tokenizer = Tokenizer.from_file(str(path))
        else:
            train, _ = self._read()
            self.tokenizer = train_tokenizer((r["text"] for r in train), self.tokenizer_kind, self.vocab_size,
                                             self.min_frequency)
            atomic_write_text(path, self.tokenizer.to_str())
        return self.tokenizer

    def _types_from_checkpoint(self):
        if self.tokenizer_path and Path(self.tokenizer_path).suffix == ".ckpt":
            from kslm.checkpoint import read_checkpoint

            self.types = read_checkpoint(self.tokenizer_path).get("kslm", {}).get("types")

    # --------------------------------------------------------------- encoding
    def encode(self, records: List[dict], source, labelled: bool = True) -> List[dict]:
        """Records → [{"windows": [...], "entities", "line", "text"}]; window spans use the <s>-shifted tokens."""
        tok, n = self.load_tokenizer(), self.max_length - 2
        cls_id, sep_id, _ = special_ids(tok)
        type_id = {t: i for i, t in enumerate(self.types or [])}
        out, misaligned = [], 0
        for r in records:
            rec = r if labelled else {**r, "entities": []}
            enc = encode_entities(tok, rec, n, self.stride, errors="report", where=source)
            misaligned += len(enc.misaligned)
            windows = [{"ids": [cls_id, *w.ids, sep_id], "offsets": w.offsets,
                        "spans": [(s + 1, e + 1, type_id[t]) for s, e, t in w.spans]} for w in enc.windows]
            out.append({"windows": windows, "entities": rec.get("entities", []), "line": r["line"], "text": r["text"]})
        if misaligned:
            log.warning("%s: %d entities are not on token boundaries or fit in no window; they are not trained on "
                        "(and count as missed in F1)", source, misaligned)
        return out

    def prepare_data(self):
        if not self.tokenizer_path:
            self.load_tokenizer()

    def setup(self, stage: Optional[str] = None):
        if stage == "predict":
            self.load_tokenizer()
            self._types_from_checkpoint()
            if self.predict_file:
                self.predict_set = self.encode(read_records_with_lines(self.predict_file), self.predict_file, False)
            return
        if self.train_set is not None:
            return
        train, val = self._read()
        self.train_set = [w for r in self.encode(train, self.train_file) for w in r["windows"]]
        self.val_set = self.encode(val, self.val_file or self.train_file)
        log.info("NER data: %d train windows, %d val records, %d types", len(self.train_set), len(self.val_set),
                 len(self.types))

    # ---------------------------------------------------------------- batches
    def collate_windows(self, windows: List[dict], labels: bool = True) -> dict:
        B, T = len(windows), max(len(w["ids"]) for w in windows)
        ids = torch.full((B, T), special_ids(self.load_tokenizer())[2], dtype=torch.long)
        mask = torch.zeros(B, T, dtype=torch.long)
        for b, w in enumerate(windows):
            ids[b, : len(w["ids"])] = torch.tensor(w["ids"])
            mask[b, : len(w["ids"])] = 1
        span_mask = mask.clone()
        span_mask[:, 0] = 0
        span_mask[torch.arange(B), mask.sum(1) - 1] = 0  # </s>
        batch = {"input_ids": ids, "attention_mask": mask, "span_mask": span_mask,
                 "offsets": [w["offsets"] for w in windows]}
        if labels:
            y = torch.zeros(B, len(self.types), T, T)
            for b, w in enumerate(windows):
                for s, e, t in w["spans"]:
                    y[b, t, s, e] = 1
            batch["labels"] = y
        return batch

    def collate_records(self, records: List[dict], labels: bool = True) -> dict:
        windows = [w for r in records for w in r["windows"]]
        batch = self.collate_windows(windows, labels)
        batch["record"] = [i for i, r in enumerate(records) for _ in r["windows"]]
        for key in ("entities", "line", "text"):
            batch[key] = [r[key] for r in records]
        return batch

    def train_dataloader(self):
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        sampler = ResumableSampler(self.train_set, num_replicas=world, rank=rank, shuffle=True, seed=self.seed)
        if self._resume is not None:
            state, self._resume = self._resume, None
            if state["batch_size"] != self.batch_size:
                raise DataError("cannot resume the data position with a different batch_size", field="data.batch_size")
            sampler.resume(state["epoch"], state["batches"] * self.batch_size)
        self._sampler = sampler
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          collate_fn=self.collate_windows, generator=torch.Generator())

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.batch_size, num_workers=self.num_workers,
                          collate_fn=self.collate_records)

    test_dataloader = val_dataloader

    def predict_dataloader(self):
        if not self.predict_file:
            raise DataError("kslm predict needs records: --data.predict_file FILE", field="data.predict_file")
        return DataLoader(self.predict_set, batch_size=self.batch_size, num_workers=self.num_workers,
                          collate_fn=lambda recs: self.collate_records(recs, labels=False))

    # ---------------------------------------------------------- exact resume
    def state_dict(self):
        sampler = getattr(self, "_sampler", None)
        if self.trainer is None or sampler is None:
            return {}
        progress = self.trainer.fit_loop.epoch_loop.batch_progress
        if progress.is_last_batch:
            return {"epoch": sampler.data_epoch + 1, "batches": 0, "batch_size": self.batch_size}
        return {"epoch": sampler.data_epoch, "batches": progress.current.processed, "batch_size": self.batch_size}

    def load_state_dict(self, state):
        self._resume = state or None  # checked and applied when training starts (predict / validate ignore it)


__all__ = ["NERDataModule", "read_records_with_lines"]
