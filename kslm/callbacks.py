"""Callbacks: the atomic JSONL prediction writer and the throughput/MFU monitor."""

import json
import sys
import time
from typing import Optional

import torch
from lightning.fabric.utilities.throughput import Throughput, get_available_flops
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, ModelCheckpoint

from kslm.io import write_jsonl
from kslm.options import check_output_path


class KslmCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that also writes last.ckpt after the run's final training batch (max_steps or max_epochs
    reached between two validation checks), so `last.ckpt` is always the end of the run. Saving at batch end
    is the state Lightning restores most exactly (mid-epoch and at an epoch's last batch alike)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        loop = trainer.fit_loop
        final = (0 <= trainer.max_steps <= trainer.global_step) or (
            loop.epoch_loop.batch_progress.is_last_batch and loop.max_epochs not in (None, -1)
            and trainer.current_epoch + 1 >= loop.max_epochs)
        if self.save_last and final and trainer.global_step != self._last_global_step_saved:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


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
