"""KslmCLI: the only entry point — `kslm fit|validate|test|predict --config configs/….yaml [--key value …]`."""

import logging
import os
import re
import signal
import sys
import traceback
import warnings
from pathlib import Path
from typing import Optional

from jsonargparse import ArgumentError, Namespace
from lightning.pytorch.callbacks import ModelSummary, ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

# kslm's tasks and data modules, imported so that jsonargparse knows them as subclasses of LightningModule /
# LightningDataModule: short names work (`--model LanguageModel`, `--data.help NERDataModule`) and `--help` lists them
import kslm.data.lm  # noqa: F401
import kslm.data.nbce  # noqa: F401
import kslm.data.ner  # noqa: F401
import kslm.data.re  # noqa: F401
import kslm.tasks.lm  # noqa: F401
import kslm.tasks.nbce  # noqa: F401
import kslm.tasks.ner  # noqa: F401
import kslm.tasks.re  # noqa: F401
from kslm.argv import (
    LIGHTNING_CKPT_NAMES,
    check_config_files,
    check_nulls,
    checkpoint_config_args,
    checkpoint_model_config,
    given_model_options,
    nested_nulls,
    refuse_sharded,
)
from kslm.callbacks import JsonlPredictionWriter, KslmCheckpoint, RunConfig, SharedLearningRate, TokenThroughput
from kslm.checkpoint import check_restorable, consolidate, is_sharded, open_checkpoint, task_name
from kslm.connect import connect
from kslm.errors import CheckpointError, ConfigError, KslmError
from kslm.io import Terminated, sigterm_raises
from kslm.options import (
    check_fit,
    check_output_path,
    check_seed,
    check_subcommand,
    check_trainer,
    lightning_option_error,
    named_option,
)
from kslm.progress import hide_adverts, progress_bar
from kslm.runs import next_version, resumed_version
from kslm.strategy import FSDP2Strategy
from kslm.suggest import explain_parse_error

_RUN: dict = {}  # the running command's subcommand and config (for the SIGTERM handler and error messages)


class KslmCLI(LightningCLI):
    def parse_arguments(self, parser, args):
        """Parse; then, for a --ckpt_path, read kslm's payload (a one-line error for any unreadable file), refuse
        another task's checkpoint and apply the checkpoint's task settings (its hyper-parameters: Lightning's own
        copy is not written, kslm.checkpoint owns them)."""
        argv = []
        if isinstance(args, (dict, Namespace)):
            super().parse_arguments(parser, args)
        else:
            argv = list(sys.argv[1:] if args is None else args)
            check_config_files(argv)
            argv_nulls, nulls = nested_nulls(checkpoint_config_args(argv))
            try:
                self.config = parser.parse_args(argv_nulls)
            except ArgumentError as exc:  # a misspelt option, value or class: one line with the closest spelling
                line = explain_parse_error(exc, parser, getattr(self, "_subcommand_parsers", {}), argv)
                if line is None:
                    raise
                raise ConfigError(line) from None
        sub = self.config.get("subcommand")
        cfg = self.config[sub] if sub else None
        if argv:
            check_nulls(cfg, nulls)
        if cfg is not None:
            check_seed(cfg.get("seed_everything"))  # LightningCLI seeds right after parsing
            if sub == "predict":  # before the checkpoint is read
                check_output_path((cfg.get("predictions") or {}).get("path"))
        ckpt = self._ckpt_file(cfg) if cfg is not None else None
        if ckpt is None:
            return
        refuse_sharded(ckpt, sub, (cfg.get("trainer") or {}).get("strategy"))
        opened = open_checkpoint(ckpt, "ckpt_path")
        payload = opened.payload
        configured = task_name((cfg.get("model") or {}).get("class_path", ""))
        if configured != payload.task:
            raise CheckpointError(f"{ckpt}: a {payload.task} checkpoint cannot be used with a {configured} config "
                                  "(field 'ckpt_path')")
        check_restorable(opened.raw, ckpt, resume=sub == "fit")
        configured = (cfg.get("model") or {}).get("init_args") or Namespace()
        model = checkpoint_model_config(payload, given_model_options(argv), configured, sub, ckpt)
        self.config = parser.parse_object({sub: {"model": model}}, self.config)

    def _ckpt_file(self, cfg) -> Optional[str]:
        """ckpt_path as a file: 'last' is this config's last.ckpt, if there is one."""
        ckpt = cfg.get("ckpt_path")
        if ckpt is None:
            return None
        if not str(ckpt).strip():
            raise CheckpointError("--ckpt_path is empty: give a checkpoint file, or leave the option out "
                                  "(field 'ckpt_path')")
        if ckpt == "last":  # the latest run's last checkpoint: the link kslm.runs keeps, or an explicit dirpath's file
            last = Path(cfg.checkpoint.get("latest_link") or Path(cfg.checkpoint.get("dirpath") or
                                                                     Path("checkpoints") / self._config_name(cfg)) / "last.ckpt")
            if last.is_file() or is_sharded(last):
                return str(last)
            if self.config.get("subcommand") != "fit":  # fit starts afresh; the others would use untrained weights
                raise CheckpointError(f"{last}: checkpoint not found (--ckpt_path last: no last.ckpt in "
                                      f"{last.parent}; give the checkpoint file) (field 'ckpt_path')")
            return None
        if ckpt == "best":  # Lightning knows the best checkpoint only within the process that trained
            raise CheckpointError("--ckpt_path best names the best checkpoint of a fit in the same process; give the "
                                  "checkpoint file (e.g. checkpoints/NAME/last.ckpt) (field 'ckpt_path')")
        if ckpt in LIGHTNING_CKPT_NAMES:  # hpc, registry: SLURM's and Lightning's model registry, not kslm's
            raise CheckpointError(f"--ckpt_path {ckpt}: kslm resumes from checkpoint files; give one (e.g. "
                                  "checkpoints/NAME/last.ckpt, or last) (field 'ckpt_path')")
        return str(ckpt)

    def add_arguments_to_parser(self, parser):
        parser.add_lightning_class_args(KslmCheckpoint, "checkpoint")
        # dirpath null: the run's own folder checkpoints/<config>/version_N (before_instantiate_classes)
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.dirpath": None,
                             "checkpoint.enable_version_counter": False})
        if "PL_GLOBAL_SEED" not in os.environ:  # a config without seed_everything (predict from a checkpoint): seed 0,
            parser.set_defaults({"seed_everything": 0})  # as Lightning's `true` gives, without its "No seed found"
        parser.add_lightning_class_args(JsonlPredictionWriter, "predictions")

    def _config_name(self, cfg) -> str:
        configs = cfg.get("config") or []
        return Path(str(configs[-1])).stem if configs else "default"

    def before_instantiate_classes(self):
        sub = self.subcommand
        cfg = self.config[sub] if sub else self.config
        _RUN.update(subcommand=sub, config=cfg)
        self._check_options(sub, cfg)
        hide_adverts()
        name = self._config_name(cfg)
        version = self._run_folder(sub, cfg, name)
        if cfg.trainer.get("logger") in (None, True):  # predict logs nothing: no empty TensorBoard version
            cfg.trainer.logger = False if sub == "predict" else {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": "logs", "name": name, "version": version, "default_hp_metric": False}}
        callbacks = list(cfg.trainer.get("callbacks") or [])
        if sub == "fit":  # learning rate and tokens/s in TensorBoard, unless the config lists its own
            for kinds, cls, args in ((("LearningRateMonitor", "LearningRate"), SharedLearningRate, {"logging_interval": "step"}),
                                     (("TokenThroughput",), TokenThroughput, {})):
                if not any(str(getattr(c, "class_path", "")).endswith(kinds) for c in callbacks):
                    callbacks.append({"class_path": f"{cls.__module__}.{cls.__name__}", "init_args": args})
            if cfg.trainer.get("enable_model_summary") is not False and not _listed(callbacks, ModelSummary):
                callbacks.append({"class_path": "kslm.progress.ParameterSummary"})  # one line, no "Total FLOPs: 0"
                cfg.trainer.enable_model_summary = False  # (else Lightning adds its table too)
        cfg.trainer.callbacks = callbacks
        if sub == "predict" and not (cfg.get("predictions") or {}).get("path"):
            cfg.trainer.enable_progress_bar = False  # the JSONL goes to standard output: the bar would be mixed in
        if cfg.trainer.get("enable_progress_bar") is not False and not _listed(callbacks, ProgressBar):
            # chosen per run (a bar on a terminal, lines in a log), so kept out of the saved config.yaml
            self.trainer_defaults["callbacks"] = [progress_bar()]

    def _run_folder(self, sub, cfg, name) -> Optional[int]:
        """`kslm fit` without --checkpoint.dirpath: the run's checkpoints go to checkpoints/<config>/version_N beside
        logs/<config>/version_N (kslm.runs), and checkpoints/<config>/last.ckpt links to its last.ckpt. N is new, or
        the resumed run's own when --ckpt_path is a run's last.ckpt. Returns N (None: TensorBoard picks the version).
        --ckpt_path last becomes the file it names, so that Lightning does not look for it in the new folder."""
        if sub == "fit" and cfg.get("ckpt_path") == "last":
            cfg.ckpt_path = self._ckpt_file(cfg)
        if cfg.checkpoint.dirpath:
            return None
        base = Path("checkpoints") / name
        if sub != "fit":
            cfg.checkpoint.dirpath = str(base)
            return None
        version = resumed_version(cfg.get("ckpt_path"), base)
        if version is None:
            version = next_version(Path("logs") / name, base)
        cfg.checkpoint.dirpath = str(base / f"version_{version}")
        cfg.checkpoint.latest_link = str(base / "last.ckpt")
        return version

    def _check_options(self, sub, cfg):
        """Option values and combinations, before any class is built or any data read (kslm.options)."""
        ckpt = cfg.get("ckpt_path")
        if sub == "predict" and ckpt == "last" and self._ckpt_file(cfg) is None:
            last = Path(cfg.checkpoint.get("dirpath") or Path("checkpoints") / self._config_name(cfg)) / "last.ckpt"
            raise ConfigError(f"ckpt_path last: there is no {last} to predict with")
        check_subcommand(sub, cfg, bool(ckpt))
        check_trainer(cfg.trainer, sub)
        if sub == "fit":
            check_fit(cfg, fresh=not ckpt)
        if sub == "predict":
            check_output_path((cfg.get("predictions") or {}).get("path"))

    def instantiate_trainer(self, **kwargs):
        """Lightning's Trainer; a value it refuses (one kslm.options does not check) becomes one line naming it."""
        try:
            return super().instantiate_trainer(**kwargs)
        except (MisconfigurationException, ValueError, TypeError) as exc:
            raise lightning_option_error(exc, self.config[self.subcommand]) from None

    def _connect(self):
        """Resolve tokenizer, labels and window once, and hand them to model and data (kslm.connect)."""
        cfg = self.config[self.subcommand]
        connect(self.model, self.datamodule, self._ckpt_file(cfg), self.subcommand)

    before_fit = before_validate = before_test = before_predict = _connect

    def after_fit(self):
        """Under fsdp2: rank 0 consolidates the sharded last.ckpt into one checkpoint file beside it."""
        trainer = self.trainer
        if not isinstance(trainer.strategy, FSDP2Strategy):
            return
        trainer.strategy.barrier()
        last = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else ""
        if trainer.global_rank == 0 and last and is_sharded(last):
            out = consolidate(last)
            print(f"kslm: consolidated the sharded {last} into {out}", file=sys.stderr)

    def after_predict(self):
        for cb in self.trainer.callbacks:
            if isinstance(cb, JsonlPredictionWriter):
                cb.finish(self.trainer)


def _listed(callbacks, base) -> bool:
    """Whether the configured callbacks (class_path entries or instances) hold a subclass of `base`."""
    import importlib

    for c in callbacks:
        if isinstance(c, base):
            return True
        module, _, cls = str(getattr(c, "class_path", "") or "").rpartition(".")
        try:
            if module and issubclass(getattr(importlib.import_module(module), cls), base):
                return True
        except (ImportError, AttributeError, TypeError):
            continue
    return False


def _one_line(message: str) -> str:
    return re.sub(r"\s+", " ", message).strip()


def _kslm_cause(exc: BaseException):
    """The KslmError behind `exc`, if any (jsonargparse wraps errors raised while instantiating classes)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KslmError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _parse_error_line(message: str) -> str:
    """jsonargparse nests errors of subclass-mode arguments ('Parser key "model": … Parser key "backbone.norm":
    Expected …'); keep the innermost complaint, under its full dotted key."""
    message = _one_line(message)
    if "arguments are required" in message and ".model" in message:
        return message + " (give a config: kslm fit --config configs/lm/gau.yaml)"
    keys = re.findall(r'Parser key "([^"]+)"', message)
    last = message.rfind("Parser key")
    if len(keys) < 2 or last < 0:
        return message
    detail = message[last:].split(":", 1)[1]
    detail = re.split(r" - Expected a <class 'NoneType'>| Given value type:", detail)[0].strip()
    return f"{'.'.join(keys)}: {detail}"


def _rank_failure_line(exc: BaseException) -> Optional[str]:
    """A collective that failed because another DDP rank died (gloo / NCCL: connection closed, reset, timed out) →
    one line naming this rank and the lost one; None for any other error."""
    import torch.distributed as dist

    if not (isinstance(exc, RuntimeError) and dist.is_available() and dist.is_initialized()):
        return None
    text = str(exc)
    if not (isinstance(exc, getattr(dist, "DistError", ())) or
            re.search(r"gloo|nccl|connection (closed|reset)|closed by peer|broken pipe|timed out", text, re.I)):
        return None
    rank, world = dist.get_rank(), dist.get_world_size()
    lost = f"rank {1 - rank}" if world == 2 else "another rank"
    detail = re.sub(r"^\[[^\]]*\]\s*", "", text.strip().splitlines()[0] if text.strip() else type(exc).__name__)
    detail = detail.split(". This is typically")[0]
    return (f"DDP rank {rank} of {world}: {lost} stopped (killed or failed: see its own output), so this rank stops "
            f"too ({_one_line(detail)[:200]})")


def _lightning_cause(exc: BaseException, cfg):
    """Lightning's refusal of an option value behind `exc`: a MisconfigurationException, or a ValueError /
    TypeError raised inside Lightning whose message names a trainer / checkpoint option (e.g. val_check_interval
    above the number of training batches, found only once training starts)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, MisconfigurationException):
            return exc
        if isinstance(exc, (ValueError, TypeError)) and exc.__traceback__ is not None:
            frames = traceback.extract_tb(exc.__traceback__)
            if frames and f"{os.sep}lightning{os.sep}" in frames[-1].filename and named_option(str(exc), cfg):
                return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def consolidate_main(argv) -> None:
    """`kslm consolidate SHARDED_DIR [OUT]`: a sharded (fsdp2) checkpoint folder → one kslm checkpoint file."""
    import argparse

    ap = argparse.ArgumentParser(prog="kslm consolidate", description=consolidate_main.__doc__)
    ap.add_argument("checkpoint", help="a sharded checkpoint folder (e.g. checkpoints/NAME/last.ckpt under fsdp2)")
    ap.add_argument("out", nargs="?", help="the file to write (default: CHECKPOINT's name with .consolidated.ckpt)")
    args = ap.parse_args(argv)
    print(f"kslm: wrote {consolidate(args.checkpoint, args.out)}", file=sys.stderr)


def _parsing_safety() -> None:
    """jsonargparse's import safety where this version has it: a `class_path` inside a value typed Any (e.g.
    model.optim.options) stays a plain dict, never an instance (its import denylist of os, subprocess, … is on by
    default). Configs still name classes: they are code (SECURITY.md); checkpoints never reach the parser with one."""
    from jsonargparse import set_parsing_settings

    try:
        set_parsing_settings(instantiate_subclass_spec_in_any=False)
    except TypeError:  # a jsonargparse before the setting existed
        pass


def main(args=None):
    """`kslm …`: a user mistake is one line `kslm: error: …` and exit code 2; a DDP rank that loses another rank
    says so in one line and exits 1; SIGTERM / Ctrl-C stop with exit 143 / 130 and leave no temporary file."""
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)  # "Seed set to …" is noise
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # lightning's own deprecation noise on torch 2.13
    _RUN.clear()
    _parsing_safety()
    argv = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else None
    try:
        if argv and argv[0] == "score":  # kslm's own verb: no Trainer
            from kslm.score import main as score_main

            return score_main(argv[1:])
        if argv and argv[0] == "export":  # kslm's own verb: no Trainer
            from kslm.export.cli import main as export_main

            return export_main(argv[1:])
        if argv and argv[0] == "consolidate":
            return consolidate_main(argv[1:])
        if argv and argv[0] == "serve":  # kslm's own verb: LitServe over kslm.inference, no Trainer
            try:
                from kslm.serve import main as serve_main
            except ImportError as exc:
                raise ConfigError(f"kslm serve needs the optional extra: pip install 'kslm[serve]' ({exc})") from None

            return serve_main(argv[1:])
        # SIGTERM stops kslm at once (writers clean up), except inside fit's training loop: Lightning's own handler
        # (which calls this one too) stops there at the next batch boundary, so a checkpoint write is never cut
        with sigterm_raises(defer_when_wrapped=lambda: _RUN.get("subcommand") == "fit"):
            KslmCLI(
                subclass_mode_model=True,
                subclass_mode_data=True,
                save_config_callback=RunConfig,
                save_config_kwargs={"overwrite": True},
                parser_kwargs={"exit_on_error": False, "allow_abbrev": False},
                args=args,
            )
    except (SIGTERMException, Terminated):  # (SIGTERMException: Lightning stopped fit at a batch boundary)
        print("kslm: stopped by SIGTERM", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
    except KeyboardInterrupt:
        print("kslm: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        cause, line = _kslm_cause(exc), _rank_failure_line(exc)
        if line is not None:
            print(f"kslm: error: {line}", file=sys.stderr)
            sys.exit(1)
        if cause is not None:
            print(f"kslm: error: {_one_line(str(cause))}", file=sys.stderr)
        elif isinstance(exc, ArgumentError):
            print(f"kslm: error: {_parse_error_line(str(exc))}", file=sys.stderr)
        elif _lightning_cause(exc, _RUN.get("config")) is not None:
            cfg = _RUN.get("config")
            print(f"kslm: error: {_one_line(str(lightning_option_error(_lightning_cause(exc, cfg), cfg)))}",
                  file=sys.stderr)
        else:
            raise
        sys.exit(2)


if __name__ == "__main__":
    main()
