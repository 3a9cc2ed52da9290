"""What every kslm task shares: the optimiser/scheduler choice, the backbone built from the connected tokenizer, and
a checkpoint whose payload (kslm.checkpoint.Payload) carries the task, its settings, the backbone config and the
tokenizer (so nothing else is needed to reuse it).

Data flows one way: the CLI (kslm.cli.connect) hands the task its tokenizer, labels, the checkpoint payload its weights
will come from, and the data settings to record (`connect`); the task never reads the Trainer's data module."""

import logging
import math
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Dict, Literal, Optional, Tuple

import lightning.pytorch as pl
import torch
from tokenizers import Tokenizer

from kslm.checkpoint import TASK_CHECKS, Checkpoint, Payload, check_shapes, forget, meta_shapes, open_checkpoint, payload_of, store
from kslm.data.tokenizer import fingerprint
from kslm.errors import CheckpointError, ConfigError
from kslm.nn import Backbone, BackboneConfig
from kslm.nn.attention import KERNELS
from kslm.optim import OptimConfig, PenaltyConfig, build
from kslm.optim.gradient_penalty import double_backward_attention, input_gradient_penalty, parameter_penalty_gradients
from kslm.tasks.last_validation import LastValidation
from kslm.tasks.random_state import every_rank, own_random_state, random_state, rng_state, set_rng_state

log = logging.getLogger(__name__)


class KslmTask(LastValidation, pl.LightningModule):
    """Base LightningModule: holds `self.backbone` (built lazily from the connected tokenizer) and the optimiser.

    Args:
        backbone: the backbone's shape and techniques (see BackboneConfig).
        optim: the optimiser, its options and the learning-rate schedule (see kslm.optim.OptimConfig).
        penalty: the gradient penalty (see kslm.optim.PenaltyConfig).
        pretrained: a kslm LM checkpoint to start from: its backbone config (the mask excepted: the task's
            backbone.mask and dropout apply), weights and tokenizer. Unlike `--ckpt_path` (resume), the optimiser,
            schedule and step start afresh. Only read when training starts from scratch.
        hf_path: a local Hugging Face encoder directory (BERT, RoFormer, …; extra `hf`) used as the backbone
            instead of a kslm one, with its own tokenizer (tokenizer.json or vocab.txt).
        compile: torch.compile each residual sub-layer of the backbone in place (an HF encoder as a whole); the
            first steps pay the compilation (docs/scale.md, "GPU training"). Same losses, up to fp32 rounding order.
        checkpointing: activation checkpointing per residual sub-layer (non-reentrant torch.utils.checkpoint):
            activations are recomputed in the backward; less memory for about one more forward's compute.
        attention_kernel: auto (linear_memory on CUDA, dense elsewhere), dense (SDPA as it is; GAU's unequal q/k
            and value sizes and relu² keep the full T × T scores) or linear_memory (never the T × T scores: values
            split into q/k-sized heads for SDPA's fused kernels, relu² in checkpointed query chunks).
    """

    # how the task runs, not what it is: kept out of the checkpoint's settings (the command line decides)
    runtime_options: Tuple[str, ...] = ("compile", "checkpointing", "attention_kernel")
    weight_options: Tuple[str, ...] = ("backbone", "pretrained", "hf_path")  # shape the weights: --ckpt_path fixes them
    # what the task logs (checkpoint.monitor must be one of them, or lr-*)
    logged_metrics: Tuple[str, ...] = ("train/loss", "train/penalty", "val/loss", "test/loss", "train/tokens_per_sec",
                                       "train/flops_per_sec", "train/mfu")

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        TASK_CHECKS[cls.__name__] = cls.check_checkpoint  # kslm.checkpoint.open_checkpoint runs it

    def __init__(self, backbone: BackboneConfig = BackboneConfig(), optim: OptimConfig = OptimConfig(),
                 penalty: PenaltyConfig = PenaltyConfig(), pretrained: Optional[str] = None,
                 hf_path: Optional[str] = None, compile: bool = False, checkpointing: bool = False,
                 attention_kernel: Literal["auto", "dense", "linear_memory"] = "auto"):
        super().__init__()
        # run-time options (generation settings) stay out of the hyper-parameters, so that a checkpoint's
        # values do not override the command line of `kslm predict --ckpt_path …`; the typed configs are kept as
        # dicts (a checkpoint must load with weights_only)
        self.save_hyperparameters(ignore=["backbone", "optim", "penalty", *self.runtime_options])
        self.hparams.update(backbone=backbone.to_dict(), optim=optim.to_dict(), penalty=penalty.to_dict())
        self.backbone_config, self.optim_config, self.penalty_config = backbone, optim, penalty
        if pretrained and hf_path:
            raise ConfigError("give model.pretrained (a kslm checkpoint) or model.hf_path (an HF encoder), not both")
        if attention_kernel not in KERNELS:
            raise ConfigError(f"model.attention_kernel must be one of {', '.join(KERNELS)}, got {attention_kernel!r}")
        if hf_path and attention_kernel != "auto":
            raise ConfigError("model.attention_kernel is an option of kslm backbones, not of model.hf_path encoders")
        self.execution = {"compile": bool(compile), "checkpointing": bool(checkpointing), "attention_kernel": attention_kernel}
        self.backbone: Optional[Backbone] = None
        self.hf_config: Optional[dict] = None
        self.tokenizer: Optional[Tokenizer] = None
        self._payload: Optional[Payload] = None  # the checkpoint the weights will come from (--ckpt_path)
        self.data_settings: Dict[str, Any] = {}
        self._pending_rng: Optional[dict] = None  # {"cpu": state, "cuda": state?} of this rank
        self._tokens_per_batch = None

    # ----------------------------------------------------------- connection
    def connect(self, tokenizer: Tokenizer, labels: Optional[list] = None, payload: Optional[Payload] = None,
                data_settings: Optional[Dict[str, Any]] = None, pretrained=None) -> None:
        """What the CLI resolved for model and data alike: the tokenizer, the label set (extraction tasks), the
        payload of `--ckpt_path` (the backbone is then built from it, before Lightning restores the weights), the
        data settings the checkpoint records for `kslm predict` without a config, and `--model.pretrained` as read
        (kslm.hf.reader.Pretrained: the backbone starts from it)."""
        self.tokenizer, self._payload, self._pretrained = tokenizer, payload, pretrained
        self.data_settings = dict(data_settings or {})

    def settings(self) -> Dict[str, Any]:
        """The task's init arguments as a checkpoint records them (run-time options apart; the typed configs as
        dicts; the backbone with its vocabulary size resolved once built)."""
        return {k: v for k, v in self.hparams.items() if not k.startswith("_") and k not in self.runtime_options}

    @property
    def hparams_initial(self):
        """What Lightning logs as the run's hyper-parameters (TensorBoard's hparams.yaml): the task's settings as the
        checkpoint records them, backbone, optim and penalty included (save_hyperparameters' copy lacks them)."""
        from lightning.fabric.utilities.data import AttributeDict

        return AttributeDict(self.settings())

    @classmethod
    def init_args(cls, settings: Dict[str, Any]) -> Dict[str, Any]:
        """Constructor arguments from recorded settings (the typed configs rebuilt from their dicts)."""
        args = dict(settings)
        for key, config in (("backbone", BackboneConfig), ("optim", OptimConfig), ("penalty", PenaltyConfig)):
            if isinstance(args.get(key), dict):
                args[key] = config.from_dict(args[key])
        return args

    @classmethod
    def check_checkpoint(cls, ckpt: Checkpoint) -> None:
        """Before anything is allocated: the payload's settings and head options are this task's, and the stored
        weights are exactly those of the model the payload describes — built on the meta device, so a checkpoint
        claiming a larger model than it holds is one line, not an allocation of its claimed size."""
        payload = ckpt.payload  # (its settings and head options already checked against the task's: kslm.checkpoint.schema)
        if payload.task != cls.__name__:
            raise CheckpointError(f"{ckpt.path}: a {payload.task} checkpoint cannot be loaded into {cls.__name__}")
        settings = payload.settings or ({"backbone": payload.backbone} if payload.backbone else {})
        try:
            with torch.device("meta"):
                model = cls(**cls.init_args(settings))
                model.connect(payload.load_tokenizer(), payload.labels, payload, payload.data)
                model.build_from_payload(payload)
        except CheckpointError:
            raise
        except (ConfigError, ValueError, TypeError, KeyError, AttributeError) as exc:  # settings the task refuses
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise CheckpointError(f"{ckpt.path}: invalid checkpoint payload: the model it describes cannot be built "
                                  f"({detail})") from None
        check_shapes(meta_shapes(model), ckpt.state_dict, ckpt.path, field_name=None)  # (the caller names the field)

    @classmethod
    def check_runtime_options(cls, options: Dict[str, Any]) -> None:
        unknown = sorted(set(options) - set(cls.runtime_options))
        if unknown:
            raise ConfigError(f"{unknown[0]}: not a run-time option of {cls.__name__} (those are "
                              f"{', '.join(cls.runtime_options)}; the rest is fixed by the checkpoint)")

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, **options):
        """The task of a kslm checkpoint, outside a Trainer: settings, tokenizer, labels and architecture from its
        payload (kslm.checkpoint), weights from its state dict (weights_only loading, shapes checked before anything
        is allocated). `options`: the task's run-time options (e.g. max_new_tokens, temperature for an LM)."""
        ckpt = open_checkpoint(checkpoint_path)  # (which ran check_checkpoint)
        if ckpt.payload.task != cls.__name__:
            raise CheckpointError(f"{checkpoint_path}: a {ckpt.payload.task} checkpoint cannot be loaded into {cls.__name__}")
        for lightning_only in ("weights_only", "strict", "hparams_file"):  # (Lightning's loader's: kslm's loading is
            options.pop(lightning_only, None)  # always weights_only and strict, and the payload holds the settings)
        cls.check_runtime_options(options)
        payload = ckpt.payload
        settings = payload.settings or ({"backbone": payload.backbone} if payload.backbone else {})
        model = cls(**cls.init_args(settings), **options)
        model.connect(payload.load_tokenizer(), payload.labels, payload, payload.data)
        model.build_from_payload(payload)
        model.load_state_dict(ckpt.state_dict)
        forget(ckpt)  # the weights are in the model: the file's dict (optimiser state and all) is not kept
        return model.to(map_location) if map_location is not None else model

    def payload_extras(self) -> Dict[str, Any]:
        """Payload fields a task adds (labels, head options)."""
        return {}

    # ------------------------------------------------------------ building
    def build(self, tokenizer: Tokenizer, cfg: Optional[BackboneConfig] = None, hf_config: Optional[dict] = None,
              hf_weights: Optional[str] = None) -> None:
        """The backbone for `tokenizer`: a kslm Backbone from `cfg`, or an HF encoder — its architecture from
        `hf_config` (weights to come from a kslm checkpoint) or its pretrained weights from the directory `hf_weights`.
        Tasks extend this to build their heads (of width `self.hidden_size`)."""
        self.tokenizer = tokenizer
        if hf_config is not None or hf_weights is not None:
            from kslm.hf.encoder import HFEncoder

            self.backbone = HFEncoder.from_pretrained(hf_weights) if hf_weights else HFEncoder.from_config(hf_config)
            self.hf_config = self.backbone.config_dict
            self._set_execution()
            return
        cfg = cfg or self.backbone_config
        vocab = tokenizer.get_vocab_size()
        if cfg.vocab_size not in (None, vocab):
            raise ConfigError(f"backbone.vocab_size {cfg.vocab_size} does not match the tokenizer's {vocab}")
        self.backbone_config = replace(cfg, vocab_size=vocab)
        self.hparams["backbone"] = self.backbone_config.to_dict()  # a resumed run rebuilds exactly this
        self.hf_config, self.backbone = None, Backbone(self.backbone_config)
        self._set_execution()

    def _set_execution(self) -> None:
        """compile / checkpointing / attention_kernel on the backbone just built (before any sharding)."""
        run = self.execution
        if self.hf_config is None:
            self.backbone.set_execution(**run)
            return
        if run["checkpointing"]:
            self.backbone.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if run["compile"]:
            self.backbone.compile()

    @property
    def hidden_size(self) -> int:
        return self.backbone.hidden_size if self.hf_config is not None else self.backbone_config.d_model

    def configure_model(self):
        if self.backbone is not None or not _attached(self):
            return  # outside a Trainer (load_from_checkpoint) on_load_checkpoint builds it from the checkpoint
        if self.tokenizer is None:
            raise ConfigError("the model has no tokenizer: run it through the kslm CLI, or call model.connect(tokenizer)")
        hp = self.hparams
        if self._payload is not None:  # weights from --ckpt_path: its architecture (Lightning restores after this hook)
            self.build_from_payload(self._payload)
        elif hp.hf_path:
            self.build(self.tokenizer, hf_weights=hp.hf_path)
        elif hp.pretrained:
            self.init_from_pretrained(self.tokenizer, getattr(self, "_pretrained", None) or hp.pretrained)
            self._pretrained = None  # (its weights are in the model now)
        else:
            self.build(self.tokenizer)
        self._shard()

    def _shard(self) -> None:
        """Under a strategy with a device mesh (`--trainer.strategy fsdp2`): FSDP2 units per block (kslm.tasks.fsdp)."""
        mesh = getattr(self, "_device_mesh", None)
        if mesh is None:
            return
        from kslm.tasks.fsdp import mixed_precision, shard

        dp = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
        units = shard(self, dp, mixed_precision(dp.device_type, str(self.trainer.precision)))
        log.info("FSDP2: %d units sharded over %d ranks", units, dp.size())

    def build_from_payload(self, payload: Payload) -> None:
        if payload.hf_config is not None:
            self.build(self.tokenizer, hf_config=payload.hf_config)
        else:
            self.build(self.tokenizer, payload.backbone_config())

    def init_from_pretrained(self, tokenizer: Tokenizer, source) -> None:
        """Backbone config, weights and tokenizer from a kslm LM checkpoint or a `kslm export` directory (a path, or
        the kslm.hf.reader.Pretrained connect read); the task keeps its mask and dropout."""
        from kslm.hf.reader import open_pretrained

        opened = source if hasattr(source, "state") else open_pretrained(source)
        path, cfg, state, ckpt_tok = opened.path, opened.config, opened.state, opened.tokenizer
        if fingerprint(ckpt_tok) != fingerprint(tokenizer):
            raise CheckpointError(f"{path}: the pretrained checkpoint's tokenizer differs from the data's tokenizer "
                                  "(field 'data.tokenizer'; leave it empty to use the checkpoint's)")
        own = self.backbone_config
        self.build(ckpt_tok, replace(cfg, mask=own.mask, dropout=own.dropout))
        missing, unexpected = self.backbone.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{path}: backbone weights do not fit (missing {missing[:3]}, unexpected {unexpected[:3]})")
        log.info("initialised the backbone from %s (%s)", path, self.backbone_config.to_dict())

    # ---------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint):
        hf = self.hf_config is not None
        store(checkpoint, Payload(task=type(self).__name__, tokenizer=self.tokenizer.to_str(),
                                  backbone=None if hf else self.backbone_config.to_dict(), hf_config=self.hf_config,
                                  settings=self.settings(), data=self.data_settings, rng=torch.get_rng_state(),
                                  rngs=every_rank(random_state()), **self.payload_extras()))
        # the payload is the one record of the task's settings: Lightning's copy would be applied over the command
        # line by LightningCLI (whatever the task) and needs the class importable to load
        checkpoint.pop("hyper_parameters", None)
        checkpoint.pop("hparams_name", None)
        self.save_validation(checkpoint)  # the run's latest validation metrics, for `kslm export`'s model card

    def on_load_checkpoint(self, checkpoint):
        payload = payload_of(checkpoint)
        self.load_validation(checkpoint)
        if payload.task != type(self).__name__:
            raise CheckpointError(f"a {payload.task} checkpoint cannot be loaded into {type(self).__name__}")
        tok = payload.load_tokenizer()
        if self.tokenizer is not None and fingerprint(tok) != fingerprint(self.tokenizer):
            raise CheckpointError("the checkpoint's tokenizer differs from the data's tokenizer; "
                                  "leave --data.tokenizer empty to use the checkpoint's")
        if self.backbone is None:  # load_from_checkpoint: nothing was connected
            self.tokenizer = tok
            self.data_settings = dict(payload.data)
            self.build_from_payload(payload)
        elif payload.backbone is not None and (self.hf_config is not None or
                                               payload.backbone_config() != self.backbone_config):
            raise CheckpointError("the checkpoint's backbone differs from the configured one; resume with the "
                                  "configuration the checkpoint was trained with")
        elif payload.hf_config is not None:
            from kslm.hf.encoder import same_architecture

            if self.hf_config is None or not same_architecture(self.hf_config, payload.hf_config):
                raise CheckpointError("the checkpoint's Hugging Face encoder differs from the configured one")
        self._check_weights(checkpoint)
        # dropout's RNG (this rank's): restored just before the next training batch, so that nothing Lightning does
        # between restoring and training (sanity validation, setting up loaders) can draw from it
        rank, world = (self.global_rank, self.trainer.world_size) if _attached(self) else (0, 1)
        self._pending_rng = own_random_state(payload, rank, world)

    def _check_weights(self, checkpoint) -> None:
        """The checkpoint's weights must be those of the model its payload describes (Lightning's strict loading
        would end in a traceback). Checked where the module holds whole tensors (one device, DDP)."""
        from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

        if not _attached(self) or not isinstance(self.trainer.strategy, (SingleDeviceStrategy, DDPStrategy)):
            return
        state, own = checkpoint.get("state_dict") or {}, self.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
        if missing or unexpected or shapes:
            where = f"{self.trainer.ckpt_path}: " if self.trainer.ckpt_path else ""
            raise CheckpointError(f"{where}the checkpoint's weights do not fit the model its payload describes (missing "
                                  f"{missing[:3]}, unexpected {unexpected[:3]}, other shapes {shapes[:3]}) "
                                  "(field 'ckpt_path')")

    def on_train_batch_start(self, batch, batch_idx):
        if self._pending_rng is not None:
            torch.set_rng_state(self._pending_rng["cpu"])
            if self._pending_rng.get("cuda") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state(self._pending_rng["cuda"])
            self._pending_rng = None

    # ------------------------------------------------------------- training
    def compute_loss(self, batch) -> torch.Tensor:
        """The training loss of one batch (no logging); every task implements it. It must give the same value
        when called twice with the same RNG state (the parameter penalty evaluates it twice)."""
        raise NotImplementedError

    def training_step(self, batch, batch_idx):
        """compute_loss + the chosen gradient penalty; train/loss and train/penalty are logged separately."""
        if isinstance(batch, dict) and "input_ids" in batch:
            self._tokens_per_batch = tuple(batch["input_ids"].shape)  # for flops_per_batch
        size = batch["input_ids"].shape[0] if isinstance(batch, dict) and "input_ids" in batch else None
        kind, weight = self.penalty_config.kind, self.penalty_config.weight
        if kind == "input":
            with self._capture_embedding() as embedded, double_backward_attention():
                loss = self.compute_loss(batch)
            penalty = input_gradient_penalty(loss, embedded[0], weight)
            out = loss + penalty
        elif kind == "parameter":
            rng = rng_state()
            loss = self.compute_loss(batch)
            params = [p for p in self.parameters() if p.requires_grad]

            def recompute():
                set_rng_state(rng)  # the same dropout masks as the first pass
                return self.compute_loss(batch)

            grads, penalty = parameter_penalty_gradients(loss, params, recompute, weight, self.penalty_config.step)
            # a surrogate whose value is the loss and whose gradient is ∇L + ε·H∇L
            linear = sum((p * g.detach()).sum() for p, g in zip(params, grads, strict=True))
            out = loss.detach() + linear - linear.detach()
        else:
            loss = out = self.compute_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        if kind != "none":
            self.log("train/penalty", penalty, batch_size=size)
        return out

    @contextmanager
    def _capture_embedding(self):
        """Yields a list that holds the embedding output of the forward run inside the block."""
        embed = getattr(self.backbone, "embed", None)
        if embed is None and hasattr(self.backbone, "get_input_embeddings"):
            embed = self.backbone.get_input_embeddings()
        if embed is None:
            raise ConfigError("gradient_penalty input needs a backbone with an embedding layer")
        captured = []
        handle = embed.register_forward_hook(lambda m, i, o: captured.append(o))
        try:
            yield captured
        finally:
            handle.remove()

    # ------------------------------------------------------------ optimiser
    def configure_optimizers(self):
        # the trainer's estimate only when needed: it sets up the training data (a resumed run restores first)
        total = int(self.optim_config.total_steps or self.trainer.estimated_stepping_batches)
        opt, sched = build(self, self.optim_config, total, lambda: _batches_per_epoch(self.trainer, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _attached(module: pl.LightningModule) -> bool:
    """Whether the module runs inside a Trainer (Lightning's `trainer` property raises otherwise)."""
    try:
        return module.trainer is not None
    except RuntimeError:
        return False


def _batches_per_epoch(trainer, fallback: int) -> int:
    """Independent training batches (jestimator's N for ξ = 1/√N): an epoch's batches, else the run's steps."""
    trainer.fit_loop.setup_data()  # what trainer.estimated_stepping_batches does too; a no-op once loaded
    n = trainer.num_training_batches
    return int(n) if n and math.isfinite(n) else max(fallback, 1)
