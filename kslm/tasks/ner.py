"""EntityExtraction: GlobalPointer (kexue.fm/archives/8373) / Efficient GlobalPointer (archives/8877) NER.

A bidirectional backbone encodes each window (<s> text </s>); the head scores every span (i, j) for every type;
the loss is the dense multilabel "softmax + CE" over the flattened [B·types, L·L] logits (−inf = masked), mean over
batch × types (TECHNIQUES §8.4). Spans with score > 0 are entities; they are mapped back to characters through the
windows' offsets (nested and overlapping entities included) and scored with exact-match span F1 per record.
"""

from typing import List, Literal, Optional

from kslm.errors import CheckpointError, ConfigError
from kslm.heads.global_pointer import EfficientGlobalPointer, GlobalPointer
from kslm.losses import multilabel_categorical_crossentropy
from kslm.metrics import SpanF1
from kslm.tasks.base import KslmTask


class EntityExtraction(KslmTask):
    """Named-entity recognition with a GlobalPointer head (see KslmTask for backbone and optimiser options).

    Args:
        head: gp (GlobalPointer, one q/k pair per type) or egp (Efficient GlobalPointer, shared q/k + per-type bias).
        head_size: the head's q/k size d.
        types: entity types; empty = the training data's types (stored in the checkpoint).
    """

    def __init__(self, *args, head: Literal["gp", "egp"] = "egp", head_size: int = 64,
                 types: Optional[List[str]] = None, **kwargs):
        super().__init__(*args, **kwargs)
        if self.backbone_config.mask != "bidirectional":
            raise ConfigError(f"entity extraction needs backbone.mask bidirectional, got {self.backbone_config.mask!r}")
        self.types = list(types) if types else None
        self.head_module = None
        self.threshold = 0.0
        self.val_f1 = SpanF1()
        self._tokens_per_batch = None

    # ------------------------------------------------------------ building
    def build(self, tokenizer, cfg=None) -> None:
        super().build(tokenizer, cfg)
        if not self.types:
            raise ConfigError("entity types unknown: give --model.types or training data")
        cls = GlobalPointer if self.hparams.head == "gp" else EfficientGlobalPointer
        self.head_module = cls(self.backbone_config.d_model, len(self.types), self.hparams.head_size)
        self.hparams["types"] = list(self.types)

    def configure_model(self):
        if self.backbone is None and self._trainer is not None:
            dm_types = getattr(self.trainer.datamodule, "types", None)
            if dm_types:
                if self.types and list(self.types) != list(dm_types):
                    raise ConfigError(f"model.types {self.types} differ from the data's types {dm_types}")
                self.types = list(dm_types)
        super().configure_model()

    def on_save_checkpoint(self, checkpoint):
        super().on_save_checkpoint(checkpoint)
        checkpoint["kslm"].update(types=list(self.types), head=self.hparams.head, head_size=self.hparams.head_size)

    def on_load_checkpoint(self, checkpoint):
        types = (checkpoint.get("kslm") or {}).get("types")
        if not types:
            raise CheckpointError("not an entity-extraction checkpoint (no entity types inside)")
        if self.head_module is not None and list(self.types) != list(types):
            raise CheckpointError(f"the checkpoint's entity types {types} differ from the data's {self.types}")
        self.types = list(types)
        head = {k: checkpoint["kslm"].get(k, self.hparams[k]) for k in ("head", "head_size")}
        if self.head_module is None or any(self.hparams[k] != v for k, v in head.items()):
            self.hparams.update(head)  # the checkpoint's head, whatever the config says
            self.backbone = None  # let the base class build backbone and head from the checkpoint
        super().on_load_checkpoint(checkpoint)

    # ------------------------------------------------------------- forward
    def forward(self, input_ids, attention_mask, span_mask):
        hidden = self.backbone(input_ids, attention_mask)
        return self.head_module(hidden, span_mask)  # [B, types, L, L] fp32, −inf outside valid spans

    def loss(self, logits, labels):
        B, K, L, _ = logits.shape  # one MCCE row per (sample, type) over its L·L spans
        per_row = multilabel_categorical_crossentropy(y_true=labels.reshape(B * K, L * L),
                                                      y_pred=logits.reshape(B * K, L * L))
        return per_row.mean()

    def compute_loss(self, batch):
        self._tokens_per_batch = batch["input_ids"].shape
        return self.loss(self(batch["input_ids"], batch["attention_mask"], batch["span_mask"]), batch["labels"])

    @property
    def flops_per_batch(self) -> Optional[float]:
        """Analytic backbone FLOPs of the latest training batch (the head's are not counted)."""
        if self.backbone is None or self._tokens_per_batch is None:
            return None
        B, T = self._tokens_per_batch
        return self.backbone.flops_per_token(T) * B * T

    # ------------------------------------------------------------ decoding
    def decode(self, logits, batch) -> List[List[dict]]:
        """Spans with logit > threshold → per record, sorted unique char entities {start, end (exclusive), type}."""
        found = [dict() for _ in batch["text"]]
        hits = (logits > self.threshold).nonzero().tolist()  # (window, type, i, j), i ≤ j, inside the text
        for w, t, i, j in hits:
            offs = batch["offsets"][w]
            s, e = offs[i - 1][0], offs[j - 1][1]
            found[batch["record"][w]][(s, e, self.types[t])] = None
        return [[{"start": s, "end": e, "type": t} for s, e, t in sorted(f)] for f in found]

    def validation_step(self, batch, batch_idx):
        logits = self(batch["input_ids"], batch["attention_mask"], batch["span_mask"])
        loss = self.loss(logits, batch["labels"])
        self.log("val/loss", loss, batch_size=logits.shape[0])
        preds = self.decode(logits, batch)
        key = lambda ents: [(e["start"], e["end"], e["type"]) for e in ents]  # noqa: E731
        self.val_f1.update([key(p) for p in preds], [key(g) for g in batch["entities"]])

    def on_validation_epoch_end(self):
        m = self.val_f1.compute()
        self.val_f1.reset()
        self.log_dict({"val/precision": m["precision"], "val/recall": m["recall"]}, sync_dist=True)
        self.log("val/f1", m["f1"], prog_bar=True, sync_dist=True)

    test_step = validation_step

    def on_test_epoch_end(self):
        m = self.val_f1.compute()
        self.val_f1.reset()
        self.log_dict({f"test/{k}": v for k, v in m.items()}, sync_dist=True)

    def predict_step(self, batch, batch_idx):
        logits = self(batch["input_ids"], batch["attention_mask"], batch["span_mask"])
        out = []
        for line, text, ents in zip(batch["line"], batch["text"], self.decode(logits, batch), strict=True):
            out.append({"line": line, "text": text,
                        "entities": [{**e, "text": text[e["start"]:e["end"]]} for e in ents]})
        return out


__all__ = ["EntityExtraction"]
