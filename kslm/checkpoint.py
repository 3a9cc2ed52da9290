"""Reading kslm checkpoints: Lightning .ckpt files with the backbone config and tokenizer inside.

Everything here loads with `torch.load(weights_only=True)`: a checkpoint may come from someone else.
"""

from pathlib import Path
from typing import Tuple

import torch

from kslm.errors import CheckpointError


def read_checkpoint(path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint not found")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{p}: cannot read checkpoint ({str(exc).splitlines()[0]})") from None


def load_backbone(path, prefix: str = "backbone.") -> Tuple["object", dict, "object"]:
    """→ (BackboneConfig, backbone state_dict, tokenizers.Tokenizer) from a kslm LM checkpoint."""
    from kslm.data.tokenizer import tokenizer_from_checkpoint
    from kslm.nn import BackboneConfig

    ckpt = read_checkpoint(path)
    if "kslm" not in ckpt or "backbone" not in ckpt["kslm"]:
        raise CheckpointError(f"{path}: not a kslm checkpoint (no backbone config inside)")
    cfg = BackboneConfig.from_dict(ckpt["kslm"]["backbone"])
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    return cfg, state, tokenizer_from_checkpoint(ckpt, path)
