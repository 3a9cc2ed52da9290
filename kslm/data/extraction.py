"""What the NER and RE data modules share: reading records with their line numbers, the tokenizer (connected by the
CLI, or trained on the train texts and cached, or loaded from data.tokenizer), the label set of the training data,
windows wrapped in <s> … </s>, and record batches for validation / prediction (resume: kslm.data.base).

Subclasses say how records are read (`_read_split`), which labels they carry (`_labels_of`), how a record is cut
into windows (`encode`) and how windows are batched with their targets (`collate_windows`).
"""

import hashlib
import json
import logging
from pathlib import Path
from typing import List, Literal, Optional

import torch
from torch.utils.data import DataLoader

from kslm.data.base import KslmDataModule, ignore_sigint
from kslm.data.formats import FORMATS, format_names, read_records_with_lines, read_texts_with_lines, sniff_format
from kslm.data.formats.jsonl import record_text
from kslm.data.tokenizer import check_vocab_size, special_ids, tokenizer_from_source, train_tokenizer
from kslm.errors import DataError
from kslm.io import write_text

log = logging.getLogger(__name__)


class ExtractionDataModule(KslmDataModule):
    """Base of NERDataModule and REDataModule (they document train_file, val_file, test_file, predict_file and
    format).

    Args:
        tokenizer: a tokenizer.json, a Hugging Face model directory or a kslm .ckpt to take the tokenizer from
            (only the tokenizer: labels come from the training data, or from --ckpt_path); empty = train one on the
            train texts. The tokenizer of --ckpt_path, --model.pretrained or --model.hf_path takes precedence.
        tokenizer_kind: char (one token per character; Chinese) or bpe (byte-level BPE; English).
        vocab_size: vocabulary size when training a tokenizer.
        min_frequency: a token's minimum count in the train texts when training a tokenizer.
        unlabelled_val: the validation file has no gold labels (F1 is then meaningless). Without it, a validation
            set without a single entity / triple is an error: a misspelled or missing label key must not score the
            model against nothing.
        max_length: tokens per window, <s> and </s> included.
        stride: tokens shared by consecutive windows of a long text; empty = (max_length − 2) // 4.
        batch_size: windows per training batch; records per validation / predict batch.
        num_workers: DataLoader worker processes.
        seed: seed of the shuffling.
        cache_dir: where trained tokenizers are kept (default $KSLM_CACHE or ~/.cache/kslm).
        max_text_chars: the longest text a record may have (train, val and predict alike); a longer one is an error
            naming its file and line, raised before anything is tokenized (a 10 MB record would take minutes to
            tokenize and window; split such texts, or raise the limit).
    """

    kind = "extraction"  # names the cached tokenizer
    label_key = "labels"  # the labels' name in checkpoints and error messages ("types", "predicates")

    def __init__(self, train_file: Optional[str] = None, val_file: Optional[str] = None,
                 predict_file: Optional[str] = None, format: str = "auto", tokenizer: Optional[str] = None,
                 tokenizer_kind: Literal["char", "bpe"] = "char", vocab_size: int = 6000, min_frequency: int = 1,
                 max_length: int = 128, unlabelled_val: bool = False,
                 stride: Optional[int] = None, batch_size: int = 16, num_workers: int = 0, seed: int = 1234,
                 cache_dir: Optional[str] = None, max_text_chars: int = 100_000, test_file: Optional[str] = None):
        super().__init__(cache_dir, batch_size, num_workers, seed)
        for name, path in (("train_file", train_file), ("val_file", val_file), ("test_file", test_file),
                           ("predict_file", predict_file)):
            if path and not Path(path).is_file():
                raise DataError("file not found", path=path, field=f"data.{name}")
        if max_length < 3:
            raise DataError(f"max_length must be at least 3 (<s>, a token, </s>), got {max_length}", field="data.max_length")
        if tokenizer is None:
            check_vocab_size(tokenizer_kind, vocab_size)
        if max_text_chars < 1:
            raise DataError(f"max_text_chars must be positive, got {max_text_chars}", field="data.max_text_chars")
        self.max_text_chars = max_text_chars
        if min_frequency < 0:
            raise DataError(f"min_frequency must be ≥ 0, got {min_frequency}", field="data.min_frequency")
        if stride is not None and not 0 <= stride < max_length - 2:
            raise DataError(f"stride must be in [0, max_length − 2), got {stride}", field="data.stride")
        self.train_file, self.val_file, self.predict_file, self.format = train_file, val_file, predict_file, format
        self.test_file = test_file
        self.tokenizer_path, self.tokenizer_kind = tokenizer, tokenizer_kind
        self.vocab_size, self.min_frequency = vocab_size, min_frequency
        self.max_length, self.stride, self.unlabelled_val = max_length, stride, unlabelled_val
        self.train_set = self.val_set = self.test_set = self.predict_set = None
        self._records = None  # (train records, val records, their labels)

    # ------------------------------------------------------------- subclass hooks
    def _read_split(self):
        """→ (train records, val records), each with a "line" key."""
        raise NotImplementedError

    def _reader_options(self, fmt: str) -> dict:
        """Options for the reader of format `fmt` (skip / repair options the data module exposes)."""
        return {}

    def _check_labelled(self, record: dict, path) -> None:
        """Raise a DataError for a record that is not one of this task's (an RE record read for NER, …)."""

    def _labels_of(self, train: List[dict], val: List[dict]) -> List[str]:
        """The sorted label set of the training records; raise a DataError for labels of val unseen in train."""
        raise NotImplementedError

    def _check_known(self, records: List[dict], labels: List[str], path, field: str) -> None:
        """Raise a DataError for a label of `records` (a validation or test split) that is not in `labels`."""
        raise NotImplementedError

    def _source_options(self) -> list:
        """Options that change the tokenizer's training texts (they key its cache file)."""
        return [self.format, self.min_frequency]

    def _format_of(self, path) -> str:
        """The format of `path` (data.format, or sniffed), checked to serve this task."""
        fmt = sniff_format(path) if self.format == "auto" else self.format
        if self.kind not in FORMATS[fmt].tasks:
            other = "relation-extraction" if self.kind == "ner" else "NER"
            raise DataError(f"a {fmt} file holds {other} records; {self.kind.upper()} reads "
                            f"{', '.join(format_names(self.kind))} (--data.format)", path=path)
        return fmt

    def _read_labelled(self, path) -> List[dict]:
        """The training / validation records of `path` with their "line"."""
        fmt = self._format_of(path)
        records = read_records_with_lines(path, fmt, **self._reader_options(fmt))
        for r in records:
            self._check_labelled(r, path)
        return records

    def _read_file(self, path) -> List[dict]:
        """Prediction records of `path`: {"text", "line"}, the file's format recognised on its own (a JSON Lines file
        of {"text": …} records is read whatever data.format says; labels are not read)."""
        return read_texts_with_lines(path, self.format)

    def encode(self, records: List[dict], source, labelled: bool = True) -> List[dict]:
        """Records → [{"windows": [...], "line", "text", gold labels}] (windows: "ids" with <s>/</s>, "offsets")."""
        raise NotImplementedError

    def collate_windows(self, windows: List[dict], labels: bool = True) -> dict:
        raise NotImplementedError

    gold_keys: tuple = ()  # per-record keys copied into record batches (the gold labels)

    # ---------------------------------------------------------------- reading
    def _read_records(self):
        """(train, val) records and the sorted label set of the training records, read once."""
        if self._records is None:
            if not self.train_file:
                raise DataError("training needs --data.train_file", field="data.train_file")
            train, val = self._read_split()
            if not train:
                raise DataError("no records", path=self.train_file, field="data.train_file")
            self.check_sizes(train, self.train_file)
            self.check_sizes(val, self.val_file or self.train_file)
            labels = self._labels_of(train, val)
            self._check_val(val)
            self._records = (train, val, labels)
        return self._records

    def _check_val(self, val: List[dict]) -> None:
        """Validation records must exist and, unless data.unlabelled_val, hold at least one gold label."""
        path, key = self.val_file or self.train_file, self.gold_keys[0]
        if not val:
            raise DataError("no validation records", path=path, field="data.val_file")
        if not self.unlabelled_val and not any(r.get(key) for r in val):
            raise DataError(f"no gold {key} in the {len(val)} validation records: F1 would be scored against "
                            f"nothing; give --data.unlabelled_val true if the file is unlabelled",
                            path=path, field="data.val_file")

    def _read_test(self) -> List[dict]:
        return self._read_eval(self.test_file, "data.test_file")

    def _read_eval(self, path, field: str) -> List[dict]:
        """The records of a file evaluated on its own (data.test_file; data.val_file without data.train_file, as
        `kslm validate|test --ckpt_path X` without --config reads it), checked like validation records: sizes,
        labels known to the model (the checkpoint's when connected, else the training data's), a gold label."""
        key = self.gold_keys[0]
        if is_blank(path):
            raise DataError(f"no {'test' if field == 'data.test_file' else 'validation'} records", path=path, field=field)
        records = self._read_labelled(path)
        self.check_sizes(records, path)
        if self.labels is None:
            self.labels = self.label_set()
        self._check_known(records, self.labels, path, field)
        if field == "data.val_file":
            self._check_val(records)
        elif not any(r.get(key) for r in records):
            raise DataError(f"no gold {key} in the {len(records)} test records: F1 would be scored against nothing",
                            path=path, field=field)
        return records

    def _read(self):
        """(train, val) records, their labels checked against the connected ones (a checkpoint's, --model.<labels>)."""
        train, val, labels = self._read_records()
        if self.labels is None:
            self.labels = labels
        elif list(self.labels) != labels:
            raise DataError(f"the training data's {self.label_key} {labels} differ from the model's {list(self.labels)} "
                            f"(from --ckpt_path or --model.{self.label_key})", path=self.train_file, field="data.train_file")
        return train, val

    def check_sizes(self, records: List[dict], path) -> None:
        """No record's text is longer than data.max_text_chars (checked before tokenizing: cheap)."""
        for r in records:
            n = len(r["text"])
            if n > self.max_text_chars:
                raise DataError(f"text of {n:,} characters exceeds data.max_text_chars {self.max_text_chars:,}; split "
                                "it into shorter records, or raise --data.max_text_chars", path=path, line=r.get("line"),
                                field="text")

    def label_set(self) -> List[str]:
        """The sorted labels of the training records."""
        return list(self._read_records()[2])

    def _source_key(self) -> str:
        p = Path(self.train_file)
        src = [str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns, *self._source_options()]
        return hashlib.sha256(json.dumps(src).encode()).hexdigest()[:16]

    def build_tokenizer(self):
        """data.tokenizer, else a tokenizer trained on the train texts (cached under cache_dir by source)."""
        if self.tokenizer_path:
            return tokenizer_from_source(self.tokenizer_path, kslm_specials=False)
        from tokenizers import Tokenizer

        if not self.train_file:
            raise DataError("no tokenizer: give --data.train_file, --data.tokenizer or --ckpt_path", field="data.tokenizer")
        path = self.cache_dir / f"{self.kind}-tokenizer-{self.tokenizer_kind}-{self.vocab_size}-{self._source_key()}.json"
        if path.is_file():
            return Tokenizer.from_file(str(path))
        train = self._read_records()[0]
        tok = train_tokenizer((r["text"] for r in train), self.tokenizer_kind, self.vocab_size, self.min_frequency)
        write_text(path, tok.to_str())
        return tok

    def window_length(self) -> int:
        return self.max_length

    def predict_settings(self) -> dict:
        return {"max_length": self.max_length, "stride": self.stride, "batch_size": self.batch_size}

    def wrap(self, ids: List[int]) -> List[int]:
        """A window's token ids between the tokenizer's <s> and </s> (or [CLS] and [SEP])."""
        cls_id, sep_id, _ = special_ids(self.load_tokenizer())
        return [cls_id, *ids, sep_id]

    # ------------------------------------------------------------------ stages
    def setup(self, stage: Optional[str] = None):
        if stage == "test":
            self._setup_test()
            return
        if stage == "predict":
            if self.predict_file:
                if is_blank(self.predict_file):  # no records: an empty output (the CLI writes it and says so)
                    self.predict_set = []
                    return
                self.predict_set = self.prediction_items(self._read_file(self.predict_file), self.predict_file)
            return
        if stage == "validate" and not self.train_file:  # a checkpoint on a validation file, without --config
            if not self.val_file:
                raise DataError("kslm validate needs labelled records: --data.val_file FILE (or the training config's "
                                "train/val files)", field="data.val_file")
            if self.val_set is None:
                self.val_set = self.encode(self._read_eval(self.val_file, "data.val_file"), self.val_file)
            return
        if self.train_set is not None:
            return
        train, val = self._read()
        self.train_set = [w for r in self.encode(train, self.train_file) for w in r["windows"]]
        self.val_set = self.encode(val, self.val_file or self.train_file)
        log.info("%s data: %d train windows, %d val records, %d %s", self.kind, len(self.train_set), len(self.val_set),
                 len(self.labels), self.label_key)

    def _setup_test(self):
        """data.test_file's records; without one, the validation split's (said in one line: the numbers are then
        those of `kslm validate`)."""
        if self.test_set is not None:
            return
        if self.test_file:
            self.test_set = self.encode(self._read_test(), self.test_file)
            log.info("%s test data: %d records from %s", self.kind, len(self.test_set), self.test_file)
            return
        if not self.train_file and not self.val_file:
            raise DataError("kslm test needs labelled records: --data.test_file FILE (or the training config's "
                            "train/val files, to test on the validation split)", field="data.test_file")
        split = self.val_file or f"{self.train_file} --data.dev_split {getattr(self, 'dev_split', None)}"
        self.note(f"no --data.test_file: kslm test evaluates the validation split ({split}); its test/* numbers "
                  "are kslm validate's val/*")
        val = self._read()[1] if self.train_file else self._read_eval(self.val_file, "data.val_file")
        self.test_set = self.encode(val, self.val_file or self.train_file)

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

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        """Only the batch's tensors move; its per-record lists (offsets, gold labels, texts) stay as they are —
        Lightning would otherwise walk every offset pair of every window in Python (minutes for a long record).
        (A data-module hook: the same hook on the task made Lightning warn on every run that it overrides this one.)"""
        if isinstance(batch, dict):
            return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def train_dataloader(self):
        return self.resumable_loader(self.train_set, self.collate_windows)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.batch_size, num_workers=self.num_workers,
                          collate_fn=self.collate_records, worker_init_fn=ignore_sigint if self.num_workers else None)

    def test_dataloader(self):
        return DataLoader(self.test_set, batch_size=self.batch_size, num_workers=self.num_workers,
                          collate_fn=self.collate_records)

    def predict_dataloader(self):
        if not self.predict_file:
            raise DataError("kslm predict needs records: --data.predict_file FILE", field="data.predict_file")
        return self.prediction_loader(self.predict_set)

    # ------------------------------------------- prediction (kslm predict, kslm.load, kslm serve: one path)
    @staticmethod
    def records_from(inputs: List) -> List[dict]:
        """Records given in memory (the Python API, a server request): each a text or {"text": …} (other keys are
        ignored, as `kslm predict` ignores them in a file) → {"text", "line"}, "line" the 1-based position. A bad
        one is a DataError naming "record N" (0-based, as in a JSON array) and the field."""
        out = []
        for i, rec in enumerate(inputs):
            rec = {"text": rec} if isinstance(rec, str) else rec
            if not isinstance(rec, dict):
                raise DataError(f"expected a text or an object with a string 'text', got {type(rec).__name__}",
                                line=f"record {i}")
            out.append({"text": record_text(rec, None, f"record {i}"), "line": i + 1})
        return out

    def prediction_items(self, records: List[dict], source) -> List[dict]:
        """Records {"text", "line"} → what the prediction loader batches (sizes checked, windows encoded)."""
        self.check_sizes(records, source)
        return self.encode(records, source, False)

    def prediction_loader(self, items: List[dict]) -> DataLoader:
        return DataLoader(items, batch_size=self.batch_size, num_workers=self.num_workers,
                          collate_fn=lambda recs: self.collate_records(recs, labels=False))


def is_blank(path, block: int = 1 << 20) -> bool:
    """Whether a file holds nothing but whitespace (read block by block: a big file answers at its first text)."""
    with open(path, "rb") as f:
        while chunk := f.read(block):
            if chunk.strip(b" \t\r\n\f\v\xef\xbb\xbf"):  # (a UTF-8 byte-order mark alone is no record either)
                return False
    return True


__all__ = ["ExtractionDataModule", "is_blank"]
