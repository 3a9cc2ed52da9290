"""Exact-match set F1 metrics for extraction tasks: entity spans (NER / GlobalPointer) and relation triples (GPLinker).

Each sample's predictions and gold items are compared as sets (duplicates within a sample count once), and three
counters are accumulated: true positives, predicted items, gold items. The counters are `add_state` sums, so under DDP
torchmetrics sums them across ranks before `compute()`, and the synced value equals the single-process value on the
union of all ranks' samples (an F1 averaged over ranks would not).

    precision = tp / pred,   recall = tp / gold,   f1 = 2·tp / (pred + gold)   (each 0 when its denominator is 0)

The last is the harmonic mean of precision and recall whenever both are defined.

Given the label set (`labels=[…]`: entity types, predicates), the same three counters are also kept per label (sums
of fixed-size tensors, so they sync the same way) and `compute()` adds per-label P/R/F1 with their support (gold
count) and the macro average (the unweighted mean over the labels that occur in gold or predictions, as seqeval's
macro avg). SpanF1(nested=True) adds a flat / nested breakdown (CMeEE): an entity is nested when it contains, or
lies inside, another entity of its own set (gold or predicted); a true positive counts under its gold category, as
a gold and as a predicted item (so per-category precision never exceeds 1), a false positive under its category
among the predictions.
"""

from collections.abc import Hashable, Iterable, Sequence
from typing import Optional

import torch
from torchmetrics import Metric


def _scalar(x):
    """A tensor element as a Python number (tensors hash by identity); anything else unchanged."""
    return x.item() if isinstance(x, torch.Tensor) else x


def _span(x) -> tuple:
    """(start, end) as a tuple of ints."""
    start, end = x
    return int(_scalar(start)), int(_scalar(end))


def prf(tp, n_pred, n_gold) -> dict:
    """precision, recall, F1 from the three counts (tensors or numbers); 0 where a denominator is 0."""
    tp, n_pred, n_gold = (torch.as_tensor(x, dtype=torch.float64) for x in (tp, n_pred, n_gold))
    return {"precision": (tp / n_pred.clamp(min=1)).float(), "recall": (tp / n_gold.clamp(min=1)).float(),
            "f1": (2 * tp / (n_pred + n_gold).clamp(min=1)).float()}


class _SetF1(Metric):
    """Micro (and, given `labels`, per-label and macro) precision / recall / F1 of per-sample item sets; subclasses
    define `_key` (item → hashable) and `_label` (key → its label)."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    categories: tuple = ()  # extra breakdowns (SpanF1 nested: ("flat", "nested"))

    def __init__(self, labels: Optional[Sequence[str]] = None, **kwargs):
        super().__init__(**kwargs)
        self.labels = list(labels) if labels else []
        self._index = {label: i for i, label in enumerate(self.labels)}
        for name in ("tp", "n_pred", "n_gold"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
            self.add_state(f"{name}_by_label", default=torch.zeros(len(self.labels), dtype=torch.long),
                           dist_reduce_fx="sum")
            self.add_state(f"{name}_by_category", default=torch.zeros(len(self.categories), dtype=torch.long),
                           dist_reduce_fx="sum")

    def _key(self, item) -> Hashable:
        raise NotImplementedError

    def _label(self, key) -> Hashable:
        raise NotImplementedError

    def _category(self, key, own: set) -> int:
        raise NotImplementedError

    def _count(self, keys, counter: str, category_set: Optional[set] = None) -> None:
        by_label, by_category = getattr(self, f"{counter}_by_label"), getattr(self, f"{counter}_by_category")
        for k in keys:
            i = self._index.get(self._label(k))
            if i is not None:
                by_label[i] += 1
            if self.categories:
                by_category[self._category(k, category_set)] += 1

    def update(self, preds: Sequence[Iterable], targets: Sequence[Iterable]) -> None:
        """preds, targets: one iterable of items per sample (same number of samples, else ValueError)."""
        tp = n_pred = n_gold = 0
        for p, g in zip(preds, targets, strict=True):
            p, g = {self._key(x) for x in p}, {self._key(x) for x in g}
            tp, n_pred, n_gold = tp + len(p & g), n_pred + len(p), n_gold + len(g)
            if self.labels or self.categories:
                self._count(p & g, "tp", g)
                self._count(p & g, "n_pred", g)  # a hit is a predicted item of its gold category (so tp ≤ predicted)
                self._count(p - g, "n_pred", p)
                self._count(g, "n_gold", g)
        self.tp += tp
        self.n_pred += n_pred
        self.n_gold += n_gold

    def compute(self) -> dict:
        """{"precision", "recall", "f1"} (micro) as float tensors; 0 (not NaN) when a denominator is 0. With labels:
        also "macro_precision", "macro_recall", "macro_f1" and "per_label" {label: {precision, recall, f1, support}};
        with categories: "per_category" the same per category."""
        out = prf(self.tp, self.n_pred, self.n_gold)
        if self.labels:
            per = {label: {**prf(self.tp_by_label[i], self.n_pred_by_label[i], self.n_gold_by_label[i]),
                           "support": int(self.n_gold_by_label[i])} for i, label in enumerate(self.labels)}
            seen = [label for i, label in enumerate(self.labels)
                    if self.n_gold_by_label[i] > 0 or self.n_pred_by_label[i] > 0]
            for m in ("precision", "recall", "f1"):
                out[f"macro_{m}"] = (torch.stack([per[label][m] for label in seen]).mean() if seen
                                     else torch.tensor(0.0))
            out["per_label"] = per
        if self.categories:
            out["per_category"] = {c: {**prf(self.tp_by_category[i], self.n_pred_by_category[i],
                                             self.n_gold_by_category[i]), "support": int(self.n_gold_by_category[i])}
                                   for i, c in enumerate(self.categories)}
        return out


def format_report(res: dict, title: str) -> str:
    """The per-label table (seqeval's classification report), as kslm.report prints it (rates in %, aligned for CJK
    labels)."""
    from kslm.report import format_report as table

    return table(res, title)


def report_json(res: dict) -> dict:
    """compute()'s result with plain floats (for metrics.json)."""
    return {k: (report_json(v) if isinstance(v, dict) else float(v) if isinstance(v, torch.Tensor) else v)
            for k, v in res.items()}


METRICS_KEY = "kslm_metrics"  # a checkpoint's record of its run's latest validation (beside the payload)
MAX_RECORDED = 1000  # metrics a record may hold (a checkpoint may come from a stranger)


def last_validation(callback_metrics) -> dict:
    """The validation metrics (`val/…`) among Lightning's logged values, as plain floats, sorted by name."""
    out = {}
    for name, value in callback_metrics.items():
        if str(name).startswith("val/") and (not isinstance(value, torch.Tensor) or value.numel() == 1):
            out[str(name)] = float(value)
    return dict(sorted(out.items()))


def metrics_record(value, source=None) -> Optional[dict]:
    """A checkpoint's METRICS_KEY entry checked: {"step": int ≥ 0, "metrics": {name: float}} with at most
    MAX_RECORDED names of printable characters; None when absent. With a `source`, a malformed one is a
    CheckpointError naming it; without, it is ignored (None)."""
    from kslm.errors import CheckpointError

    if value is None:
        return None
    metrics = value.get("metrics") if isinstance(value, dict) else None
    ok = (isinstance(value, dict) and set(value) == {"step", "metrics"} and isinstance(value["step"], int)
          and not isinstance(value["step"], bool) and value["step"] >= 0 and isinstance(metrics, dict)
          and len(metrics) <= MAX_RECORDED
          and all(isinstance(k, str) and 0 < len(k) <= 200 and k.isprintable() for k in metrics)
          and all(isinstance(v, float) for v in metrics.values()))
    if ok:
        return value
    if source is None:
        return None
    raise CheckpointError(f"{source}: invalid {METRICS_KEY} entry (expected {{'step': int, 'metrics': {{name: float}}}} "
                          f"with at most {MAX_RECORDED} printable names)")


class SpanF1(_SetF1):
    """Exact-match span F1: items are (start, end, type); nested and overlapping spans are distinct items.
    `labels`: the entity types, for per-type and macro scores; `nested=True`: the flat / nested breakdown.

    Counts are summed across ranks, so DDP-synced values equal single-process values on all ranks' samples."""

    def __init__(self, labels: Optional[Sequence[str]] = None, nested: bool = False, **kwargs):
        self.categories = ("flat", "nested") if nested else ()
        super().__init__(labels, **kwargs)

    def _key(self, item) -> Hashable:
        start, end, label = item
        return (*_span((start, end)), _scalar(label))

    def _label(self, key) -> Hashable:
        return key[2]

    def _category(self, key, own: set) -> int:
        """1 (nested) when another entity of `own` contains this one or lies inside it, else 0 (flat)."""
        s, e = key[0], key[1]
        return int(any((a, b) != (s, e) and ((a <= s and e <= b) or (s <= a and b <= e)) for a, b, _ in own))


class TripleF1(_SetF1):
    """Exact-match relation-triple F1: items are (subject, predicate, object) strings, or with `with_spans=True`
    (subject, predicate, object, subject_span, object_span) with spans (start, end), all five of which must match.
    `labels`: the predicates, for per-predicate and macro scores.

    Counts are summed across ranks, so DDP-synced values equal single-process values on all ranks' samples."""

    def __init__(self, with_spans: bool = False, labels: Optional[Sequence[str]] = None, **kwargs):
        super().__init__(labels, **kwargs)
        self.with_spans = with_spans

    def _label(self, key) -> Hashable:
        return key[1]

    def _key(self, item) -> Hashable:
        item = tuple(item)
        if len(item) != (5 if self.with_spans else 3):
            form = "(subject, predicate, object, subject_span, object_span)" if self.with_spans else "(subject, predicate, object)"
            raise ValueError(f"TripleF1(with_spans={self.with_spans}) expects {form}, got {item!r}")
        s, p, o = (_scalar(x) for x in item[:3])
        return (s, p, o, _span(item[3]), _span(item[4])) if self.with_spans else (s, p, o)
