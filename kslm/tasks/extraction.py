"""What the extraction tasks (EntityExtraction, RelationExtraction) share: a bidirectional backbone with a pointer head
over its hidden states, the label set (entity types / predicates; connected by the CLI from the training data or the
checkpoint) stored in the checkpoint payload with the head's settings (so `--ckpt_path` alone rebuilds the model),
the training step around `compute_loss`, and precision / recall / F1 logged at the end of validation and test."""

import sys
from typing import List, Optional, Tuple

import torch

from kslm.checkpoint import payload_of
from kslm.data.decode import windows_of_records  # noqa: F401  (kept importable from here)
from kslm.data.tokenizer import special_ids
from kslm.errors import CheckpointError, ConfigError
from kslm.metrics import format_report
from kslm.tasks.base import KslmTask


class ExtractionTask(KslmTask):
    """Base of the extraction tasks. Subclasses set `label_key` (their label-list argument, also its checkpoint key),
    `head_options` (hyper-parameters that shape the head, stored in the checkpoint), `self.val_f1` (a kslm.metrics
    set-F1 metric) and implement `build_head`, `compute_loss`.

    Args:
        token_dropout: in training, replace each text token by the unknown token with this probability (word dropout,
            Gal & Ghahramani 2016 §4; Lample et al. 2016 for NER): a char model from scratch otherwise memorises the
            training sentences and misses entities whose context it has not seen. Specials and padding are kept.
    """

    label_key = "labels"
    label_name = "labels"  # in messages
    head_options: Tuple[str, ...] = ("head_size",)
    logged_metrics = (*KslmTask.logged_metrics, "val/precision", "val/recall", "val/f1", "test/precision",
                      "test/recall", "test/f1")

    def __init__(self, *args, token_dropout: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        if not 0.0 <= token_dropout < 1.0:
            raise ConfigError(f"model.token_dropout must be in [0, 1), got {token_dropout}")
        self.token_dropout = token_dropout
        if self.backbone_config.mask != "bidirectional":
            raise ConfigError(f"{type(self).__name__} needs model.backbone.mask bidirectional, got {self.backbone_config.mask!r}")
        head_size = self.hparams.get("head_size")
        if head_size is not None and (head_size <= 0 or head_size % 2):
            raise ConfigError(f"model.head_size must be positive and even (the head's RoPE rotates pairs), got {head_size}")
        labels = self.hparams.get(self.label_key)
        check_labels(labels, f"model.{self.label_key}", self.label_name)
        self.labels: Optional[List[str]] = list(labels) if labels else None
        self.head_module = None
        self.threshold = 0.0
        self._unk_id: Optional[int] = None

    # ------------------------------------------------------------ building
    def build_head(self) -> torch.nn.Module:
        raise NotImplementedError

    def build(self, tokenizer, *args, **kwargs) -> None:
        super().build(tokenizer, *args, **kwargs)
        if not self.labels:
            raise ConfigError(f"{self.label_name} unknown: give --model.{self.label_key} or training data")
        self.head_module = self.build_head()
        if kwargs.get("hf_weights"):
            self._load_exported_head(kwargs["hf_weights"])
        self.val_f1 = self.build_metric()
        self.hparams[self.label_key] = list(self.labels)

    def _load_exported_head(self, path) -> None:
        """`--model.hf_path DIR` of a `kslm export` of this task: its head's weights too, when its labels and head
        options are this run's (otherwise the head starts fresh, as over any encoder)."""
        from kslm.hf.reader import is_export, read_export

        if not is_export(path):
            return
        payload, _, head = read_export(path, "model.hf_path", head_only=True)  # (the encoder's weights: HFEncoder)
        same = payload.task == type(self).__name__ and list(payload.labels or []) == list(self.labels) and \
            all(self.hparams.get(k) == v for k, v in payload.head.items())
        if head and same:
            self.head_module.load_state_dict(head)

    def connect(self, tokenizer, labels=None, payload=None, data_settings=None, pretrained=None) -> None:
        super().connect(tokenizer, labels, payload, data_settings, pretrained)
        if payload is not None:
            labels = payload.labels
            self.hparams.update(payload.head)  # the checkpoint's head, whatever the config says
        if labels:
            if self.labels and list(self.labels) != list(labels):
                raise ConfigError(f"model.{self.label_key} {self.labels} differ from the "
                                  f"{'checkpoint' if payload is not None else 'data'}'s {self.label_name} {list(labels)}")
            self.labels = list(labels)

    def payload_extras(self):
        return {"labels": list(self.labels), "head": {k: self.hparams[k] for k in self.head_options}}

    def on_load_checkpoint(self, checkpoint):
        payload = payload_of(checkpoint)
        if payload.task == type(self).__name__:  # (a wrong task: the base class says so)
            if not payload.labels:
                raise CheckpointError(f"not a {type(self).__name__} checkpoint (no {self.label_name} inside)")
            if self.head_module is not None and list(self.labels) != list(payload.labels):
                raise CheckpointError(f"the checkpoint's {self.label_name} {payload.labels} differ from the data's "
                                      f"{self.labels}")
            if self.head_module is None:
                self.labels = list(payload.labels)
                self.hparams.update(payload.head)
        super().on_load_checkpoint(checkpoint)

    # ------------------------------------------------------------ training
    def training_step(self, batch, batch_idx):
        if self.token_dropout:
            batch = {**batch, "input_ids": self.drop_tokens(batch["input_ids"], batch["attention_mask"])}
        return super().training_step(batch, batch_idx)

    def drop_tokens(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """`ids` with each text token (not <s> </s> <pad> / [CLS] [SEP] [PAD], not padding) replaced by the unknown
        token with probability `token_dropout` (the global torch RNG, so runs and resumes are reproducible)."""
        if self._unk_id is None:
            unk = next((i for i in map(self.tokenizer.token_to_id, ("<unk>", "[UNK]")) if i is not None), None)
            if unk is None:
                raise ConfigError("model.token_dropout needs an unknown token (<unk> or [UNK]) in the tokenizer")
            self._unk_id, self._special = unk, torch.tensor(special_ids(self.tokenizer))
        text = attention_mask.bool() & ~torch.isin(ids, self._special.to(ids.device))
        drop = (torch.rand(ids.shape, device=ids.device, dtype=torch.float32) < self.token_dropout) & text
        return ids.masked_fill(drop, self._unk_id)

    @property
    def flops_per_batch(self) -> Optional[float]:
        """Analytic backbone FLOPs of the latest training batch (the head's are not counted)."""
        if self.backbone is None or self._tokens_per_batch is None:
            return None
        B, T = self._tokens_per_batch
        return self.backbone.flops_per_token(T) * B * T

    # ---------------------------------------------------------- evaluation
    @property
    def eval_stage(self) -> str:
        """The prefix of what validation_step logs: test under `kslm test` (its own split), else val."""
        return "test" if self._trainer is not None and self._trainer.testing else "val"

    def build_metric(self):
        """The set-F1 metric over this task's labels (per-label and macro scores)."""
        raise NotImplementedError

    def _log_f1(self, stage: str):
        m = self.val_f1.compute()
        self.val_f1.reset()
        self.log_dict({f"{stage}/precision": m["precision"], f"{stage}/recall": m["recall"]}, sync_dist=True)
        self.log(f"{stage}/f1", m["f1"], prog_bar=stage == "val", sync_dist=True)
        if "macro_f1" in m:
            named = {f"{stage}/macro_{k}": m[f"macro_{k}"] for k in ("precision", "recall", "f1")}
            for group in ("per_label", "per_category"):
                for name, v in (m.get(group) or {}).items():
                    if v["support"] or group == "per_label":
                        named.update({f"{stage}/{k}/{name}": v[k] for k in ("precision", "recall", "f1")})
            self.log_dict(named, sync_dist=True)
        if self.trainer.state.fn in ("validate", "test") and self.trainer.is_global_zero:
            categories = m.get("per_category") or {}
            if not categories.get("nested", {}).get("support"):
                m = {k: v for k, v in m.items() if k != "per_category"}  # flat data: no breakdown to show
            print(format_report(m, f"kslm: {stage} scores per {self.label_name[:-1]}"), file=sys.stderr)

    def on_validation_epoch_end(self):
        self._log_f1("val")

    def on_test_epoch_end(self):
        self._log_f1("test")


def check_labels(labels, option: str, name: str) -> None:
    """Labels given on the command line: non-empty strings, each once."""
    seen = set()
    for i, label in enumerate(labels or []):
        if not isinstance(label, str) or not label.strip():
            raise ConfigError(f"{option}[{i}]: empty {name[:-1] if name.endswith('s') else name} name {label!r}")
        if label in seen:
            raise ConfigError(f"{option}[{i}]: {label!r} is listed twice")
        seen.add(label)


__all__ = ["ExtractionTask", "check_labels", "windows_of_records"]
