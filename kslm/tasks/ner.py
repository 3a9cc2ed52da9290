"""EntityExtraction: GlobalPointer (kexue.fm/archives/8373) / Efficient GlobalPointer (archives/8877) NER.

A bidirectional backbone encodes each window (<s> text </s>); the head scores every span (i, j) for every type;
the loss is the dense multilabel "softmax + CE" over the flattened [B·types, L·L] logits (−inf = masked), mean over
batch × types: L = mean over (b, type) of log(1 + Σ_{neg} e^{s}) + log(1 + Σ_{pos} e^{−s}) (kexue.fm/archives/7359).
Spans with score > 0 are entities; each window's token spans are mapped back to characters and merged over a
record's windows by kslm.data.decode.entity_records (nested and overlapping entities included) and scored with
exact-match span F1 per record.

`loss: bce` is the baseline the MCCE post argues against (kexue.fm/archives/7359): an independent sigmoid
cross-entropy per valid span cell, mean over the valid cells, with the same decision rule (logit > 0 ⇔ p > ½).
"""

from typing import List, Literal, Optional

from torch.nn import functional as F

from kslm.data.decode import entity_records
from kslm.heads.global_pointer import EfficientGlobalPointer, GlobalPointer
from kslm.losses import multilabel_categorical_crossentropy
from kslm.metrics import SpanF1
from kslm.tasks.extraction import ExtractionTask


class EntityExtraction(ExtractionTask):
    """Named-entity recognition with a GlobalPointer head (see KslmTask for backbone and optimiser options).

    Args:
        head: gp (GlobalPointer, one q/k pair per type) or egp (Efficient GlobalPointer, shared q/k + per-type bias).
        head_size: the head's q/k size d.
        types: entity types; empty = the training data's types (stored in the checkpoint).
        loss: mcce (multilabel "softmax + CE", Su's) or bce (per-cell sigmoid cross-entropy, the usual baseline:
            for comparisons; it sees ≈ L²/2 negatives per positive).
    """

    label_key = "types"
    label_name = "entity types"
    head_options = ("head", "head_size")
    weight_options = (*ExtractionTask.weight_options, *head_options, label_key)

    def __init__(self, *args, head: Literal["gp", "egp"] = "egp", head_size: int = 64,
                 types: Optional[List[str]] = None, loss: Literal["mcce", "bce"] = "mcce", **kwargs):
        super().__init__(*args, **kwargs)
        self.val_f1 = SpanF1()  # until the types are known (build)

    def build_metric(self):
        return SpanF1(labels=self.types, nested=True)

    @property
    def types(self) -> Optional[List[str]]:
        return self.labels

    def build_head(self):
        cls = GlobalPointer if self.hparams.head == "gp" else EfficientGlobalPointer
        return cls(self.hidden_size, len(self.types), self.hparams.head_size)

    # ------------------------------------------------------------- forward
    def forward(self, input_ids, attention_mask, span_mask):
        hidden = self.backbone(input_ids, attention_mask)
        return self.head_module(hidden, span_mask)  # [B, types, L, L] fp32, −inf outside valid spans

    def loss(self, logits, labels):
        if self.hparams.loss == "bce":
            valid = logits.isfinite()  # −inf marks cells outside the text or below the diagonal
            return F.binary_cross_entropy_with_logits(logits[valid], labels[valid].to(logits.dtype))
        B, K, L, _ = logits.shape  # one MCCE row per (sample, type) over its L·L spans
        per_row = multilabel_categorical_crossentropy(y_true=labels.reshape(B * K, L * L),
                                                      y_pred=logits.reshape(B * K, L * L))
        return per_row.mean()

    def compute_loss(self, batch):
        logits = self(batch["input_ids"], batch["attention_mask"], batch["span_mask"])
        return self.loss(logits, batch["labels"])

    # ------------------------------------------------------------ decoding
    def decode(self, logits, batch) -> List[List[dict]]:
        """Spans with logit > threshold → per record, sorted unique char entities {start, end (exclusive), type}
        (kslm.data.decode, which the exported KslmForExtraction uses too)."""
        return entity_records(logits, batch, self.types, self.threshold)

    def validation_step(self, batch, batch_idx):
        logits = self(batch["input_ids"], batch["attention_mask"], batch["span_mask"])
        loss = self.loss(logits, batch["labels"])
        self.log(f"{self.eval_stage}/loss", loss, batch_size=logits.shape[0])
        preds = self.decode(logits, batch)
        key = lambda ents: [(e["start"], e["end"], e["type"]) for e in ents]  # noqa: E731
        self.val_f1.update([key(p) for p in preds], [key(g) for g in batch["entities"]])

    test_step = validation_step

    def predict_step(self, batch, batch_idx):
        logits = self(batch["input_ids"], batch["attention_mask"], batch["span_mask"])
        out = []
        for line, text, ents in zip(batch["line"], batch["text"], self.decode(logits, batch), strict=True):
            out.append({"line": line, "text": text,
                        "entities": [{**e, "text": text[e["start"]:e["end"]]} for e in ents]})
        return out


__all__ = ["EntityExtraction"]
