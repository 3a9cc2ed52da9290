"""A callback for the DDP tests (imported by the `kslm` subprocess through PYTHONPATH): at the end of training it
gathers every rank's parameters and optimiser state and rank 0 writes the largest difference from rank 0's copy, so
a test can tell synchronised ranks from ranks that drifted apart."""

import json
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback


def _flat(tensors) -> torch.Tensor:
    parts = [t.detach().double().flatten() for t in tensors if torch.is_tensor(t) and t.is_floating_point()]
    return torch.cat(parts) if parts else torch.zeros(1, dtype=torch.float64)


class RankSyncCheck(Callback):
    """Also: each rank draws rank + 1 extra numbers per batch (ranks whose batches differ in shape draw differently),
    and its random state at the last checkpoint save goes to `out`, for comparison with the checkpoint's."""

    def __init__(self, out: str):
        self.out = out
        self.saved_rng = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        torch.rand(trainer.global_rank + 1)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self.saved_rng = torch.get_rng_state()

    def on_train_end(self, trainer, pl_module):
        params = _flat(pl_module.parameters())
        state = _flat(v for s in trainer.optimizers[0].state.values() for v in s.values())
        gathered = [trainer.strategy.all_gather(x) for x in (params, state)]  # [world, n] each
        rngs = trainer.strategy.all_gather(self.saved_rng if self.saved_rng is not None else torch.get_rng_state())
        if trainer.is_global_zero:
            diff = {name: (g - g[0]).abs().max().item() for name, g in zip(("params", "optimizer_state"), gathered, strict=True)}
            Path(self.out).write_text(json.dumps({"world_size": int(gathered[0].shape[0]), "numel": params.numel(),
                                                  "max_abs_diff": diff, "saved_rng": rngs.tolist()}), encoding="utf-8")


class MarkWhenTraining(Callback):
    """Writes `{path}.{rank}` (holding the process id) once the rank has trained a batch: the DDP group is up."""

    def __init__(self, path: str):
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        marker = Path(f"{self.path}.{trainer.global_rank}")
        if not marker.exists():
            import os

            marker.write_text(str(os.getpid()), encoding="utf-8")
