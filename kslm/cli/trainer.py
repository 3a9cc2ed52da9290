"""The trainer verbs, `kslm fit|validate|test|predict --config configs/….yaml [--key value …]`: KslmCLI (LightningCLI)
and `run`, which kslm.cli (the front door) calls with the command line. `--help-all` is Lightning's full option list
(`kslm VERB --help` is kslm's short one, kslm.cli.help)."""

import logging
import os
import re
import sys
import traceback
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from jsonargparse import ArgumentError, Namespace
from lightning.pytorch.callbacks import ModelSummary, ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import MisconfigurationException

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
from kslm.checkpoint import Checkpoint, check_restorable, consolidate, forget, is_sharded, open_checkpoint, task_name
from kslm.cli import runs
from kslm.cli.argv import (
    LIGHTNING_CKPT_NAMES,
    check_config_files,
    check_nulls,
    checkpoint_config_args,
    checkpoint_model_config,
    given_model_options,
    nested_nulls,
    refuse_sharded,
)
from kslm.cli.callbacks import JsonlPredictionWriter, KslmCheckpoint, RunConfig, SharedLearningRate, TokenThroughput
from kslm.cli.connect import connect
from kslm.cli.help import DESCRIPTIONS
from kslm.cli.options import (
    check_fit,
    check_output_path,
    check_seed,
    check_subcommand,
    check_trainer,
    lightning_option_error,
    named_option,
)
from kslm.cli.progress import hide_adverts, plain_logs, progress_bar, scalars
from kslm.cli.strategy import FSDP2Strategy
from kslm.cli.suggest import explain_parse_error
from kslm.errors import CheckpointError, ConfigError, kslm_cause
from kslm.io import sigterm_raises
from kslm.report import metrics_line


@dataclass
class Command:
    """One trainer command as it runs: what `run` needs after KslmCLI fails or ends (its clean-up, its error line)."""

    subcommand: Optional[str] = None
    config: Any = None  # the subcommand's parsed config
    run: Optional[runs.Run] = None  # its run folders (fit) or log folder (validate / test)
    trainer: Any = None
    checkpoint: Optional[Checkpoint] = field(default=None, repr=False)  # --ckpt_path, opened once (kslm.checkpoint)


class OpenedCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, handed the dict kslm already read (weights_only) and checked for `--ckpt_path`,
    so that the file is read once: Lightning restores from that dict, and later loads read files as before."""

    def __init__(self, checkpoint: Checkpoint):
        super().__init__()
        self._opened = checkpoint

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        opened, self._opened = self._opened, None
        if opened is not None and Path(str(path)).resolve() == opened.path.resolve():
            return opened.raw  # (Lightning restores the optimiser from it: nobody else holds it, see KslmCLI._connect)
        return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)


class KslmCLI(LightningCLI):
    def __init__(self, *args, command: Optional[Command] = None, **kwargs):
        self.command = command if command is not None else Command()
        super().__init__(*args, **kwargs)

    def parse_arguments(self, parser, args):
        """Parse; then open `--ckpt_path` once (kslm.checkpoint.open_checkpoint: read weights_only, payload and
        shapes checked; a one-line error for any unreadable file) and keep it for connect and the Trainer: refuse
        another task's checkpoint and apply the checkpoint's task settings (its hyper-parameters: Lightning's own
        copy is not written, kslm.checkpoint owns them). `ckpt_path` becomes the file it names (`last` resolved)."""
        argv = self._argv = []
        opened = None
        if isinstance(args, (dict, Namespace)):
            super().parse_arguments(parser, args)
        else:
            argv = self._argv = list(sys.argv[1:] if args is None else args)
            check_config_files(argv)
            args_from_ckpt, opened = checkpoint_config_args(argv)
            argv_nulls, nulls = nested_nulls(args_from_ckpt)
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
        if cfg is not None and cfg.get("ckpt_path") is not None:
            cfg.ckpt_path = ckpt  # the file `last` names (fit without one starts afresh): resolved here, once
        if ckpt is None:
            return
        refuse_sharded(ckpt, sub, (cfg.get("trainer") or {}).get("strategy"))
        if opened is None or opened.path != Path(ckpt):
            opened = open_checkpoint(ckpt, "ckpt_path")
        self.command.checkpoint = opened
        payload = opened.payload
        configured = task_name((cfg.get("model") or {}).get("class_path", ""))
        if configured != payload.task:
            raise CheckpointError(f"{ckpt}: a {payload.task} checkpoint cannot be used with a {configured} config "
                                  "(field 'ckpt_path')")
        check_restorable(opened.raw, ckpt, resume=sub == "fit")
        configured = (cfg.get("model") or {}).get("init_args") or Namespace()
        model = checkpoint_model_config(payload, given_model_options(argv), configured, sub, ckpt)
        self.config = parser.parse_object({sub: {"model": model}}, self.config)

    def _parse_ckpt_path(self):
        """Not Lightning's: LightningCLI would read the file a second time for its `hyper_parameters` and parse them
        into the model section (a `class_path` there would make the parser import a module). kslm never writes
        them and never reads them: the model section comes from the validated payload (parse_arguments)."""

    def _ckpt_file(self, cfg) -> Optional[str]:
        """ckpt_path as a file: 'last' is this config's last.ckpt, if there is one."""
        ckpt = cfg.get("ckpt_path")
        if ckpt is None:
            return None
        if not str(ckpt).strip():
            raise CheckpointError("--ckpt_path is empty: give a checkpoint file, or leave the option out "
                                  "(field 'ckpt_path')")
        if ckpt == "last":  # the latest run's last checkpoint: the link kslm.cli.folders keeps, or an explicit dirpath's file
            last = Path(cfg.checkpoint.get("latest_link") or Path(cfg.checkpoint.get("dirpath") or
                                                                     Path("checkpoints") / runs.run_name(cfg)) / "last.ckpt")
            if last.is_file() or is_sharded(last):
                return str(last)
            if self.config.get("subcommand") != "fit":  # fit starts afresh; the others would use untrained weights
                raise CheckpointError(f"{last}: checkpoint not found (--ckpt_path last: no last.ckpt in "
                                      f"{last.parent}: the latest run has saved none yet; give the checkpoint file, "
                                      "e.g. an earlier run's version_N/last.ckpt) (field 'ckpt_path')")
            return None
        if ckpt == "best":  # Lightning knows the best checkpoint only within the process that trained
            raise CheckpointError("--ckpt_path best names the best checkpoint of a fit in the same process; give the "
                                  "checkpoint file (e.g. checkpoints/NAME/last.ckpt) (field 'ckpt_path')")
        if ckpt in LIGHTNING_CKPT_NAMES:  # hpc, registry: SLURM's and Lightning's model registry, not kslm's
            raise CheckpointError(f"--ckpt_path {ckpt}: kslm resumes from checkpoint files; give one (e.g. "
                                  "checkpoints/NAME/last.ckpt, or last) (field 'ckpt_path')")
        return str(ckpt)

    def add_arguments_to_parser(self, parser):
        parser.add_argument("--name", type=Optional[str], default=None,
                            help="The run's name: checkpoints/NAME/version_N, logs/NAME/version_N and the link "
                                 "checkpoints/NAME/last.ckpt (default: the config file's name).")
        parser.add_lightning_class_args(KslmCheckpoint, "checkpoint")
        # dirpath null: the run's own folder checkpoints/<name>/version_N (before_instantiate_classes)
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.dirpath": None,
                             "checkpoint.enable_version_counter": False})
        if "PL_GLOBAL_SEED" not in os.environ:  # a config without seed_everything (predict from a checkpoint): seed 0,
            parser.set_defaults({"seed_everything": 0})  # as Lightning's `true` gives, without its "No seed found"
        parser.add_lightning_class_args(JsonlPredictionWriter, "predictions")

    def before_instantiate_classes(self):
        sub = self.subcommand
        cfg = self.config[sub] if sub else self.config
        self.command.subcommand, self.command.config = sub, cfg
        self._check_options(sub, cfg)
        hide_adverts()
        name = runs.run_name(cfg)
        cfg.name = name  # (in the saved config.yaml: a re-run from it keeps the name)
        run = self.command.run = runs.plan(sub, cfg, name)
        if cfg.trainer.get("logger") in (None, True):  # predict logs nothing: no empty TensorBoard version
            cfg.trainer.logger = False if sub == "predict" else {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": "logs", "name": name, "version": run.version, "default_hp_metric": False}}
        if sub in ("validate", "test") and not any(a.split("=")[0] == "--verbose" for a in self._argv):
            cfg.verbose = False  # kslm prints the results (after_validate): not Lightning's table too
        callbacks = list(cfg.trainer.get("callbacks") or [])
        if sub == "fit":  # learning rate and tokens/s in TensorBoard, unless the config lists its own
            for kinds, cls, args in ((("LearningRateMonitor", "LearningRate"), SharedLearningRate, {"logging_interval": "step"}),
                                     (("TokenThroughput",), TokenThroughput, {})):
                if not any(str(getattr(c, "class_path", "")).endswith(kinds) for c in callbacks):
                    callbacks.append({"class_path": f"{cls.__module__}.{cls.__name__}", "init_args": args})
            if cfg.trainer.get("enable_model_summary") is not False and not _listed(callbacks, ModelSummary):
                callbacks.append({"class_path": "kslm.cli.progress.ParameterSummary"})  # one line, no "Total FLOPs: 0"
                cfg.trainer.enable_model_summary = False  # (else Lightning adds its table too)
        cfg.trainer.callbacks = callbacks
        if sub == "predict" and not (cfg.get("predictions") or {}).get("path"):
            cfg.trainer.enable_progress_bar = False  # the JSONL goes to standard output: the bar would be mixed in
        if cfg.trainer.get("enable_progress_bar") is not False and not _listed(callbacks, ProgressBar):
            # chosen per run (a bar on a terminal, lines in a log), so kept out of the saved config.yaml
            self.trainer_defaults["callbacks"] = [progress_bar()]

    def _check_options(self, sub, cfg):
        """Option values and combinations, before any class is built or any data read (kslm.cli.options)."""
        ckpt = cfg.get("ckpt_path")
        check_subcommand(sub, cfg, bool(ckpt))
        check_trainer(cfg.trainer, sub)
        if sub == "fit":
            check_fit(cfg, fresh=not ckpt)
        if sub == "predict":
            check_output_path((cfg.get("predictions") or {}).get("path"))

    def instantiate_trainer(self, **kwargs):
        """Lightning's Trainer; a value it refuses (one kslm.cli.options does not check) becomes one line naming it."""
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except (MisconfigurationException, ValueError, TypeError) as exc:
            raise lightning_option_error(exc, self.config[self.subcommand]) from None
        self.command.trainer = trainer
        if self.command.run is not None:  # says where the run goes once its data is read (first among the callbacks)
            trainer.callbacks.insert(0, runs.RunStart(self.command.run, self.subcommand, self.config[self.subcommand]))
        opened = self.command.checkpoint
        if opened is not None and not opened.sharded and type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = OpenedCheckpointIO(opened)  # Lightning restores from what kslm read
        return trainer

    def _connect(self):
        """Resolve tokenizer, labels and window once, and hand them to model and data (kslm.cli.connect), with the
        opened --ckpt_path. Then the checkpoint's weights are left to Lightning alone (OpenedCheckpointIO): the
        command keeps its path and payload, and the next opening of the file reads it afresh."""
        opened = self.command.checkpoint
        connect(self.model, self.datamodule, opened, self.subcommand)
        if opened is not None:
            forget(opened)
            self.command.checkpoint = replace(opened, raw={})

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

    def _results(self):
        """validate / test: one line of the stage's metrics (rates in %), after an extraction task's per-label table
        (which holds the macro averages: they are left out of the line)."""
        stage = "test" if self.subcommand == "test" else "val"
        metrics = {k: v for k, v in scalars(self.trainer, stage).items() if "/macro_" not in k}
        if metrics and self.trainer.is_global_zero:
            print(f"kslm: {self.subcommand}: {metrics_line(metrics)}", file=sys.stderr)

    after_validate = after_test = _results

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


def _parse_error_line(message: str) -> str:
    """jsonargparse nests errors of subclass-mode arguments ('Parser key "model": … Parser key "backbone.norm":
    Expected …'); keep the innermost complaint, under its full dotted key."""
    message = re.sub(r"\s+", " ", message).strip()
    if "arguments are required" in message and ".model" in message:
        if "fit.model" in message:
            return message + " (give a config: kslm fit --config configs/lm/gau.yaml)"
        return message + " (give --config CONFIG.yaml, or --ckpt_path FILE: a checkpoint knows its task)"
    keys = re.findall(r'Parser key "([^"]+)"', message)
    last = message.rfind("Parser key")
    if len(keys) < 2 or last < 0:
        return message
    detail = message[last:].split(":", 1)[1]
    detail = re.split(r" - Expected a <class 'NoneType'>| Given value type:", detail)[0].strip()
    return f"{'.'.join(keys)}: {detail}"


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


def lightning_error_line(exc: BaseException, cfg=None) -> Optional[str]:
    """The one line for a parse error (jsonargparse) or a value Lightning refused (`cfg`: the command's config);
    None for anything else."""
    if isinstance(exc, ArgumentError):
        return _parse_error_line(str(exc))
    cause = _lightning_cause(exc, cfg)
    return None if cause is None else re.sub(r"\s+", " ", str(lightning_option_error(cause, cfg))).strip()


def _parsing_safety() -> None:
    """jsonargparse's import safety where this version has it: a `class_path` inside a value typed Any (e.g.
    model.optim.options) stays a plain dict, never an instance (its import denylist of os, subprocess, … is on by
    default). Configs still name classes: they are code (SECURITY.md); checkpoints never reach the parser with one."""
    from jsonargparse import set_parsing_settings

    try:
        set_parsing_settings(instantiate_subclass_spec_in_any=False)
    except TypeError:  # a jsonargparse before the setting existed
        pass


def run(args) -> None:
    """`kslm fit|validate|test|predict …` (`args`: the command line, verb first, or LightningCLI's dict form).
    SIGTERM stops at once (writers clean up), except in fit's training loop, where it stops like Ctrl-C: at the next
    step, after saving (kslm.cli.interrupt). A new fit stopped before its first step leaves no run folder."""
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)  # "Seed set to …" is noise
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # lightning's own deprecation noise on torch 2.13
    command = Command()
    _parsing_safety()
    plain_logs()
    if isinstance(args, list) and "--help-all" in args:
        args = ["--help" if a == "--help-all" else a for a in args]
    try:
        with sigterm_raises(defer_when_wrapped=lambda: command.subcommand == "fit"):
            KslmCLI(
                command=command,
                subclass_mode_model=True,
                subclass_mode_data=True,
                save_config_callback=RunConfig,
                save_config_kwargs={"overwrite": True},
                auto_configure_optimizers=False,  # kslm's optimiser is --model.optim: no --optimizer / --lr_scheduler
                parser_kwargs={"exit_on_error": False, "allow_abbrev": False, "prog": "kslm",
                               "description": "kslm's trainer verbs (kslm --help lists every verb)",
                               **{sub: {"description": text} for sub, text in DESCRIPTIONS.items()}},
                args=args,
            )
    except BaseException as exc:
        if command.subcommand == "fit":
            runs.discard_if_unstarted(command.run, command.trainer)
        line = lightning_error_line(exc, command.config) if isinstance(exc, Exception) and not kslm_cause(exc) else None
        if line is not None:  # a parse error or a value Lightning refused: kslm's one line (exit 2)
            raise ConfigError(line) from None
        raise
