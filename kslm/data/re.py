"""REDataModule: relation-extraction files (kslm.data.formats) → tokenizer → windows with <s>/</s> → GPLinker targets.

Sources: DuIE / LIC2019 and CMeIE JSONL (`spo_list` of entity strings, placed at their first occurrence), WebNLG
(`triple_list`, JSON array) and kslm's canonical RE JSONL (`triples` with char spans). Each text is encoded with
`kslm.data.spans.encode_triples` into windows of `max_length − 2` tokens wrapped in <s> … </s>; token positions are
shifted by one for the leading <s>, so position 0 is never a gold position (GPLinker's padding pair (0, 0)).
Triples whose entities do not sit on token boundaries, or whose subject and object fit in no window together, are
counted and logged as a warning (they are not trained on and count as missed in F1) — never dropped silently.

Predicates are the sorted set of the training triples' predicates (stored in the checkpoint by the task). A
validation triple with a predicate unseen in training is a DataError naming its file and line, unless
`unknown_predicates: keep` (WebNLG's val split has 4 such predicates): then it stays gold (a certain miss) and is
counted in a warning.

Batches: {"input_ids", "attention_mask", "span_mask" [B, T] (as NER), "entity_labels" [B, 2, K, 2], "head_labels"
[B, P, K, 2], "tail_labels" [B, P, K, 2] (sparse label pairs of `kslm.heads.gplinker.gplinker_targets`), "offsets"
(per window: char offsets of tokens 1..n), "record" (per window: its record's index in the batch), "triples" (per
record: gold canonical triples), "line", "text"}. Train batches are windows; validation / predict batches are
whole records.
"""

import logging
from typing import List, Literal, Optional

from kslm.data.extraction import ExtractionDataModule
from kslm.data.spans import encode_triples
from kslm.errors import DataError
from kslm.heads.gplinker import gplinker_targets

log = logging.getLogger(__name__)


class REDataModule(ExtractionDataModule):
    """Relation-extraction data for GPLinker.

    Args:
        train_file: training records (DuIE / CMeIE JSONL, WebNLG JSON, canonical RE JSONL; see kslm.data.formats).
        val_file: validation records (the dataset's labelled dev / valid split).
        test_file: labelled records for `kslm test` (e.g. WebNLG's test.json); empty = `kslm test` evaluates the
            validation split and says so.
        predict_file: records to extract triples from with `kslm predict` (any supported format; labels ignored).
        format: the files' format: auto (sniffed), duie, cmeie, webnlg or canonical.
        skip_unlocatable: DuIE / CMeIE / WebNLG: skip (and count, in a warning) triples whose entity string does
            not occur in the text, instead of stopping with an error.
        unknown_predicates: error (a val / test triple whose predicate is not in the training data stops with an error
            naming file and line) or keep (it stays gold, always missed, and is counted in a warning).
        (tokenizer, max_length, batch_size, …: see ExtractionDataModule.)
    """

    kind = "re"
    label_key = "predicates"
    gold_keys = ("triples",)

    def __init__(self, train_file: Optional[str] = None, val_file: Optional[str] = None,
                 predict_file: Optional[str] = None,
                 format: Literal["auto", "duie", "cmeie", "webnlg", "canonical"] = "auto",
                 skip_unlocatable: bool = False, unknown_predicates: Literal["error", "keep"] = "error",
                 test_file: Optional[str] = None, **kwargs):
        super().__init__(train_file, val_file, predict_file, format, test_file=test_file, **kwargs)
        self.skip_unlocatable, self.unknown_predicates = skip_unlocatable, unknown_predicates

    @property
    def predicates(self) -> Optional[List[str]]:
        return self.labels

    # ---------------------------------------------------------------- reading
    def _reader_options(self, fmt):
        located = fmt in ("duie", "cmeie", "webnlg")  # entity strings placed in the text
        return {"skip_unlocatable": True} if located and self.skip_unlocatable else {}

    def _check_labelled(self, record, path):
        if "triples" not in record:  # a canonical NER record
            raise DataError("not a relation-extraction record (no 'triples')", path=path, line=record["line"],
                            field="triples")

    def _read_split(self):
        if not self.val_file:
            raise DataError("relation extraction needs --data.val_file (the dataset's labelled dev split)",
                            field="data.val_file")
        return self._read_labelled(self.train_file), self._read_labelled(self.val_file)

    def _labels_of(self, train, val):
        predicates = sorted({t["predicate"] for r in train for t in r["triples"]})
        if not predicates:
            raise DataError("no triples in the training records (an unlabelled file cannot train)",
                            path=self.train_file, field="data.train_file")
        self._check_known(val, predicates, self.val_file, "data.val_file")
        return predicates

    def _check_known(self, records, predicates, path, field):
        known, unknown = set(predicates), 0
        for r in records:
            for k, t in enumerate(r["triples"]):
                if t["predicate"] in known:
                    continue
                if self.unknown_predicates == "error":
                    raise DataError(f"predicate {t['predicate']!r} does not occur in the training data "
                                    f"({len(known)} predicates); pass --data.unknown_predicates keep to score "
                                    "it as a miss", path=path, line=r["line"], field=f"triples[{k}].predicate")
                unknown += 1
        if unknown:
            log.warning("%s: %d triples have a predicate unseen in training; they stay gold (counted as missed in F1)",
                        path, unknown)

    def _source_options(self):
        return [self.format, self.skip_unlocatable, self.min_frequency]

    # --------------------------------------------------------------- encoding
    def encode(self, records: List[dict], source, labelled: bool = True) -> List[dict]:
        """Records → [{"windows": [...], "triples", "line", "text"}]; window triples (sh, st, p, oh, ot) use the
        <s>-shifted token positions and predicate ids."""
        tok, n = self.load_tokenizer(), self.max_length - 2
        pred_id = {p: i for i, p in enumerate(self.predicates or [])}
        out, misaligned = [], 0
        for r in records:
            gold = r["triples"] if labelled else []
            known = [t for t in gold if t["predicate"] in pred_id]  # others: unknown_predicates keep (see _labels_of)
            enc = encode_triples(tok, {"text": r["text"], "triples": known}, n, self.stride, errors="report",
                                 where=source)
            misaligned += len(enc.misaligned)
            windows = [{"ids": self.wrap(w.ids), "offsets": w.offsets,
                        "triples": [(sh + 1, st + 1, pred_id[p], oh + 1, ot + 1) for sh, st, p, oh, ot in w.spans]}
                       for w in enc.windows]
            out.append({"windows": windows, "triples": gold, "line": r["line"], "text": r["text"]})
        if misaligned:
            log.warning("%s: %d triples have an entity that is not on token boundaries, or subject and object fit in "
                        "no window together; they are not trained on (and count as missed in F1)", source, misaligned)
        return out

    # ---------------------------------------------------------------- batches
    def collate_windows(self, windows: List[dict], labels: bool = True) -> dict:
        batch = self.collate_inputs(windows)
        if labels:
            targets = gplinker_targets([w["triples"] for w in windows], len(self.predicates))
            batch.update(zip(("entity_labels", "head_labels", "tail_labels"), targets, strict=True))
        return batch


__all__ = ["REDataModule"]
