"""A DistributedSampler that can resume mid-epoch: the data position is part of exact resume.

It subclasses DistributedSampler so Lightning uses it as is (no wrapper) on one process or many. After
`resume(epoch, n)` the next iteration uses epoch `epoch`'s permutation and starts after the first n samples of
this rank's shard, whatever epoch number Lightning then passes to `set_epoch` (a checkpoint written when
training stopped counts its epoch as finished, one written mid-epoch does not); later epochs keep the offset.
"""

import math

import torch
from torch.utils.data import DistributedSampler

CHUNK = 1 << 16  # indices turned into Python ints at a time


class ResumableSampler(DistributedSampler):
    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self._resume = None  # (epoch, samples to skip)
        self._offset = 0  # true epoch − Lightning's epoch number
        self._skip = 0
        self._numbered = False  # set_epoch was called since the last iteration began
        self._unnumbered = None  # the resumed epoch, when its iteration began before Lightning numbered it

    def resume(self, epoch: int, n_samples: int) -> None:
        self._resume = (epoch, n_samples)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if self._unnumbered is not None:
            self._offset, self._unnumbered = self._unnumbered - epoch, None
        self._numbered = True

    @property
    def data_epoch(self) -> int:
        """The epoch whose permutation is being served."""
        return self.epoch + self._offset

    def __iter__(self):
        """A loader without workers starts iterating at its first batch, after Lightning's set_epoch for that epoch; a
        loader with workers starts when Lightning creates its iterator, before it: a resumed epoch then learns its
        number from the set_epoch that follows."""
        epoch = self.data_epoch
        if self._resume is not None:
            (epoch, self._skip), self._resume = self._resume, None
            if self._numbered:
                self._offset = epoch - self.epoch
            else:
                self._unnumbered = epoch
        self._numbered = False
        indices = self.shard_indices(epoch)
        skip, self._skip = self._skip, 0
        return _iterate(indices[skip:])

    def shard_indices(self, epoch: int) -> torch.Tensor:
        """This rank's indices of `epoch`, as DistributedSampler (drop_last False) orders them, but as one int64
        tensor rather than a Python list (8 bytes a sample instead of ~36: a large corpus has millions of blocks)."""
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + epoch)
            indices = torch.randperm(n, generator=g)
        else:
            indices = torch.arange(n)
        pad = self.total_size - n
        if pad > 0:  # the first indices again, as often as needed, so that every rank gets num_samples
            indices = torch.cat([indices, indices.repeat(math.ceil(pad / n))[:pad]])
        return indices[self.rank : self.total_size : self.num_replicas]

    def __len__(self):
        """The whole epoch's samples, also while resuming: Lightning counts a restarted epoch's batches from the
        checkpoint's position (its fetcher starts at the batches already served), so a shorter length would end
        the resumed epoch early by that many batches."""
        return self.num_samples


def _iterate(indices: torch.Tensor):
    for chunk in indices.split(CHUNK):
        yield from chunk.tolist()
