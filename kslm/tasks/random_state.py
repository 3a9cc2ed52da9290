"""Random state across processes and resumes: seeds every process derives alike, each rank's generator state in a
checkpoint, and the state a resumed rank takes back (so dropout resumes exactly on one process or many)."""

import hashlib
from typing import Optional

import torch

from kslm.checkpoint import Payload


def stable_seed(*keys) -> int:
    """A seed from keys that is the same in every process (Python's hash() of str is salted per process)."""
    return int.from_bytes(hashlib.sha256(repr(keys).encode()).digest()[:8], "little") >> 1


def random_state() -> dict:
    """This process's random state: the CPU generator's, and the current GPU's where one has been used."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def own_random_state(payload: Payload, rank: int, world: int) -> Optional[dict]:
    """The random state rank `rank` of `world` resumes with: its own from the checkpoint's ranks, else (another
    number of ranks, or a checkpoint from before each rank's was kept) rank 0's CPU state."""
    if payload.rngs and len(payload.rngs) == world:
        return payload.rngs[rank]
    return {"cpu": payload.rng} if payload.rng is not None else None


def every_rank(obj) -> list:
    """[obj of rank 0, obj of rank 1, …]: every rank saves a checkpoint together (Lightning's save), so gathering
    here is safe; one process: [obj]."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def rng_state():
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def set_rng_state(state):
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


__all__ = ["stable_seed", "random_state", "own_random_state", "every_rank", "rng_state", "set_rng_state"]
