"""FSDP2 sharding of a kslm task: `fully_shard` on every block, then on each child module that holds parameters.

torch's FSDP2 (`torch.distributed.fsdp.fully_shard`) turns a module's parameters into DTensors sharded over a
device mesh; each sharded module all-gathers its parameters in its forward and frees them after, and
reduce-scatters its gradients in the backward. One unit per residual block (`Backbone.layers`) keeps one block's
full weights in memory at a time; the backbone itself (embedding, final norm, LM head, tied or not) is the root unit
and stays gathered from its forward to its backward, so `backbone.logits(hidden)` outside `forward` sees whole
weights. Task heads are units of their own. Parameters held by the task itself (not by a child module) would not be
sharded and are refused.

Mixed precision: with bf16 asked for (`--trainer.precision bf16-mixed` / `bf16-true`) on a device with bf16 support
(CUDA), parameters are gathered and computed in bf16 and gradients reduced in fp32 (MixedPrecisionPolicy); on CPU
everything stays fp32 (no native bf16 kernels there). The strategy that calls this is kslm.cli.strategy.FSDP2Strategy.
"""

from typing import Optional

import torch
from torch import nn

from kslm.errors import ConfigError


def mixed_precision(device_type: str, precision: Optional[str]):
    """The MixedPrecisionPolicy for this device and `trainer.precision`, or None (fp32 throughout)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    bf16 = str(precision or "").startswith("bf16")
    if not bf16 or device_type != "cuda" or not torch.cuda.is_bf16_supported():
        return None
    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)


def blocks(module: nn.Module):
    """The residual blocks of a kslm Backbone (an HF encoder: none; it is sharded whole)."""
    layers = getattr(module, "layers", None)
    return list(layers) if isinstance(layers, nn.ModuleList) else []


def shard(task: nn.Module, mesh, mp_policy=None) -> int:
    """fully_shard each block of `task.backbone`, then each direct child of `task` that holds parameters (the
    backbone as root of its blocks, the heads). Returns the number of FSDP units."""
    from torch.distributed.fsdp import fully_shard

    own = [name for name, _ in task.named_parameters(recurse=False)]
    if own:
        raise ConfigError(f"trainer.strategy fsdp2: {type(task).__name__} holds parameters outside its modules "
                          f"({', '.join(own[:3])}); they would not be sharded")
    kwargs = {"mesh": mesh} if mp_policy is None else {"mesh": mesh, "mp_policy": mp_policy}
    units = 0
    backbone = getattr(task, "backbone", None)
    for block in blocks(backbone) if backbone is not None else []:
        fully_shard(block, **kwargs)
        units += 1
    for child in task.children():
        if any(True for _ in child.parameters()):
            fully_shard(child, **kwargs)
            units += 1
    return units


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in module.modules())


__all__ = ["shard", "mixed_precision", "blocks", "is_sharded"]
