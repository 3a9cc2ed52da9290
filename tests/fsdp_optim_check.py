"""Run by tests/test_fsdp.py in 2 processes (gloo): an optimiser on FSDP2-sharded parameters (DTensors, one of them
sharded unevenly) against the same optimiser on an unsharded copy, same gradients — Amos (every slot, momentum) or
EG-AdamW (its global scale and per-coordinate RMS are sums over the whole tensor). Usage: fsdp_optim_check.py
amos|eg_adamw OUT.json; rank 0 writes there the largest difference of the parameters after 3 steps, and after 2 more
steps against a copy resumed from the sharded state saved with torch.distributed.checkpoint (exact: 0)."""

import copy
import json
import os
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from kslm.optim.amos import Amos
from kslm.optim.eg import ExponentiatedGradient


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 4)  # 7 rows over 2 ranks: uneven shards
        self.lin = nn.Linear(4, 5)
        self.full = nn.Linear(5, 3, bias=False)

    def forward(self, x):
        return self.full(torch.tanh(self.lin(self.emb(x)))).square().mean()


def groups(net):
    return [{"params": [net.emb.weight], "eta": 0.5, "slot": "row"},
            {"params": [net.lin.weight], "eta": 0.3, "slot": "column"},
            {"params": [net.lin.bias], "eta": 0.1, "slot": "scalar"},
            {"params": [net.full.weight], "eta": 0.2, "slot": "full"}]


def optimizer(name, net):
    if name == "amos":
        return Amos(groups(net), lr=0.05, momentum=0.9)
    return ExponentiatedGradient(torch.optim.AdamW(net.parameters(), lr=0.05), gain_lr=0.5, scale_lr=0.5)


def main(name, out):
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    ref = Net()
    init, sharded = copy.deepcopy(ref), copy.deepcopy(ref)
    fully_shard(sharded, mesh=init_device_mesh("cpu", (dist.get_world_size(),)))
    opts = [optimizer(name, m) for m in (ref, sharded)]
    x = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 1]])  # the same batch on every rank: FSDP's averaged gradient = ref's
    train(zip((ref, sharded), opts, strict=True), x, 3)
    diff = max((a.detach() - b.full_tensor().detach()).abs().max().item()
               for a, b in zip(ref.parameters(), sharded.parameters(), strict=True))
    moved = max((a - b).abs().max().item() for a, b in zip(ref.parameters(), init.parameters(), strict=True))
    slot = opts[1].state[sharded.emb.weight]["v" if name == "amos" else "eg_gain"]
    extra = {"scale": [o.scale for o in opts]} if name != "amos" else {}
    # resume: the sharded state through torch.distributed.checkpoint (as Lightning's fsdp2 saves it) into a fresh copy
    folder = os.path.join(os.path.dirname(os.path.abspath(out)), "dcp")
    dcp.save({"model": get_model_state_dict(sharded), "optim": get_optimizer_state_dict(sharded, opts[1])},
             checkpoint_id=folder)
    again = copy.deepcopy(init)
    fully_shard(again, mesh=init_device_mesh("cpu", (dist.get_world_size(),)))
    opt = optimizer(name, again)
    train([(again, opt)], x, 1)  # (a state to load into, as Lightning's resume has after its setup)
    state = {"model": get_model_state_dict(again), "optim": get_optimizer_state_dict(again, opt)}
    dcp.load(state, checkpoint_id=folder)
    set_model_state_dict(again, state["model"])
    set_optimizer_state_dict(again, opt, state["optim"])
    train([(sharded, opts[1]), (again, opt)], x, 2)
    resumed = max((a.full_tensor() - b.full_tensor()).abs().max().item()
                  for a, b in zip(sharded.parameters(), again.parameters(), strict=True))
    if dist.get_rank() == 0:
        with open(out, "w", encoding="utf-8") as f:
            json.dump({"max_abs_diff": diff, "moved": moved, "slot_placements": [str(p) for p in slot.placements],
                       "resumed_diff": resumed, **extra}, f)
    dist.destroy_process_group()


def train(pairs, x, steps):
    pairs = list(pairs)
    for _ in range(steps):
        for m, opt in pairs:
            m(x).backward()
            opt.step()
            opt.zero_grad()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
