"""RelationExtraction: GPLinker (kexue.fm/archives/8888) joint entity–relation extraction.

A bidirectional backbone encodes each window (<s> text </s>); `kslm.heads.gplinker.GPLinker` scores every span as
subject / object (entity EGP, 2 heads, RoPE, tril mask) and every (subject head, object head) and (subject tail,
object tail) pair per predicate (head / tail EGPs, one head per predicate, no RoPE, no tril mask). Training minimises

    S(s_h, s_t) + S(o_h, o_t) + S(s_h, o_h | p) + S(s_t, o_t | p)  each with multilabel "softmax + CE"

(sparse MCCE, sum over heads, mean over the batch, summed over the three groups, as bert4keras' GPLinker). A triple
(s_h, s_t, p, o_h, o_t) is predicted iff all four scores are > 0 (kslm.heads.gplinker.decode_triples); its token
spans are mapped back to characters and a record's windows merged (union) by kslm.data.decode.triple_records, and
(subject, predicate, object) strings are scored with exact-match triple F1 per record (as GPLinker's SPO).
"""

import logging
from typing import List, Literal, Optional

import torch

from kslm.data.decode import cap_entities, triple_records
from kslm.errors import ConfigError
from kslm.heads.gplinker import GPLinker, gplinker_loss
from kslm.metrics import TripleF1
from kslm.tasks.extraction import ExtractionTask

log = logging.getLogger(__name__)


class RelationExtraction(ExtractionTask):
    """Relation extraction with GPLinker (see KslmTask for backbone and optimiser options).

    Args:
        head_size: the q/k size d of the three Efficient GlobalPointers.
        loss: sparse (bert4keras' sparse MCCE on label pairs) or dense (the same loss on multi-hot L·L labels).
        predicates: relation types; empty = the training data's predicates (stored in the checkpoint).
        max_entities: decoding keeps at most this many subjects and objects per window (the highest-scoring;
            only a barely trained model predicts more; each capped window is counted in a warning).
    """

    label_key = "predicates"
    label_name = "predicates"
    head_options = ("head_size",)
    runtime_options = (*ExtractionTask.runtime_options, "max_entities")
    weight_options = (*ExtractionTask.weight_options, *head_options, label_key)

    def __init__(self, *args, head_size: int = 64, loss: Literal["sparse", "dense"] = "sparse",
                 predicates: Optional[List[str]] = None, max_entities: int = 32, **kwargs):
        super().__init__(*args, **kwargs)
        if max_entities < 1:
            raise ConfigError(f"model.max_entities must be ≥ 1, got {max_entities}")
        self.max_entities = max_entities
        self.val_f1 = TripleF1()  # until the predicates are known (build)
        self._capped = 0

    @property
    def predicates(self) -> Optional[List[str]]:
        return self.labels

    def build_metric(self):
        return TripleF1(labels=self.predicates)

    def build_head(self):
        return GPLinker(self.hidden_size, len(self.predicates), self.hparams.head_size)

    # ------------------------------------------------------------- forward
    def forward(self, input_ids, attention_mask, span_mask):
        """→ (entity [B, 2, L, L], head [B, P, L, L], tail [B, P, L, L]) fp32, −inf at <s>, </s> and padding."""
        hidden = self.backbone(input_ids, attention_mask)
        return self.head_module(hidden, span_mask)

    def _loss(self, logits, batch):
        labels = (batch["entity_labels"], batch["head_labels"], batch["tail_labels"])
        return gplinker_loss(*logits, *labels, sparse=self.hparams.loss == "sparse")

    def compute_loss(self, batch) -> torch.Tensor:
        return self._loss(self(batch["input_ids"], batch["attention_mask"], batch["span_mask"]), batch)

    # ------------------------------------------------------------ decoding
    def decode(self, logits, batch) -> List[List[dict]]:
        """Logits of a record batch → per record, sorted unique canonical triples with char spans."""
        records, capped = triple_records(logits, batch, self.predicates, self.threshold, self.max_entities)
        self._capped += capped
        return records

    def _warn_capped(self):
        if self._capped:
            log.warning("%d windows predicted more than %d subjects or objects; decoding kept the %d highest-scoring "
                        "(model.max_entities)", self._capped, self.max_entities, self.max_entities)
            self._capped = 0

    def validation_step(self, batch, batch_idx):
        logits = self(batch["input_ids"], batch["attention_mask"], batch["span_mask"])
        self.log(f"{self.eval_stage}/loss", self._loss(logits, batch), batch_size=len(batch["text"]))
        key = lambda triples: [(t["subject"], t["predicate"], t["object"]) for t in triples]  # noqa: E731
        self.val_f1.update([key(p) for p in self.decode(logits, batch)], [key(g) for g in batch["triples"]])

    test_step = validation_step

    def on_validation_epoch_end(self):
        self._warn_capped()
        super().on_validation_epoch_end()

    def on_test_epoch_end(self):
        self._warn_capped()
        super().on_test_epoch_end()

    def predict_step(self, batch, batch_idx):
        logits = self(batch["input_ids"], batch["attention_mask"], batch["span_mask"])
        return [{"line": line, "text": text, "triples": triples}
                for line, text, triples in zip(batch["line"], batch["text"], self.decode(logits, batch), strict=True)]

    def on_predict_epoch_end(self):
        self._warn_capped()


__all__ = ["RelationExtraction", "cap_entities"]
