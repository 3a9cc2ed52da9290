"""A DistributedSampler that can resume mid-epoch: the data position is part of exact resume.

It subclasses DistributedSampler so Lightning uses it as is (no wrapper) on one process or many; after
`skip(n)` the next iteration of the current epoch starts after the first n samples of this rank's shard.
"""

from torch.utils.data import DistributedSampler


class ResumableSampler(DistributedSampler):
    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self._skip = 0

    def skip(self, n_samples: int) -> None:
        self._skip = n_samples

    def __iter__(self):
        indices = list(super().__iter__())
        skip, self._skip = self._skip, 0
        return iter(indices[skip:])

    def __len__(self):
        return self.num_samples - self._skip
