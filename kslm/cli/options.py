"""Option values and combinations that kslm checks before anything is read or built (kslm.cli calls these).

The typed configs check their own fields (BackboneConfig, OptimConfig, PenaltyConfig, the tasks' and data modules'
__init__). What is left is checked here, each with one line naming the option:

    trainer.*      the Trainer's options that Lightning would refuse deep inside (a traceback), refuse only once
                   training runs (val_check_interval 0: a ZeroDivisionError after the data is read) or accept and
                   misbehave (gradient_clip_val < 0); `accelerator gpu` on a machine without one
    checkpoint.*   the checkpoint callback's (Lightning's own messages, under the option's name)
    subcommand     a predict-only model (NBCE) under fit / validate / test; `kslm predict` with no trained weights
    predictions.path   a directory, or a parent that cannot be written: refused before any generation

`lightning_option_error` turns an error Lightning raises anyway (an option this module does not check) into the
same one line, naming the option its message mentions.
"""

import importlib
import math
import os
import re
from pathlib import Path
from typing import Optional

from kslm.errors import ConfigError

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")


def _devices_ok(v) -> bool:
    if v is None or v == "auto":
        return True
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return v >= 1 or v == -1
    if isinstance(v, str):
        s = v.strip()
        if s == "-1" or (s.isdigit() and int(s) >= 1):
            return True
        parts = [p.strip() for p in s.split(",")]
        return "," in s and all(p.isdigit() for p in parts if p) and any(parts)  # "0,1": device indices
    if isinstance(v, (list, tuple)):
        return bool(v) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v)
    return False


def _int_at_least(v, low, allow_none=True) -> bool:
    if v is None:
        return allow_none
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _fraction_or_count(v, low_fraction_open: bool = False) -> bool:
    """An int count ≥ 0 (≥ 1 for val_check_interval) or a float fraction in [0, 1] ((0, 1] when open)."""
    if v is None:
        return True
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return v >= (1 if low_fraction_open else 0)
    if isinstance(v, float):
        return math.isfinite(v) and (0 < v if low_fraction_open else 0 <= v) and v <= 1
    return True  # a duration string / timedelta / dict: Lightning checks those


def check_trainer(trainer, subcommand: str = "fit") -> None:
    """The Trainer's options (a jsonargparse Namespace or dict)."""
    get = trainer.get
    checks = [
        ("devices", _devices_ok(get("devices", "auto")), "a positive number of devices, -1 (all), a list of device "
                                                          "indices or auto"),
        ("num_nodes", _int_at_least(get("num_nodes", 1), 1, False), "≥ 1"),
        ("max_steps", _int_at_least(get("max_steps", -1), -1, False), "≥ 0, or -1 (no limit)"),
        ("max_epochs", _int_at_least(get("max_epochs"), -1), "≥ 0, or -1 (no limit)"),
        ("min_steps", _int_at_least(get("min_steps"), 0), "≥ 0"),
        ("min_epochs", _int_at_least(get("min_epochs"), 0), "≥ 0"),
        ("accumulate_grad_batches", _int_at_least(get("accumulate_grad_batches", 1), 1, False), "≥ 1"),
        ("check_val_every_n_epoch", _int_at_least(get("check_val_every_n_epoch"), 1), "≥ 1 (or null)"),
        ("log_every_n_steps", _int_at_least(get("log_every_n_steps"), 0), "≥ 0"),
        ("num_sanity_val_steps", _int_at_least(get("num_sanity_val_steps"), -1), "≥ 0, or -1 (all)"),
        ("val_check_interval", _fraction_or_count(get("val_check_interval"), True),
         "a number of batches ≥ 1 or a fraction of an epoch in (0, 1]"),
    ]
    for split in ("train", "val", "test", "predict"):
        key = f"limit_{split}_batches"
        checks.append((key, _fraction_or_count(get(key)), "a number of batches ≥ 0 or a fraction in [0, 1]"))
    clip = get("gradient_clip_val")
    checks.append(("gradient_clip_val", clip is None or (isinstance(clip, (int, float)) and math.isfinite(clip)
                                                          and clip >= 0), "a finite number ≥ 0 (or null)"))
    max_time = get("max_time")
    checks.append(("max_time", not isinstance(max_time, str) or re.fullmatch(r"\d+:\d+:\d+:\d+", max_time.strip()),
                   "a duration DD:HH:MM:SS"))
    for key, ok, what in checks:
        if not ok:
            raise ConfigError(f"trainer.{key} must be {what}, got {get(key)!r}")
    if subcommand == "fit":
        for key in ("max_steps", "max_epochs"):
            if get(key) == 0:
                raise ConfigError(f"trainer.{key} 0: kslm fit would train nothing; give a positive number (or -1)")
    check_accelerator(get("accelerator", "auto"))
    check_strategy(get("strategy", "auto"), get("accelerator", "auto"))


def check_strategy(strategy, accelerator) -> None:
    """Lightning's `fsdp` (FSDP1) needs CUDA GPUs and fails deep inside otherwise: on CPU, point to fsdp2."""
    if not isinstance(strategy, str) or not strategy.lower().startswith("fsdp") or strategy.lower() == "fsdp2":
        return
    import torch

    cpu = str(accelerator).lower() == "cpu" or (str(accelerator).lower() == "auto" and not torch.cuda.is_available())
    if cpu:
        raise ConfigError(f"trainer.strategy {strategy} needs CUDA GPUs (Lightning's FSDPStrategy); on CPU use "
                          "--trainer.strategy fsdp2 (FSDP2 per block, gloo)")


def check_accelerator(accelerator) -> None:
    if not isinstance(accelerator, str):
        return  # an Accelerator instance / class_path: Lightning checks it
    name = accelerator.lower()
    if name not in ACCELERATORS:
        raise ConfigError(f"trainer.accelerator {accelerator!r} is not one of {', '.join(ACCELERATORS)}")
    import torch

    if name in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator {accelerator}: this machine has no usable CUDA GPU "
                          f"(torch {torch.__version__}); use --trainer.accelerator cpu (or auto)")
    if name == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"trainer.accelerator {accelerator}: Apple MPS is not available on this machine; use "
                          "--trainer.accelerator cpu (or auto)")


def model_class(class_path: Optional[str]):
    """The class a config's model.class_path names (None if it cannot be imported: the parser says why)."""
    if not class_path or "." not in str(class_path):
        return None
    module, name = str(class_path).rsplit(".", 1)
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


def check_subcommand(subcommand: str, cfg, ckpt_given: bool) -> None:
    """A predict-only model (NBCE) only under `kslm predict`; `kslm predict` with a kslm task needs trained weights
    (--ckpt_path; an LM may also predict from --model.pretrained)."""
    model = cfg.get("model") or {}
    cls = model_class(model.get("class_path"))
    if cls is None:
        return
    name = cls.__name__
    if getattr(cls, "predict_only", False) and subcommand != "predict":
        raise ConfigError(f"kslm {subcommand}: model {name} ({model.get('class_path')}) only predicts; it has no "
                          f"training or evaluation step: run kslm predict")
    from kslm.tasks.base import KslmTask

    if subcommand == "predict" and isinstance(cls, type) and issubclass(cls, KslmTask) and not ckpt_given:
        init = model.get("init_args") or {}
        if getattr(cls, "predicts_from_pretrained", False) and init.get("pretrained"):
            return
        extra = " (or --model.pretrained a kslm LM checkpoint)" if getattr(cls, "predicts_from_pretrained", False) else ""
        raise ConfigError(f"kslm predict needs trained weights: give --ckpt_path checkpoints/NAME/last.ckpt{extra}; "
                          f"without it {name} would predict from its random initial weights (field 'ckpt_path')")


def check_seed(seed) -> None:
    if seed is None or isinstance(seed, bool):
        return
    if not (isinstance(seed, int) and 0 <= seed < 2**32):
        raise ConfigError(f"seed_everything must be a whole number in [0, 2^32) (or true / false), got {seed!r}")


def check_fit(cfg, fresh: bool) -> None:
    """Combinations that matter for `kslm fit`: a monitored metric the task logs; for a fresh run (not a resumed
    one: a checkpoint's recorded settings are not re-judged) a schedule that reaches its peak."""
    trainer = cfg.get("trainer") or {}
    if trainer.get("limit_train_batches") in (0, 0.0):
        raise ConfigError("trainer.limit_train_batches 0: kslm fit would train nothing")
    model = cfg.get("model") or {}
    monitor = (cfg.get("checkpoint") or {}).get("monitor")
    metrics = getattr(model_class(model.get("class_path")), "logged_metrics", None)
    if monitor and metrics and monitor not in metrics and not str(monitor).startswith("lr-"):
        raise ConfigError(f"checkpoint.monitor {monitor!r} is not a metric this task logs (one of: {', '.join(metrics)})")
    init = model.get("init_args") or {}
    optim = init.get("optim") or {}
    if str(trainer.get("strategy")).lower() == "fsdp2":
        check_fsdp2_options((init.get("penalty") or {}).get("kind"))
    warmup, total = optim.get("warmup_steps"), optim.get("total_steps")
    if fresh and isinstance(warmup, int) and isinstance(total, int) and total > 0 and warmup > total:
        raise ConfigError(f"model.optim.warmup_steps {warmup} exceeds model.optim.total_steps {total}: the learning "
                          "rate would never reach its peak")


def check_fsdp2_options(penalty_kind) -> None:
    """What `--trainer.strategy fsdp2` cannot train yet, refused before any rank starts (every optimiser trains and
    resumes there; a gradient penalty does not)."""
    if penalty_kind not in (None, "none"):
        raise ConfigError(f"model.penalty.kind {penalty_kind} with trainer.strategy fsdp2: a gradient penalty "
                          "differentiates the loss twice, and FSDP2 reduces and frees each block's gathered weights in the "
                          "first backward; use --trainer.strategy ddp, or --model.penalty.kind none")


def check_output_path(path, option: str = "predictions.path") -> None:
    """An output file kslm will write (atomically): not a directory, its folder a writable directory (or one that
    can be created) — checked before any work starts."""
    if not path:
        return
    p = Path(path).expanduser()
    if str(path).endswith(("/", os.sep)) or p.is_dir():
        raise ConfigError(f"{option} {path}: is a directory; give a file name (e.g. {p / 'predictions.jsonl'})")
    parent = p.parent
    while not parent.exists():  # the writer creates missing folders: the nearest existing one must be writable
        if parent.parent == parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{option} {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: cannot write in {parent} (permission denied)")


def named_option(message: str, cfg) -> Optional[str]:
    """The first trainer.* / checkpoint.* / predictions.* option a message mentions (by its key), if any."""
    words = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", message)
    for section in ("trainer", "checkpoint", "predictions"):
        keys = set((cfg.get(section) or {}).keys()) if cfg is not None else set()
        for w in words:
            if w in keys:
                return f"{section}.{w}"
    return None


def lightning_option_error(exc: BaseException, cfg) -> ConfigError:
    """An error Lightning raised for an option value → one line under the option's name (the first trainer.* or
    checkpoint.* key its message mentions)."""
    message = re.sub(r"\s+", " ", str(exc)).strip()
    option = named_option(message, cfg)
    return ConfigError(f"{option or 'trainer options'}: {message}")


__all__ = ["check_fit", "check_seed", "check_trainer", "named_option", "check_accelerator", "check_subcommand",
           "check_output_path", "lightning_option_error", "model_class", "check_strategy"]
