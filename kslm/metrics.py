"""Exact-match set F1 metrics for extraction tasks: entity spans (NER / GlobalPointer) and relation triples (GPLinker).

Each sample's predictions and gold items are compared as sets (duplicates within a sample count once), and three
counters are accumulated: true positives, predicted items, gold items. The counters are `add_state` sums, so under DDP
torchmetrics sums them across ranks before `compute()`, and the synced value equals the single-process value on the
union of all ranks' samples (an F1 averaged over ranks would not).

    precision = tp / pred,   recall = tp / gold,   f1 = 2·tp / (pred + gold)   (each 0 when its denominator is 0)

The last is the harmonic mean of precision and recall whenever both are defined.
"""

from collections.abc import Hashable, Iterable, Sequence

import torch
from torchmetrics import Metric


def _scalar(x):
    """A tensor element as a Python number (tensors hash by identity); anything else unchanged."""
    return x.item() if isinstance(x, torch.Tensor) else x


def _span(x) -> tuple:
    """(start, end) as a tuple of ints."""
    start, end = x
    return int(_scalar(start)), int(_scalar(end))


class _SetF1(Metric):
    """Micro precision / recall / F1 of per-sample item sets; subclasses define `_key` (item → hashable)."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for name in ("tp", "n_pred", "n_gold"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _key(self, item) -> Hashable:
        raise NotImplementedError

    def update(self, preds: Sequence[Iterable], targets: Sequence[Iterable]) -> None:
        """preds, targets: one iterable of items per sample (same number of samples, else ValueError)."""
        tp = n_pred = n_gold = 0
        for p, g in zip(preds, targets, strict=True):
            p, g = {self._key(x) for x in p}, {self._key(x) for x in g}
            tp, n_pred, n_gold = tp + len(p & g), n_pred + len(p), n_gold + len(g)
        self.tp += tp
        self.n_pred += n_pred
        self.n_gold += n_gold

    def compute(self) -> dict[str, torch.Tensor]:
        """{"precision", "recall", "f1"} as float tensors; 0 (not NaN) when a denominator is 0."""
        tp = self.tp.double()
        return {
            "precision": (tp / self.n_pred.clamp(min=1)).float(),
            "recall": (tp / self.n_gold.clamp(min=1)).float(),
            "f1": (2 * tp / (self.n_pred + self.n_gold).clamp(min=1)).float(),
        }


class SpanF1(_SetF1):
    """Exact-match span F1: items are (start, end, type); nested and overlapping spans are distinct items.

    Counts are summed across ranks, so DDP-synced values equal single-process values on all ranks' samples."""

    def _key(self, item) -> Hashable:
        start, end, label = item
        return (*_span((start, end)), _scalar(label))


class TripleF1(_SetF1):
    """Exact-match relation-triple F1: items are (subject, predicate, object) strings, or with `with_spans=True`
    (subject, predicate, object, subject_span, object_span) with spans (start, end), all five of which must match.

    Counts are summed across ranks, so DDP-synced values equal single-process values on all ranks' samples."""

    def __init__(self, with_spans: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.with_spans = with_spans

    def _key(self, item) -> Hashable:
        item = tuple(item)
        if len(item) != (5 if self.with_spans else 3):
            form = "(subject, predicate, object, subject_span, object_span)" if self.with_spans else "(subject, predicate, object)"
            raise ValueError(f"TripleF1(with_spans={self.with_spans}) expects {form}, got {item!r}")
        s, p, o = (_scalar(x) for x in item[:3])
        return (s, p, o, _span(item[3]), _span(item[4])) if self.with_spans else (s, p, o)
