"""What every kslm task shares: the optimiser/scheduler choice, the backbone built from the tokenizer, and
a checkpoint that carries the backbone config and the tokenizer (so nothing else is needed to reuse it)."""

import hashlib
from dataclasses import replace
from typing import Literal, Optional, Tuple

import lightning.pytorch as pl
import torch
from tokenizers import Tokenizer

from kslm.data.tokenizer import fingerprint, tokenizer_from_checkpoint
from kslm.errors import CheckpointError, ConfigError
from kslm.nn import Backbone, BackboneConfig
from kslm.optim import build_optimizer
from kslm.optim.schedules import warmup_decay


def stable_seed(*keys) -> int:
    """A seed from keys that is the same in every process (Python's hash() of str is salted per process)."""
    return int.from_bytes(hashlib.sha256(repr(keys).encode()).digest()[:8], "little") >> 1


class KslmTask(pl.LightningModule):
    """Base LightningModule: holds `self.backbone` (built lazily from the data's tokenizer) and the optimiser.

    Args:
        backbone: the backbone's shape and techniques (see BackboneConfig).
        optimizer: optimiser name: adamw.
        lr: peak learning rate.
        weight_decay: decoupled weight decay on matrices (norms, biases, embeddings exempt).
        betas: Adam's (β1, β2).
        warmup_steps: linear warmup steps.
        scheduler: decay after warmup: cosine, linear or constant.
        min_lr_ratio: final LR as a fraction of the peak (cosine / linear).
        total_steps: decay horizon; empty = the trainer's estimated number of steps.
    """

    runtime_options: Tuple[str, ...] = ()

    def __init__(self, backbone: BackboneConfig = BackboneConfig(), optimizer: Literal["adamw"] = "adamw",
                 lr: float = 1e-3, weight_decay: float = 0.01, betas: Tuple[float, float] = (0.9, 0.98),
                 warmup_steps: int = 100, scheduler: Literal["cosine", "linear", "constant"] = "cosine",
                 min_lr_ratio: float = 0.1, total_steps: Optional[int] = None):
        super().__init__()
        # run-time options (generation settings) stay out of the hyper-parameters, so that a checkpoint's
        # values do not override the command line of `kslm predict --ckpt_path …`
        self.save_hyperparameters(ignore=["backbone", *self.runtime_options])
        self.hparams["backbone"] = backbone.to_dict()
        self.backbone_config = backbone
        self.backbone: Optional[Backbone] = None
        self.tokenizer: Optional[Tokenizer] = None
        self._pending_rng: Optional[torch.Tensor] = None

    # ------------------------------------------------------------ building
    def build(self, tokenizer: Tokenizer, cfg: Optional[BackboneConfig] = None) -> None:
        cfg = cfg or self.backbone_config
        vocab = tokenizer.get_vocab_size()
        if cfg.vocab_size not in (None, vocab):
            raise ConfigError(f"backbone.vocab_size {cfg.vocab_size} does not match the tokenizer's {vocab}")
        self.backbone_config = replace(cfg, vocab_size=vocab)
        self.tokenizer = tokenizer
        self.backbone = Backbone(self.backbone_config)

    def configure_model(self):
        if self.backbone is not None or self._trainer is None:
            return  # outside a Trainer (load_from_checkpoint) on_load_checkpoint builds it from the checkpoint
        dm = self.trainer.datamodule
        if dm is None or not hasattr(dm, "load_tokenizer"):
            raise ConfigError("the model needs a kslm data module (it provides the tokenizer)")
        self.build(dm.load_tokenizer())

    # ---------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint):
        checkpoint["kslm"] = {"backbone": self.backbone_config.to_dict(), "tokenizer": self.tokenizer.to_str(),
                              "rng": torch.get_rng_state()}

    def on_load_checkpoint(self, checkpoint):
        if "kslm" not in checkpoint:
            raise CheckpointError("not a kslm checkpoint (no backbone config and tokenizer inside)")
        tok = tokenizer_from_checkpoint(checkpoint)
        cfg = BackboneConfig.from_dict(checkpoint["kslm"]["backbone"])
        if self.tokenizer is not None and fingerprint(tok) != fingerprint(self.tokenizer):
            raise CheckpointError("the checkpoint's tokenizer differs from the data's tokenizer; "
                                  "pass --data.tokenizer CKPT to use the checkpoint's")
        if self.backbone is None or cfg != self.backbone_config:
            self.build(tok, cfg)
        # dropout's RNG: restored just before the next training batch, so that nothing Lightning does between
        # restoring and training (sanity validation, setting up loaders) can draw from it
        self._pending_rng = checkpoint["kslm"].get("rng")

    def on_train_batch_start(self, batch, batch_idx):
        if self._pending_rng is not None:
            torch.set_rng_state(self._pending_rng)
            self._pending_rng = None

    # ------------------------------------------------------------ optimiser
    def configure_optimizers(self):
        hp = self.hparams
        opt = build_optimizer(hp.optimizer, self, lr=hp.lr, weight_decay=hp.weight_decay, betas=hp.betas)
        total = hp.total_steps or self.trainer.estimated_stepping_batches
        sched = warmup_decay(opt, hp.warmup_steps, int(total), hp.scheduler, hp.min_lr_ratio)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
