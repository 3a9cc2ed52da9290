"""The run a trainer verb starts, decided before any class is built (kslm.cli.trainer): its name (`--name`, default
the config's stem), its folders (kslm.cli.folders) and the first lines a fit prints about them; a new fit removes the
previous run's `last.ckpt` link once its data is read, and a fit stopped before its first training step is discarded
(folders, link back).
"""

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from lightning.pytorch.callbacks import Callback

from kslm.cli.folders import discard_run, eval_version, name_error, next_version, resumed_version, start_run
from kslm.errors import ConfigError


@dataclass
class Run:
    name: str
    version: Optional[object] = None  # the logger's version: N for fit, "<verb>-<time>" for validate / test
    ckpt_dir: Optional[Path] = None  # fit only
    link: Optional[Path] = None  # checkpoints/<name>/last.ckpt (fit in a run folder)
    resumed: bool = False  # a fit continuing its own run folder
    new: bool = False  # a fit starting a new run folder (its link is removed at its start)
    old_link: Optional[str] = None  # the link's target before this run removed it


def rank_zero() -> bool:
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def run_name(cfg) -> str:
    """--name, else the last config file's stem, else the run folder of --ckpt_path (checkpoints/NAME/…), else
    "default" (checked: one folder name)."""
    name = cfg.get("name")
    if name is None:
        configs = cfg.get("config") or []
        return Path(str(configs[-1])).stem if configs else _run_of(cfg.get("ckpt_path")) or "default"
    error = name_error(str(name))
    if error:
        raise ConfigError(error)
    return str(name)


def _run_of(ckpt) -> Optional[str]:
    """NAME when `ckpt` is checkpoints/NAME/last.ckpt or checkpoints/NAME/version_N/FILE."""
    if not ckpt or ckpt in ("last", "best"):
        return None
    path = Path(str(ckpt))
    folder = path.parent.parent if re.fullmatch(r"version_\d+", path.parent.name) else path.parent
    return folder.name if folder.parent.name == "checkpoints" and not name_error(folder.name) else None


def plan(sub: str, cfg, name: str) -> Run:
    """Folders of the run: fit → checkpoints/<name>/version_N beside logs/<name>/version_N (N new, or the resumed
    run's own when --ckpt_path is a run's last.ckpt), with the link checkpoints/<name>/last.ckpt; --checkpoint.dirpath
    DIR → DIR itself, no link; validate / test → logs/<name>/<verb>-<time>; predict → no logs. Sets the checkpoint
    options in `cfg`."""
    run = Run(name)
    if sub in ("validate", "test"):
        run.version = eval_version(Path("logs") / name, sub)
    if cfg.checkpoint.dirpath:
        if sub == "fit":
            run.ckpt_dir, run.version = Path(cfg.checkpoint.dirpath), next_version(Path("logs") / name)
        return run
    base = Path("checkpoints") / name
    if sub != "fit":
        cfg.checkpoint.dirpath = str(base)
        return run
    version = resumed_version(cfg.get("ckpt_path"), base)
    run.resumed, run.new = version is not None, version is None
    if version is None:
        version = next_version(Path("logs") / name, base)
    run.version, run.ckpt_dir, run.link = version, base / f"version_{version}", base / "last.ckpt"
    cfg.checkpoint.dirpath = str(run.ckpt_dir)
    cfg.checkpoint.latest_link = str(run.link)
    return run


class RunStart(Callback):
    """Calls `start` once the run's data is set up (fit: on_fit_start, before the sanity check and the first step;
    validate / test: when they start), so that a mistake found while reading the data is still one line."""

    def __init__(self, run: Run, sub: str, cfg):
        self.run, self.sub, self.cfg, self.done = run, sub, cfg, False

    def _start(self, trainer) -> None:
        if not self.done and trainer.state.fn == self.sub:
            self.done = True
            start(self.run, self.sub, self.cfg)

    def on_fit_start(self, trainer, pl_module):
        self._start(trainer)

    def on_validation_start(self, trainer, pl_module):
        self._start(trainer)

    def on_test_start(self, trainer, pl_module):
        self._start(trainer)


def start(run: Run, sub: str, cfg) -> None:
    """Rank 0, once the options are good and the data is read: a new fit removes the previous run's link; fit says
    where its checkpoints and logs go, validate / test where their logs go."""
    if not rank_zero():
        return
    if sub == "fit" and run.new and run.link is not None:
        run.old_link = start_run(run.link)
    logger = cfg.trainer.get("logger")
    default_logs = hasattr(logger, "get") and str(logger.get("class_path", "")).endswith("TensorBoardLogger") and \
        (logger.get("init_args") or {}).get("save_dir") == "logs"
    folder = f"version_{run.version}" if isinstance(run.version, int) else run.version
    logs = f"logs/{run.name}/{folder}/" if default_logs and run.version is not None else \
        "none (--trainer.logger false)" if logger is False else "the configured logger's folder"
    if sub == "fit":
        what = "resumed in its folders" if run.resumed else "a new run" if run.link else "--checkpoint.dirpath"
        where = f"{run.name}/version_{run.version}" if run.link else run.name
        print(f"kslm: fit {where} ({what}): checkpoints in {run.ckpt_dir}/"
              + (f", {run.link} links to the latest" if run.link else ""), file=sys.stderr)
        print(f"kslm: logs in {logs}" + (" (tensorboard --logdir logs)" if default_logs else ""), file=sys.stderr)
    elif sub in ("validate", "test") and default_logs:
        print(f"kslm: {sub} {run.name}: logs in {logs}", file=sys.stderr)


def discard_if_unstarted(run: Optional[Run], trainer) -> None:
    """A new fit stopped (error, Ctrl-C) before its first training step leaves nothing: no folders, so no number
    taken, and the link as it was. Rank 0."""
    if run is None or not run.new or run.link is None or not rank_zero():
        return
    if trainer is not None and getattr(trainer, "global_step", 0) > 0:
        return
    discard_run(run.ckpt_dir, Path("logs") / run.name / f"version_{run.version}", run.link, run.old_link)


__all__ = ["Run", "RunStart", "discard_if_unstarted", "plan", "rank_zero", "run_name", "start"]
