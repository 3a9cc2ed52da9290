"""KslmCLI: the only entry point — `kslm fit|validate|test|predict --config configs/….yaml [--key value …]`."""

import logging
import re
import sys
import warnings
from pathlib import Path

from jsonargparse import ArgumentError
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningCLI

from kslm.callbacks import JsonlPredictionWriter, KslmCheckpoint, TokenThroughput
from kslm.errors import CheckpointError, KslmError


class KslmCLI(LightningCLI):
    def add_arguments_to_parser(self, parser):
        parser.add_lightning_class_args(KslmCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.dirpath": None,
                             "checkpoint.enable_version_counter": False})  # re-runs overwrite last.ckpt
        parser.add_lightning_class_args(JsonlPredictionWriter, "predictions")

    def _config_name(self, cfg) -> str:
        configs = cfg.get("config") or []
        return Path(str(configs[-1])).stem if configs else "default"

    def before_instantiate_classes(self):
        sub = self.subcommand
        cfg = self.config[sub] if sub else self.config
        name = self._config_name(cfg)
        if not cfg.checkpoint.dirpath:
            cfg.checkpoint.dirpath = str(Path("checkpoints") / name)
        if cfg.trainer.get("logger") in (None, True):
            cfg.trainer.logger = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                                  "init_args": {"save_dir": "logs", "name": name}}
        callbacks = list(cfg.trainer.get("callbacks") or [])
        if sub == "fit":  # learning rate and tokens/s in TensorBoard, unless the config lists its own
            for cls, args in ((LearningRateMonitor, {"logging_interval": "step"}), (TokenThroughput, {})):
                if not any(str(getattr(c, "class_path", "")).endswith(cls.__name__) for c in callbacks):
                    callbacks.append({"class_path": f"{cls.__module__}.{cls.__name__}", "init_args": args})
        cfg.trainer.callbacks = callbacks
        ckpt = cfg.get("ckpt_path")
        if ckpt and ckpt not in ("last", "best", "hpc", "registry") and not Path(str(ckpt)).is_file():
            raise CheckpointError(f"{ckpt}: checkpoint not found (field 'ckpt_path')")
        # the tokenizer travels with the weights: resuming, evaluating or predicting from a checkpoint takes the
        # checkpoint's, a model initialised from a pretrained LM or an HF encoder takes theirs
        data, model = cfg.get("data"), (cfg.get("model") or {}).get("init_args") or {}
        if data is not None and "tokenizer" in (data.get("init_args") or {}) and not data.init_args.tokenizer:
            if ckpt and Path(str(ckpt)).is_file():
                data.init_args.tokenizer = str(ckpt)
            elif model.get("pretrained") or model.get("hf_path"):
                data.init_args.tokenizer = str(model.get("pretrained") or model.get("hf_path"))


    def _weights_from_checkpoint(self):
        """Tell the model when `--ckpt_path` will supply its weights, so that it neither reads `pretrained` nor
        needs `hf_path`'s directory (configure_model runs before Lightning restores the checkpoint)."""
        cfg = self.config_init[self.subcommand]
        self.model.weights_from_checkpoint = bool(cfg.get("ckpt_path"))

    before_fit = before_validate = before_test = before_predict = _weights_from_checkpoint


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


def main(args=None):
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)  # "Seed set to …" is noise
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # lightning's own deprecation noise on torch 2.13
    try:
        KslmCLI(
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"exit_on_error": False},
            args=args,
        )
    except Exception as exc:
        cause = _kslm_cause(exc)
        if cause is not None:
            print(f"kslm: error: {_one_line(str(cause))}", file=sys.stderr)
        elif isinstance(exc, ArgumentError):
            print(f"kslm: error: {_parse_error_line(str(exc))}", file=sys.stderr)
        else:
            raise
        sys.exit(2)


if __name__ == "__main__":
    main()
