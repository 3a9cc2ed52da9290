"""What the NER and RE data modules share: reading records with their line numbers, the tokenizer (trained on the
train texts and cached, or loaded from a tokenizer.json / kslm .ckpt), windows wrapped in <s> … </s>, record
batches for validation / prediction, and the resumable training loader with exact-resume state.

Subclasses say how records are read (`_read_split`), which labels they carry (`_labels_of`), how a record is cut
into windows (`encode`) and how windows are batched with their targets (`collate_windows`).
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
from kslm.data.readers import read_any, sniff_format
from kslm.data.sampler import ResumableSampler
from kslm.data.tokenizer import load_tokenizer, special_ids, train_tokenizer
from kslm.errors import DataError
from kslm.io import write_text

log = logging.getLogger(__name__)
JSONL_FORMATS = ("cluener", "canonical", "duie", "cmeie")


def read_records_with_lines(path, fmt: str = "auto", **kwargs) -> List[dict]:
    """Records of `path` with a "line" key: the 1-based line for JSON Lines formats, else the 1-based record number.
    kwargs go to the reader (e.g. skip_unlocatable for DuIE / WebNLG)."""
    fmt = sniff_format(path) if fmt == "auto" else fmt
    recs = list(read_any(path, fmt, **kwargs))
    if fmt in JSONL_FORMATS:
        with open(path, encoding="utf-8") as f:
            lines = [n for n, line in enumerate(f, 1) if line.strip()]
    else:
        lines = list(range(1, len(recs) + 1))
    return [{**r, "line": n} for r, n in zip(recs, lines, strict=True)]


class ExtractionDataModule(pl.LightningDataModule):
    """Base of NERDataModule and REDataModule (they document train_file, val_file, predict_file and format).

    Args:
        tokenizer: a tokenizer.json or kslm .ckpt to take the tokenizer (and with a .ckpt, the labels) from;
            empty = train one on the train texts.
        tokenizer_kind: char (one token per character; Chinese) or bpe (byte-level BPE; English).
        vocab_size: vocabulary size when training a tokenizer.
        min_frequency: a token's minimum count in the train texts when training a tokenizer.
        max_length: tokens per window, <s> and </s> included.
        stride: tokens shared by consecutive windows of a long text; empty = (max_length − 2) // 4.
        batch_size: windows per training batch; records per validation / predict batch.
        num_workers: DataLoader worker processes.
        seed: seed of the shuffling.
        cache_dir: where trained tokenizers are kept (default $KSLM_CACHE or ~/.cache/kslm).
    """

    kind = "extraction"  # names the cached tokenizer
    label_key = "labels"  # the labels' name in checkpoints and error messages ("types", "predicates")

    def __init__(self, train_file: Optional[str] = None, val_file: Optional[str] = None,
                 predict_file: Optional[str] = None, format: str = "auto", tokenizer: Optional[str] = None,
                 tokenizer_kind: Literal["char", "bpe"] = "char", vocab_size: int = 6000, min_frequency: int = 1,
                 max_length: int = 128,
                 stride: Optional[int] = None, batch_size: int = 16, num_workers: int = 0, seed: int = 1234,
                 cache_dir: Optional[str] = None):
        super().__init__()
        for name, path in (("train_file", train_file), ("val_file", val_file), ("predict_file", predict_file)):
            if path and not Path(path).is_file():
                raise DataError("file not found", path=path, field=f"data.{name}")
        if max_length < 3:
            raise DataError(f"max_length must be at least 3 (<s>, a token, </s>), got {max_length}", field="data.max_length")
        if stride is not None and not 0 <= stride < max_length - 2:
            raise DataError(f"stride must be in [0, max_length − 2), got {stride}", field="data.stride")
        self.train_file, self.val_file, self.predict_file, self.format = train_file, val_file, predict_file, format
        self.tokenizer_path, self.tokenizer_kind = tokenizer, tokenizer_kind
        self.vocab_size, self.min_frequency = vocab_size, min_frequency
        self.max_length, self.stride, self.batch_size = max_length, stride, batch_size
        self.num_workers, self.seed = num_workers, seed
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.tokenizer = None
        self.labels: Optional[List[str]] = None
        self.train_set = self.val_set = self.predict_set = None
        self._records = None  # (train records, val records)
        self._resume = None

    # ------------------------------------------------------------- subclass hooks
    def _read_split(self):
        """→ (train records, val records), each with a "line" key."""
        raise NotImplementedError

    def _labels_of(self, train: List[dict], val: List[dict]) -> List[str]:
        """The sorted label set of the training records; raise a DataError for labels of val unseen in train."""
        raise NotImplementedError

    def _source_options(self) -> list:
        """Options that change the tokenizer's training texts (they key its cache file)."""
        return [self.format, self.min_frequency]

    def _read_file(self, path) -> List[dict]:
        """The records of `path` with their "line" (labels are ignored for prediction)."""
        return read_records_with_lines(path, self.format)

    def encode(self, records: List[dict], source, labelled: bool = True) -> List[dict]:
        """Records → [{"windows": [...], "line", "text", gold labels}] (windows: "ids" with <s>/</s>, "offsets")."""
        raise NotImplementedError

    def collate_windows(self, windows: List[dict], labels: bool = True) -> dict:
        raise NotImplementedError

    gold_keys: tuple = ()  # per-record keys copied into record batches (the gold labels)

    # ---------------------------------------------------------------- reading
    def _read(self):
        if self._records is not None:
            return self._records
        if not self.train_file:
            raise DataError("training needs --data.train_file", field="data.train_file")
        train, val = self._read_split()
        if not train:
            raise DataError("no records", path=self.train_file, field="data.train_file")
        self.labels = self._labels_of(train, val)
        self._records = (train, val)
        return self._records

    def _source_key(self) -> str:
        p = Path(self.train_file)
        src = [str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns, *self._source_options()]
        return hashlib.sha256(json.dumps(src).encode()).hexdigest()[:16]

    def load_tokenizer(self):
        if self.tokenizer is not None:
            return self.tokenizer
        if self.tokenizer_path:
            self.tokenizer = load_tokenizer(self.tokenizer_path, kslm_specials=False)
            return self.tokenizer
        from tokenizers import Tokenizer

        if not self.train_file:
            raise DataError("no tokenizer: give --data.train_file, --data.tokenizer or --ckpt_path", field="data.tokenizer")
        path = self.cache_dir / f"{self.kind}-tokenizer-{self.tokenizer_kind}-{self.vocab_size}-{self._source_key()}.json"
        if path.is_file():
            self.tokenizer = Tokenizer.from_file(str(path))
        else:
            train, _ = self._read()
            self.tokenizer = train_tokenizer((r["text"] for r in train), self.tokenizer_kind, self.vocab_size,
                                             self.min_frequency)
            write_text(path, self.tokenizer.to_str())
        return self.tokenizer

    def _labels_from_checkpoint(self):
        if self.tokenizer_path and Path(self.tokenizer_path).suffix == ".ckpt":
            from kslm.checkpoint import read_checkpoint

            self.labels = read_checkpoint(self.tokenizer_path).get("kslm", {}).get(self.label_key)

    def wrap(self, ids: List[int]) -> List[int]:
        """A window's token ids between the tokenizer's <s> and </s> (or [CLS] and [SEP])."""
        cls_id, sep_id, _ = special_ids(self.load_tokenizer())
        return [cls_id, *ids, sep_id]

    # ------------------------------------------------------------------ stages
    def prepare_data(self):
        if not self.tokenizer_path:
            self.load_tokenizer()

    def setup(self, stage: Optional[str] = None):
        if stage == "predict":
            self.load_tokenizer()
            self._labels_from_checkpoint()
            if self.predict_file:
                self.predict_set = self.encode(self._read_file(self.predict_file), self.predict_file, False)
            return
        if self.train_set is not None:
            return
        train, val = self._read()
        self.train_set = [w for r in self.encode(train, self.train_file) for w in r["windows"]]
        self.val_set = self.encode(val, self.val_file or self.train_file)
        log.info("%s data: %d train windows, %d val records, %d %s", self.kind, len(self.train_set), len(self.val_set),
                 len(self.labels), self.label_key)

    # ---------------------------------------------------------------- batches
    def collate_inputs(self, windows: List[dict]) -> dict:
        """input_ids / attention_mask (1 = token) / span_mask (tokens that may start or end a span: not <s>, </s>,
        padding) / offsets of the windows."""
        B, T = len(windows), max(len(w["ids"]) for w in windows)
        ids = torch.full((B, T), special_ids(self.load_tokenizer())[2], dtype=torch.long)
        mask = torch.zeros(B, T, dtype=torch.long)
        for b, w in enumerate(windows):
            ids[b, : len(w["ids"])] = torch.tensor(w["ids"])
            mask[b, : len(w["ids"])] = 1
        span_mask = mask.clone()
        span_mask[:, 0] = 0
        span_mask[torch.arange(B), mask.sum(1) - 1] = 0  # </s>
        return {"input_ids": ids, "attention_mask": mask, "span_mask": span_mask,
                "offsets": [w["offsets"] for w in windows]}

    def collate_records(self, records: List[dict], labels: bool = True) -> dict:
        windows = [w for r in records for w in r["windows"]]
        batch = self.collate_windows(windows, labels)
        batch["record"] = [i for i, r in enumerate(records) for _ in r["windows"]]
        for key in (*self.gold_keys, "line", "text"):
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


__all__ = ["ExtractionDataModule", "JSONL_FORMATS", "read_records_with_lines"]
