"""Grouped, typed optimisation options: OptimConfig (optimiser, its options, learning rate and schedule) and
PenaltyConfig (the gradient penalty), validated when built so a bad value fails before anything runs, and
`build(module, cfg, …) -> (optimizer, scheduler)`, which owns every optimiser's special case (Amos's ξ, the
Amos-AdamW recipe's D(t) schedule). Pure torch."""

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Dict, Literal, Optional, Tuple

import torch
from torch import nn

from kslm.errors import ConfigError
from kslm.optim.amos_adamw import AmosDecay
from kslm.optim.optimizers import OPTIMIZERS, OPTIONS, build_optimizer
from kslm.optim.schedules import warmup_decay

SCHEDULE_OPTIONS = {"amos_adamw": ("decay", "p", "half_life")}  # options of the schedule, not of the optimiser


@dataclass(frozen=True)
class OptimConfig:
    """The optimiser and its learning-rate schedule.

    Args:
        name: adamw, amos (Amos; its ξ is options.xi, default 1/√(batches per epoch)), amos_adamw (Su's Amos-derived
            AdamW recipe; lr = α₀, its D(t) replaces `schedule`) or eg_adamw (AdamW with exponentiated-gradient
            step-size gains). See kslm/optim and docs/reference.md.
        lr: peak learning rate (amos_adamw: the relative step size α₀; not used by amos).
        weight_decay: decoupled weight decay on matrices (norms, biases, embeddings exempt); adamw / eg_adamw.
        betas: Adam's (β1, β2).
        warmup_steps: linear warmup steps.
        schedule: decay after warmup: cosine, linear or constant.
        min_lr_ratio: final LR as a fraction of the peak (cosine / linear).
        total_steps: decay horizon; empty = the trainer's estimated number of steps.
        options: the optimiser's own options, e.g. {"xi": 0.05, "momentum": 0.9} (amos),
            {"decay": "inverse_time", "half_life": 1000, "decay_gains": false} (amos_adamw),
            {"gain_lr": 0.01, "scale_lr": 0.01} (eg_adamw); kslm.optim.OPTIONS lists them.
    """

    name: Literal["adamw", "amos", "amos_adamw", "eg_adamw"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: Tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 100
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.1
    total_steps: Optional[int] = None
    options: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "betas", tuple(self.betas))
        object.__setattr__(self, "options", dict(self.options or {}))
        if self.name not in OPTIMIZERS:
            raise ConfigError(f"model.optim.name: unknown optimizer {self.name!r} (one of: {', '.join(OPTIMIZERS)})")
        unknown = sorted(set(self.options) - set(OPTIONS[self.name]))
        if unknown:
            raise ConfigError(f"model.optim.options: unknown {self.name} options {unknown} "
                                   f"(known: {', '.join(OPTIONS[self.name])})")
        checks = [
            ("lr", math.isfinite(self.lr) and self.lr >= 0, "must be a finite number ≥ 0"),
            ("weight_decay", math.isfinite(self.weight_decay) and self.weight_decay >= 0, "must be ≥ 0"),
            ("betas", len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "must be two numbers in [0, 1)"),
            ("warmup_steps", self.warmup_steps >= 0, "must be ≥ 0"),
            ("min_lr_ratio", 0 < self.min_lr_ratio <= 1, "must be in (0, 1]"),
            ("total_steps", self.total_steps is None or self.total_steps > 0, "must be > 0 (or empty)"),
        ]
        for key, ok, what in checks:
            if not ok:
                raise ConfigError(f"model.optim.{key} {what}, got {getattr(self, key)!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "OptimConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class PenaltyConfig:
    """A gradient penalty added to the training loss (logged as train/penalty).

    Args:
        kind: none, input (ε/2·‖∂L/∂e‖² at the embedding output, by double backward; kexue.fm/archives/7234) or
            parameter (ε/2·‖∇θL‖², its gradient by one extra forward/backward; kexue.fm/archives/8796).
        weight: ε.
        step: r of the parameter penalty's finite difference θ + r·g/‖g‖.
    """

    kind: Literal["none", "input", "parameter"] = "none"
    weight: float = 1.0
    step: float = 1e-3

    def __post_init__(self):
        if self.kind not in ("none", "input", "parameter"):
            raise ConfigError(f"model.penalty.kind: unknown penalty {self.kind!r} (none | input | parameter)")
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ConfigError(f"model.penalty.weight must be a finite number ≥ 0, got {self.weight!r}")
        if not (math.isfinite(self.step) and self.step > 0):
            raise ConfigError(f"model.penalty.step must be a finite number > 0, got {self.step!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PenaltyConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def build(module: nn.Module, cfg: OptimConfig, total_steps: int,
          batches_per_epoch: Optional[Callable[[], int]] = None) -> Tuple[torch.optim.Optimizer, Any]:
    """The optimiser over `module`'s parameters and its per-step LR scheduler.

    total_steps: the schedule's horizon (cfg.total_steps, else the trainer's estimate).
    batches_per_epoch: N of Amos's default ξ = 1/√N (independent training batches; jestimator's choice), asked
        only when amos runs without options.xi.
    """
    total = int(cfg.total_steps or total_steps)
    options = dict(cfg.options)
    schedule_options = {k: options.pop(k) for k in SCHEDULE_OPTIONS.get(cfg.name, ()) if k in options}
    lr = cfg.lr
    if cfg.name == "amos":
        xi = options.pop("xi", None)
        lr = xi or 1 / math.sqrt(max(batches_per_epoch() if batches_per_epoch else total, 1))
    try:
        opt = build_optimizer(cfg.name, module, lr=lr, weight_decay=cfg.weight_decay, betas=cfg.betas, **options)
        if cfg.name == "amos_adamw":
            decay = AmosDecay(lr, schedule_options.get("decay", "inverse_time"), schedule_options.get("p"),
                              schedule_options.get("half_life") or total, cfg.warmup_steps)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, decay)
        else:
            sched = warmup_decay(opt, cfg.warmup_steps, total, cfg.schedule, cfg.min_lr_ratio)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model.optim.options: {exc}") from exc
    return opt, sched


__all__ = ["OptimConfig", "PenaltyConfig", "build"]
