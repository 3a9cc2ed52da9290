"""`--trainer.strategy fsdp2`: Lightning's ModelParallelStrategy as plain FSDP2 over every rank, under a short name.

Lightning's `fsdp` (FSDPStrategy, FSDP1) refuses a CPU accelerator; its ModelParallelStrategy (FSDP2 over a device
mesh) runs on CPU with gloo as on GPUs with NCCL, but it shards nothing itself — the module's `configure_model`
must (kslm.tasks.base calls kslm.tasks.fsdp.shard there) — and its default mesh is data-parallel across nodes,
tensor-parallel within a node. kslm has no tensor parallelism, so FSDP2Strategy makes the data-parallel dimension
every rank (world size × 1): each rank reads its own shard of the data and holds 1/world of the weights, gradients
and optimiser state.

Checkpoints are sharded: `last.ckpt` is a folder with one file of weights and optimiser state per rank
(torch.distributed.checkpoint) and `meta.pt` (Lightning's loop state and kslm's payload). `--ckpt_path` on that
folder resumes exactly (on the same number of ranks). At the end of `kslm fit` rank 0 consolidates it
into one ordinary kslm checkpoint beside it (kslm.checkpoint.consolidate), which `kslm predict`, `--model.pretrained`
and every other reader of a checkpoint file take.
"""

from lightning.pytorch.strategies import ModelParallelStrategy, StrategyRegistry

NAME = "fsdp2"


class FSDP2Strategy(ModelParallelStrategy):
    """ModelParallelStrategy with data_parallel_size = world size and tensor_parallel_size = 1."""

    strategy_name = NAME

    def __init__(self, save_distributed_checkpoint: bool = True, **kwargs):
        kwargs.setdefault("tensor_parallel_size", 1)
        super().__init__(save_distributed_checkpoint=save_distributed_checkpoint, **kwargs)

    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto":  # known now: devices × nodes
            self._data_parallel_size = self.num_nodes * self.num_processes // int(self._tensor_parallel_size)
        super().setup_environment()

    @property
    def data_parallel_mesh(self):
        return self.device_mesh["data_parallel"]


def register() -> None:
    if NAME not in StrategyRegistry:
        StrategyRegistry.register(NAME, FSDP2Strategy, description="FSDP2 (fully_shard per block) over all ranks")


register()

__all__ = ["FSDP2Strategy", "register", "NAME"]
