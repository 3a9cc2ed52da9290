"""NERDataModule: NER source files (kslm.data.formats) → tokenizer → windows with [CLS]/[SEP] → dense span labels.

Each text is encoded with `kslm.data.spans.encode_entities` into windows of `max_length − 2` tokens, wrapped in
<s> … </s> (kslm's [CLS]/[SEP]); token spans are shifted by one for the leading <s>. Entities that do not sit on
token boundaries (or fit in no window) are counted and logged as a warning, never dropped silently.

Batches: {"input_ids" [B, T], "attention_mask" [B, T] (1 = token), "span_mask" [B, T] (tokens that may start or
end an entity: not <s>, </s> or padding), "labels" [B, L, T, T] (dense, 1 = entity of type l from i to j
inclusive), "offsets" (per window: char offsets of tokens 1..n), "record" (per window: index of its record in
the batch), "entities" (per record: gold char entities), "line", "text"}. Train batches are windows; validation and
predict batches are whole records (all windows of each record), so F1 and predictions are per record.
"""

import logging
from typing import List, Literal, Optional

import torch

from kslm.data.extraction import ExtractionDataModule
from kslm.data.formats import cluener_train_dev, cmeee_train_dev, read_records_with_lines
from kslm.data.spans import encode_entities
from kslm.errors import DataError

log = logging.getLogger(__name__)


class NERDataModule(ExtractionDataModule):
    """Named-entity recognition data for GlobalPointer / Efficient GlobalPointer.

    Args:
        train_file: training records (cluener JSONL, cmeee JSON, BIO, canonical JSONL; see kslm.data.formats).
        val_file: validation records; empty = carve them from train_file with dev_split.
        test_file: labelled records for `kslm test` (any supported format; e.g. CMeEE's or People's Daily's test
            split); empty = `kslm test` evaluates the validation split and says so.
        predict_file: records to tag with `kslm predict` (any supported format; labels ignored).
        format: the files' format: auto (sniffed), cluener, cmeee, bio or canonical.
        dev_split: without val_file, the dataset's dev split: cluener (last 1,000 lines of train.json) or
            cmeee (first 3,200 records train, the other 800 dev).
        repair: BIO / BMES files: read an I-/M-/E- tag that continues no open entity as B- (conlleval's reading;
            counted in a warning) instead of stopping with an error naming its line.
        (tokenizer, max_length, batch_size, …: see ExtractionDataModule.)
    """

    kind = "ner"
    label_key = "types"
    gold_keys = ("entities",)

    def __init__(self, train_file: Optional[str] = None, val_file: Optional[str] = None,
                 predict_file: Optional[str] = None,
                 format: Literal["auto", "cluener", "cmeee", "bio", "canonical"] = "auto",
                 dev_split: Optional[Literal["cluener", "cmeee"]] = None, repair: bool = False,
                 test_file: Optional[str] = None, **kwargs):
        super().__init__(train_file, val_file, predict_file, format, test_file=test_file, **kwargs)
        self.dev_split, self.repair = dev_split, repair

    @property
    def types(self) -> Optional[List[str]]:
        return self.labels

    # ---------------------------------------------------------------- reading
    def _read_split(self):
        if self.val_file:
            return self._read_labelled(self.train_file), self._read_labelled(self.val_file)
        if not self.dev_split:
            raise DataError("no validation data: give --data.val_file or --data.dev_split", field="data.val_file")
        split = cluener_train_dev if self.dev_split == "cluener" else cmeee_train_dev
        train, val = split(self.train_file)
        train = [{**r, "line": i + 1} for i, r in enumerate(train)]
        val = [{**r, "line": len(train) + i + 1} for i, r in enumerate(val)]
        return train, val

    def _reader_options(self, fmt):
        return {"repair": True} if fmt == "bio" and self.repair else {}

    def _check_labelled(self, record, path):
        if "triples" in record and "entities" not in record:
            raise DataError("a relation-extraction record (it has 'triples', no 'entities'), not an NER one",
                            path=path, line=record["line"], field="triples")

    def _labels_of(self, train, val):
        types = sorted({e["type"] for r in train for e in r.get("entities", [])})
        if not types:
            raise DataError("no entities in the training records (an unlabelled file cannot train)",
                            path=self.train_file, field="data.train_file")
        self._check_known(val, types, self.val_file or self.train_file, "data.val_file")
        return types

    def _check_known(self, records, types, path, field):
        unknown = sorted({e["type"] for r in records for e in r.get("entities", [])} - set(types))
        if unknown:
            raise DataError(f"entity types {unknown} do not occur in the training data (types: {list(types)})",
                            path=path, field=field)

    def _source_options(self):
        return [self.format, self.dev_split, self.min_frequency]  # (repair changes spans, not texts)

    # --------------------------------------------------------------- encoding
    def encode(self, records: List[dict], source, labelled: bool = True) -> List[dict]:
        """Records → [{"windows": [...], "entities", "line", "text"}]; window spans use the <s>-shifted tokens."""
        tok, n = self.load_tokenizer(), self.max_length - 2
        type_id = {t: i for i, t in enumerate(self.types or [])}
        out, misaligned = [], 0
        for r in records:
            rec = r if labelled else {**r, "entities": []}
            enc = encode_entities(tok, rec, n, self.stride, errors="report", where=source)
            misaligned += len(enc.misaligned)
            windows = [{"ids": self.wrap(w.ids), "offsets": w.offsets,
                        "spans": [(s + 1, e + 1, type_id[t]) for s, e, t in w.spans]} for w in enc.windows]
            out.append({"windows": windows, "entities": rec.get("entities", []), "line": r["line"], "text": r["text"]})
        if misaligned:
            log.warning("%s: %d entities are not on token boundaries or fit in no window; they are not trained on "
                        "(and count as missed in F1)", source, misaligned)
        return out

    # ---------------------------------------------------------------- batches
    def collate_windows(self, windows: List[dict], labels: bool = True) -> dict:
        batch = self.collate_inputs(windows)
        if labels:
            B, T = batch["input_ids"].shape
            y = torch.zeros(B, len(self.types), T, T)
            for b, w in enumerate(windows):
                for s, e, t in w["spans"]:
                    y[b, t, s, e] = 1
            batch["labels"] = y
        return batch


__all__ = ["NERDataModule", "read_records_with_lines"]
