"""KslmDataModule: what every kslm data module shares — the cache folder, the connected tokenizer (and labels), the
resumable training loader and its exact-resume state.

Data flows one way: the CLI (kslm.cli.connect) resolves the tokenizer and the label set once — from `--ckpt_path`,
`--model.pretrained`, `--model.hf_path`, `--data.tokenizer`, or by training on the data — and hands them to the
model and to the data module (`connect`). A data module never reads the model or the Trainer's other half.
Without a connection (a data module used on its own, as the experiments do) `load_tokenizer` builds its own.
"""

import os
import sys
import warnings
from pathlib import Path
from typing import List, Optional

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from kslm.data.sampler import ResumableSampler
from kslm.errors import DataError


def ignore_sigint(worker_id: int) -> None:
    """A DataLoader worker's init: Ctrl-C at a terminal reaches the workers too, which would die with a
    KeyboardInterrupt while kslm's fit finishes its step and saves (kslm.cli.interrupt); the main process stops them."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def default_cache_dir() -> Path:
    return Path(os.environ.get("KSLM_CACHE", Path.home() / ".cache" / "kslm"))


class KslmDataModule(pl.LightningDataModule):
    """Base of LMDataModule and the extraction data modules.

    Subclasses implement `build_tokenizer` (train one on their texts, or load `data.tokenizer`), `window_length`
    (the longest token sequence a batch holds, checked against the backbone's max_length when model and data are
    connected) and `predict_settings` (what `kslm predict` from a checkpoint needs to rebuild them).
    """

    window_option = "data.max_length"  # the option that sets window_length, for messages

    def __init__(self, cache_dir: Optional[str] = None, batch_size: int = 16, num_workers: int = 0, seed: int = 1234):
        super().__init__()
        if batch_size < 1:
            raise DataError(f"batch_size must be positive, got {batch_size}", field="data.batch_size")
        if num_workers < 0:
            raise DataError(f"num_workers must be ≥ 0, got {num_workers}", field="data.num_workers")
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.tokenizer = None
        self.labels: Optional[List[str]] = None
        self._sampler: Optional[ResumableSampler] = None
        self._resume: Optional[dict] = None

    # ------------------------------------------------------------- connection
    def connect(self, tokenizer, labels: Optional[List[str]] = None) -> None:
        """The tokenizer (and label set) the CLI resolved for both model and data."""
        self.tokenizer = tokenizer
        if labels is not None:
            self.labels = list(labels)

    def load_tokenizer(self):
        """The connected tokenizer, else this module's own (trained on its texts and cached, or data.tokenizer)."""
        if self.tokenizer is None:
            self.tokenizer = self.build_tokenizer()
        return self.tokenizer

    def build_tokenizer(self):
        raise NotImplementedError

    def window_length(self) -> int:
        raise NotImplementedError

    def predict_settings(self) -> dict:
        return {"batch_size": self.batch_size}

    def note(self, message: str) -> None:
        """One line on standard error (global rank 0 only) where a run does what the user may not expect."""
        if self.trainer is None or self.trainer.is_global_zero:
            print(f"kslm: note: {message}", file=sys.stderr)

    # ---------------------------------------------------------- training loader
    def resumable_loader(self, dataset, collate_fn=None, drop_last: bool = False) -> DataLoader:
        """A shuffled loader over `dataset` whose position (epoch, batches served) is part of the checkpoint."""
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.seed)
        if self._resume is not None:
            state, self._resume = self._resume, None
            if state["batch_size"] != self.batch_size:
                raise DataError(f"cannot resume the data position with a different batch_size (checkpoint "
                                f"{state['batch_size']}, now {self.batch_size})", field="data.batch_size")
            sampler.resume(state["epoch"], state["batches"] * self.batch_size)
            # Lightning warns that a mid-epoch resume is inexact unless the DataLoader itself has a state_dict; kslm
            # keeps the data position in this module's state (the sampler's epoch and offset) and resumes exactly
            # (tests/test_lm_cli.py's exact-resume tests), so that one warning does not apply here
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch "
                                    "ended and your dataloader is not resumable")
        self._sampler = sampler
        # a private generator: creating the iterator then draws nothing from the global RNG (dropout's)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          collate_fn=collate_fn, drop_last=drop_last, generator=torch.Generator(),
                          worker_init_fn=ignore_sigint if self.num_workers else None)

    # ------------------------------------------------------------ exact resume
    def state_dict(self):
        sampler = self._sampler
        if self.trainer is None or sampler is None:
            return {}
        progress = self.trainer.fit_loop.epoch_loop.batch_progress
        if progress.is_last_batch:  # the epoch is over: resume at the start of the next one
            return {"epoch": sampler.data_epoch + 1, "batches": 0, "batch_size": self.batch_size}
        return {"epoch": sampler.data_epoch, "batches": progress.current.processed, "batch_size": self.batch_size}

    def load_state_dict(self, state):
        """Kept until the training loader is built (predict / validate ignore it). A loader built before the
        checkpoint was read is dropped, so that training builds it again at the checkpoint's position: Lightning's
        ModelParallelStrategy (fsdp2) restores after setup, and setup builds the loader when the schedule's horizon
        (no optim.total_steps) or Amos's default ξ needs the epoch's length."""
        self._resume = state or None
        if self._resume is not None and self._sampler is not None and self.trainer is not None:
            self._sampler = None
            self.trainer.fit_loop._combined_loader = None  # (Lightning's own test for "build the loader again")


__all__ = ["KslmDataModule", "default_cache_dir", "ignore_sigint"]
