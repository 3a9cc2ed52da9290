"""What a run shows while it runs: progress on a terminal (a bar counting the run's steps), progress in a log file
(plain periodic lines, as Hugging Face's Trainer and litgpt print them), and the model summary as one line.

`progress_bar()` picks the bar when standard output is a terminal, the lines otherwise (`nohup`, SLURM,
`kslm fit … > log 2>&1`); kslm.cli adds it to every command unless `--trainer.enable_progress_bar false` or the
config lists a progress bar of its own. Both are Lightning ProgressBar callbacks (Lightning allows one).
"""

import logging
import os
import sys
import time
from typing import Optional

from lightning.pytorch.callbacks import ModelSummary, ProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import _update_n, convert_inf
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.model_summary import get_human_readable_count

from kslm.report import metrics_line


def progress_bar(stream=None) -> ProgressBar:
    """The bar on a terminal, the periodic lines when standard output is a file or a pipe."""
    stream = sys.stdout if stream is None else stream
    return StepProgressBar() if getattr(stream, "isatty", lambda: False)() else LogProgress()


class StepProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, counting optimizer steps toward the run's total (`max_steps`, or the steps of
    `max_epochs`: Trainer.estimated_stepping_batches) rather than the batches of an epoch, from the step a resumed
    run starts at; one bar for the whole run, its description naming the epoch."""

    def on_train_start(self, trainer, pl_module):
        super().on_train_start(trainer, pl_module)
        bar = self.train_progress_bar
        bar.reset()
        bar.total = convert_inf(trainer.estimated_stepping_batches)
        bar.initial = trainer.global_step  # tqdm's rate counts from here
        bar.set_description(f"Epoch {trainer.current_epoch}")  # (a run resumed mid-epoch has no epoch start)
        _update_n(bar, trainer.global_step)

    def on_train_epoch_start(self, trainer, *_):
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        bar, n = self.train_progress_bar, trainer.global_step
        if bar is not None and self._should_update(n, bar.total):
            _update_n(bar, n)
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_train_epoch_end(self, trainer, pl_module):
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))


class LogProgress(ProgressBar):
    """Progress as plain lines on standard error, for logs:

        step 50/300 | loss 4.321 | lr 1.0e-03 | 2,345 tok/s | ETA 3m12s
        validation step 100: val/loss 5.104 | val/ppl 164.7
        validation step 1000: val/loss 0.021 | val/f1 50.8% | val/macro_f1 47.3% | …   (rates in %)

    A line every `every_n_steps` optimizer steps (default: the Trainer's `log_every_n_steps`, Lightning's 50 or the
    config's) and at the last step: the mean train/loss over those steps, the learning rate, the tokens per second
    over those steps (validation time excluded; all ranks) and the time left at the run's pace so far. One line
    per validation during fit, with the validation's scalars (`val/name`; per-type ones such as `val/f1/PER` stay in
    TensorBoard; precision, recall and F1 in %, kslm.report). Rank 0 prints; validate / test print one results line
    (kslm.cli.trainer), after an extraction task's per-label table."""

    def __init__(self, every_n_steps: Optional[int] = None, stream=None):
        super().__init__()
        self.every_n_steps = every_n_steps
        self.stream = stream
        self._enabled = True
        self._val_started, self._total = 0.0, None
        self._reset(0, 0.0)

    def _reset(self, step, now):
        self._start_step, self._start_time, self._printed = step, now, step
        self._loss_sum, self._losses, self._tokens, self._window_start, self._val_seconds = 0.0, 0, 0, now, 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def _print(self, line: str) -> None:
        stream = self.stream or sys.stderr
        print(line, file=stream, flush=True)

    def on_train_start(self, trainer, pl_module):
        self._reset(trainer.global_step, time.monotonic())
        self._total = convert_inf(trainer.estimated_stepping_batches)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.is_enabled:
            return
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:  # summed where it lives (no device sync per step); read when a line is printed
            self._loss_sum, self._losses = self._loss_sum + loss.detach(), self._losses + 1
        if isinstance(batch, dict) and hasattr(batch.get("input_ids"), "numel"):
            self._tokens += batch["input_ids"].numel() * trainer.world_size
        step, total = trainer.global_step, self._total
        every = self.every_n_steps or trainer.log_every_n_steps or 50
        if step == self._printed or not (step % every == 0 or step == total):
            return
        self._print(" | ".join(self._train_fields(trainer, step, total)))
        self._printed = step
        self._loss_sum, self._losses, self._tokens, self._window_start = 0.0, 0, 0, time.monotonic()
        self._val_seconds = 0.0

    def _train_fields(self, trainer, step, total):
        now = time.monotonic()
        fields = [f"step {step}/{total}" if total else f"step {step}"]
        if self._losses:
            fields.append(f"loss {float(self._loss_sum) / self._losses:.4g}")
        if trainer.optimizers:
            fields.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.1e}")
        seconds = now - self._window_start - self._val_seconds
        if self._tokens and seconds > 0:
            fields.append(f"{self._tokens / seconds:,.0f} tok/s")
        done = step - self._start_step
        if total and done > 0:
            fields.append(f"ETA {_duration((total - step) * (now - self._start_time) / done)}")
        return fields

    def on_validation_start(self, trainer, pl_module):
        self._val_started = time.monotonic()

    def on_validation_end(self, trainer, pl_module):
        self._val_seconds += time.monotonic() - self._val_started
        if not self.is_enabled or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        self._print(f"validation step {trainer.global_step}: {metrics_line(scalars(trainer, 'val'))}")


def scalars(trainer, stage: str) -> dict:
    """The stage's own scalar metrics (`val/loss`, `val/f1`; not the per-label `val/f1/PER`) as floats."""
    return {k: float(v) for k, v in trainer.callback_metrics.items()
            if k.startswith(f"{stage}/") and k.count("/") == 1 and getattr(v, "numel", lambda: 1)() == 1}


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class ParameterSummary(ModelSummary):
    """Lightning's model summary in one line: parameters (trainable), size, and modules in train / eval mode.
    Lightning's table adds a FLOPs column that reads 0 unless the model sets an `example_input_array` (kslm's
    tasks take dict batches; the run's FLOP/s come from their analytic count, see kslm.cli.callbacks.TokenThroughput)."""

    @staticmethod
    def summarize(summary_data, total_parameters, trainable_parameters, model_size, total_training_modes,
                  total_flops=0, **summarize_kwargs) -> None:
        print(f"kslm: {get_human_readable_count(int(total_parameters))} parameters "
              f"({get_human_readable_count(int(trainable_parameters))} trainable, {model_size:.3g} MB); modules: "
              f"{total_training_modes['train']} in train mode, {total_training_modes['eval']} in eval mode",
              file=sys.stderr)


class _Stderr(logging.StreamHandler):
    """A log handler writing to whatever sys.stderr is when a record comes (tests and tools swap it)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


class _InfoOnRankZero(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        from lightning.pytorch.utilities.rank_zero import rank_zero_only

        return record.levelno >= logging.WARNING or getattr(rank_zero_only, "rank", 0) == 0


def plain_logs() -> None:
    """kslm's own log lines on standard error as plain text (`LM data: tokenized … into … blocks`, `ner data: 9,748
    train windows, …`; info on rank 0, warnings on every rank); and, when standard output is not a terminal (a log
    file), no `\\r` progress bars from `datasets` (tokenizers draws none off a terminal)."""
    log = logging.getLogger("kslm")
    if not any(isinstance(h, _Stderr) for h in log.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.addFilter(_InfoOnRankZero())
        log.addHandler(handler)
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)
    if not sys.stdout.isatty() and "HF_DATASETS_DISABLE_PROGRESS_BARS" not in os.environ:
        if "datasets" in sys.modules:
            sys.modules["datasets"].disable_progress_bars()
        else:  # read when datasets is imported (kslm imports it only to read a corpus)
            os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"


_HIDDEN = ("💡 Tip:",  # an advert for Lightning's hosted services (litlogger, litmodels), on every Trainer
           "\nDetected KeyboardInterrupt, attempting graceful shutdown")  # Ctrl-C: kslm says `kslm: interrupted`


class _Advert(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_HIDDEN)


def hide_adverts() -> None:
    """Lightning logs a tip for its hosted services (litlogger, litmodels) on every Trainer, and its own line for a
    Ctrl-C; kslm shows neither."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Advert) for f in logger.filters):
            logger.addFilter(_Advert())


__all__ = ["LogProgress", "ParameterSummary", "StepProgressBar", "hide_adverts", "plain_logs", "progress_bar", "scalars"]
