"""Callbacks: the atomic JSONL prediction writer and the throughput/MFU monitor."""

import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional

import torch
from lightning.pytorch.callbacks import BasePredictionWriter, ThroughputMonitor

log = logging.getLogger(__name__)


def write_jsonl_atomic(path, records) -> None:
    """Write to a temp file in the target folder, then rename: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class JsonlPredictionWriter(BasePredictionWriter):
    """Writes `kslm predict` outputs as JSONL, one line per input record, in input order.

    Args:
        path: output file (written atomically); empty = print the JSONL to standard output.
    """

    def __init__(self, path: Optional[str] = None):
        super().__init__(write_interval="epoch")
        self.path = path

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
        if self.path:
            write_jsonl_atomic(self.path, records)
            print(f"kslm: wrote {len(records)} predictions to {self.path}", file=sys.stderr)
        else:
            for r in records:
                print(json.dumps(r, ensure_ascii=False))


class TokenThroughput(ThroughputMonitor):
    """Lightning's ThroughputMonitor with kslm batches: items = tokens, FLOPs from the task's analytic
    `flops_per_batch`. Logs train/device/{samples,items,flops}_per_sec (and MFU where Lightning knows the
    device's peak); at the end prints tokens/s and MFU, or "MFU n/a" when the peak is unknown (CPU)."""

    def __init__(self, window_size: int = 20):
        super().__init__(batch_size_fn=lambda b: b["input_ids"].shape[0], length_fn=lambda b: b["input_ids"].numel(),
                         window_size=window_size)

    def on_train_end(self, trainer, pl_module):
        tp = self._throughputs.get("train")
        if tp is None or trainer.global_rank != 0:
            return
        metrics = tp.compute()
        tokens = metrics.get("device/items_per_sec")
        mfu = metrics.get("device/mfu")
        if tokens is not None:
            print(f"kslm: {tokens:,.0f} tokens/s per device, " + (f"MFU {mfu:.1%}" if mfu is not None else "MFU n/a"),
                  file=sys.stderr)
