"""Callbacks: kslm's checkpointing, the atomic JSONL prediction writer, the throughput/MFU monitor and the
learning-rate monitor."""

import json
import random
import sys
import time
import warnings
from typing import Optional

import numpy as np
import torch
from lightning.fabric.utilities.throughput import Throughput, get_available_flops
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.utilities.model_helpers import is_overridden

from kslm.cli import interrupt
from kslm.cli.options import check_output_path
from kslm.io import write_jsonl


class KslmCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that also writes last.ckpt after the run's final training batch (max_steps or max_epochs
    reached between two validation checks), so `last.ckpt` is always the end of the run. Saving at batch end
    is the state Lightning restores most exactly (mid-epoch and at an epoch's last batch alike).

    A run that reaches max_steps between two validation checks validates once more at its final step, so that every
    run ends with its metrics (log, TensorBoard, top-k); that extra validation changes neither last.ckpt nor the
    random state. When a validation follows that final batch, it still takes part in the top-k (Lightning would skip it as a
    step already saved), and last.ckpt is written again after it, with the final top-k in its state: a run
    whose last validation is its best keeps that checkpoint.

    Args:
        latest_link: a path that is made, after every write of last.ckpt, a link to it (kslm.cli.folders.point_link; the
            CLI sets `checkpoints/<config>/last.ckpt` when it picks the run's folder). Rank 0 only.
    """

    def __init__(self, *args, latest_link: Optional[str] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.latest_link = latest_link
        self._final_step = None  # the step whose last.ckpt was written at its final training batch
        self._rng = None  # the random state before an extra final validation (restored after it)
        self._last_step = None  # the step of the latest last.ckpt this process wrote
        self._ending = False  # the latest training batch was the run's last

    def setup(self, trainer, pl_module, stage: str) -> None:
        with warnings.catch_warnings():
            if self.latest_link:  # a run folder of its own: not empty only when this run is resumed in it
                warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
            super().setup(trainer, pl_module, stage)

    def on_train_start(self, trainer, pl_module):
        super().on_train_start(trainer, pl_module)
        interrupt.arm()  # Ctrl-C / SIGTERM now stop at a step boundary, with a checkpoint (kslm.cli.interrupt)

    def on_train_end(self, trainer, pl_module):
        interrupt.disarm()
        super().on_train_end(trainer, pl_module)

    def on_exception(self, trainer, pl_module, exception):
        interrupt.disarm()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        interrupt.disarm()
        super().teardown(trainer, pl_module, stage)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._final_batch(trainer)
        if not self._validates_next(trainer):  # else a stop asked for now happens at the validation's end
            self._stop_if_asked(trainer)

    @staticmethod
    def _validates_next(trainer) -> bool:
        """Whether Lightning validates after this training batch (its own test)."""
        loop = trainer.fit_loop
        try:
            return bool(loop.epoch_loop._should_check_val_fx(loop._data_fetcher))
        except AttributeError:  # another Lightning: stop at this batch
            return False

    def _stop_if_asked(self, trainer) -> None:
        """Ctrl-C / SIGTERM asked the fit to stop: last.ckpt of this step (unless written already), then Interrupted."""
        signum = interrupt.requested(trainer)
        if not signum or self._ending:  # (a run at its end finishes: its last.ckpt is written)
            return
        if self._last_step != trainer.global_step:
            save_last, self.save_last = self.save_last, self.save_last or True
            try:
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            finally:
                self.save_last = save_last
        raise interrupt.Interrupted(signum, trainer.global_step, self.latest_link or self.last_model_path,
                                    trainer.global_rank)

    def _final_batch(self, trainer) -> None:
        loop = trainer.fit_loop
        final = (0 <= trainer.max_steps <= trainer.global_step) or (
            loop.epoch_loop.batch_progress.is_last_batch and loop.max_epochs not in (None, -1)
            and trainer.current_epoch + 1 >= loop.max_epochs)
        self._ending = final
        if self.save_last and final and trainer.global_step != self._last_global_step_saved:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            self._final_step = trainer.global_step
        if 0 <= trainer.max_steps <= trainer.global_step and not trainer.should_stop and self._unscheduled(trainer):
            # a run that reaches max_steps between two validation checks validates once more at its final step
            # (as litgpt does): asked to stop, Lightning validates first. The random state is put back after it and
            # last.ckpt stays the final batch's, so checkpoints and an exact resume are as without this validation
            self._rng = (torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                         random.getstate(), np.random.get_state())
            trainer.should_stop = True

    @staticmethod
    def _unscheduled(trainer) -> bool:
        """Whether Lightning would end the run without validating at this (final) batch."""
        if trainer.limit_val_batches == 0 or not is_overridden("validation_step", trainer.lightning_module):
            return False
        loop = trainer.fit_loop.epoch_loop
        if trainer.check_val_every_n_epoch is None and isinstance(trainer.val_check_batch, int):
            return (loop.total_batch_idx + 1) % trainer.val_check_batch != 0
        return not loop.batch_progress.is_last_batch  # (epoch-based validation: at the epoch's last batch)

    def on_validation_end(self, trainer, pl_module):
        extra, save_last = self._rng is not None and not trainer.sanity_checking, self.save_last
        if extra:  # the final validation asked for above: the random state back, last.ckpt left as it is
            cpu, cuda, py, npy = self._rng
            torch.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state_all(cuda)
            random.setstate(py)
            np.random.set_state(npy)
            self._rng, self.save_last = None, False
        try:
            self._with_final_step(trainer, lambda: super(KslmCheckpoint, self).on_validation_end(trainer, pl_module))
        finally:
            self.save_last = save_last
        if not extra and not trainer.sanity_checking and trainer.state.fn == "fit":
            self._stop_if_asked(trainer)

    def on_train_epoch_end(self, trainer, pl_module):  # the top-k of a run without validation saves here
        self._with_final_step(trainer, lambda: super(KslmCheckpoint, self).on_train_epoch_end(trainer, pl_module))

    def _with_final_step(self, trainer, hook) -> None:
        """Run Lightning's save hook so that the final batch's last.ckpt does not hide this step from the top-k
        (Lightning skips a step already saved); when the top-k saves it, Lightning writes last.ckpt after it."""
        final = self._final_step == trainer.global_step and not trainer.sanity_checking
        if final:
            self._last_global_step_saved = -1
        hook()
        if final:
            if self._last_global_step_saved == trainer.global_step:
                self._final_step = None
            else:  # not saved here: last.ckpt of the final batch stands
                self._last_global_step_saved = trainer.global_step

    def _save_last_checkpoint(self, trainer, monitor_candidates) -> None:  # every write of last.ckpt (or its link)
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._last_step = trainer.global_step
        if self.latest_link and self.save_last and self.last_model_path and trainer.is_global_zero:
            from kslm.cli.folders import point_link

            _, moved = point_link(self.latest_link, self.last_model_path)
            if moved is not None:
                print(f"kslm: {self.latest_link} was a checkpoint file (from before run folders): kept as {moved}",
                      file=sys.stderr)

    def load_state_dict(self, state_dict) -> None:
        """The top-k of the folder the checkpoint was written to, only when this run writes to that folder too (a fit
        resumed in its own run folder); a new run, or validate / test / predict, starts its own quietly."""
        if state_dict.get("dirpath") == self.dirpath:
            super().load_state_dict(state_dict)


class JsonlPredictionWriter(BasePredictionWriter):
    """Writes `kslm predict` outputs as JSONL, one line per input record, in input order.

    Args:
        path: output file (written atomically); empty = print the JSONL to standard output.

    The path is checked before anything is predicted (not a directory, its folder writable). An input without
    records gives an empty file (and a line saying so), not a missing one.
    """

    def __init__(self, path: Optional[str] = None):
        super().__init__(write_interval="epoch")
        self.path = path
        self.written = False

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "predict":
            check_output_path(self.path)
            self.written = False

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices):
        records = [r for batch in predictions for r in (batch if isinstance(batch, list) else [batch])]
        if trainer.world_size > 1:
            gathered = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, records)
            records = [r for part in gathered for r in part]
        if trainer.global_rank != 0:
            return
        if records and "line" in records[0]:
            seen, unique = set(), []
            for r in sorted(records, key=lambda r: r["line"]):  # DistributedSampler pads with repeats
                if r["line"] not in seen:
                    seen.add(r["line"])
                    unique.append(r)
            records = unique
        self.write(records)

    def write(self, records, note: str = "") -> None:
        """Write (or print) the records; `note` explains an empty result."""
        self.written = True
        if self.path:
            write_jsonl(self.path, records)
            print(f"kslm: wrote {len(records)} predictions to {self.path}{note}", file=sys.stderr)
        else:
            for r in records:
                print(json.dumps(r, ensure_ascii=False))
            if note:
                print(f"kslm: 0 predictions{note}", file=sys.stderr)

    def finish(self, trainer) -> None:
        """After `trainer.predict`: Lightning runs no epoch over an input without records, so nothing was written;
        write the empty result now (rank 0)."""
        if not self.written and trainer.global_rank == 0:
            self.write([], " (the input holds no records)")


class TokenThroughput(Callback):
    """Training throughput from kslm batches through Lightning's public `Throughput` meter: tokens (not "items")
    and FLOPs from the task's analytic `flops_per_batch`, over a rolling window of batches. Logs train/tokens_per_sec,
    train/flops_per_sec (and train/mfu where Lightning knows the device's peak) every `log_every_n_steps`. At the
    end it prints the run's mean tokens/s (first batch excluded) and MFU, or "MFU n/a" when the peak is unknown
    (CPUs)."""

    def __init__(self, window_size: int = 10):
        super().__init__()
        self.window_size = window_size
        self._meter: Optional[Throughput] = None
        self._t0 = None
        self._totals = [0, 0, 0, 0.0]  # batches, samples, tokens, flops since the start
        self._first = self._last = None  # (time, tokens, flops) after the first and the latest batch

    def on_train_start(self, trainer, pl_module):
        peak = get_available_flops(trainer.strategy.root_device, trainer.precision)
        self._meter = Throughput(available_flops=peak, world_size=trainer.world_size, window_size=self.window_size)
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = time.perf_counter()
        tokens = batch["input_ids"].numel()
        flops = getattr(pl_module, "flops_per_batch", None) or 0.0
        totals = self._totals
        totals[0] += 1
        totals[1] += batch["input_ids"].shape[0]
        totals[2] += tokens
        totals[3] += flops * trainer.world_size
        self._meter.update(time=now - self._t0, batches=totals[0], samples=totals[1], lengths=totals[2],
                           flops=flops * trainer.world_size)
        metrics = self._meter.compute()
        named = {"train/tokens_per_sec": metrics.get("device/items_per_sec"),
                 "train/flops_per_sec": metrics.get("device/flops_per_sec"), "train/mfu": metrics.get("device/mfu")}
        named = {k: float(v) for k, v in named.items() if v is not None}
        if named:
            pl_module.log_dict(named, on_step=True, on_epoch=False, batch_size=batch["input_ids"].shape[0])
        if self._first is None:
            self._first = self._last = (now, 0, 0.0)
        else:
            self._last = (now, self._last[1] + tokens, self._last[2] + flops)

    def on_train_end(self, trainer, pl_module):
        if trainer.global_rank != 0 or self._first is None or self._last[0] <= self._first[0]:
            return
        seconds = self._last[0] - self._first[0]
        tokens_s, flops_s = self._last[1] / seconds, self._last[2] / seconds
        peak = get_available_flops(trainer.strategy.root_device, trainer.precision)
        mfu = f"MFU {flops_s / peak:.1%}" if peak and flops_s else "MFU n/a"
        print(f"kslm: {tokens_s:,.0f} tokens/s per device, {flops_s / 1e9:,.1f} GFLOP/s, {mfu}", file=sys.stderr)


class RunConfig(SaveConfigCallback):
    """The run's full config as config.yaml beside its logs (logs/NAME/version_N). A run without a logger (NBCE's
    predict, `--trainer.logger false`) writes none: Lightning would put it in the working directory, over any
    config.yaml of the user's there."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.logger is not None:
            super().setup(trainer, pl_module, stage)


class SharedLearningRate(LearningRateMonitor):
    """Lightning's LearningRateMonitor, with one tag per optimiser (`lr-AdamW`) when all its parameter groups share
    the learning rate (kslm's schedules scale every group alike; AdamW's two groups differ only in weight decay),
    instead of identical `lr-AdamW/pg1`, `lr-AdamW/pg2`, … (one per tensor for amos_adamw). Groups whose rates differ
    keep Lightning's per-group tags."""

    def _get_optimizer_stats(self, optimizer, names):  # Lightning's per-optimizer step (2.5, 2.6)
        stats = super()._get_optimizer_stats(optimizer, names)
        rates = {stats[n] for n in names if n in stats}
        if len(names) > 1 and len(rates) == 1 and all(n in stats for n in names):
            for n in names:
                del stats[n]
            stats[names[0].rsplit("/", 1)[0]] = rates.pop()
        return stats
