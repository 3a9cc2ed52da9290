"""Parameter roles and their model-oriented scale η (Amos, arXiv 2210.11693; google-research/jestimator).

Every trainable tensor gets a role from the module that owns it (never from a hand-typed table):

    role        tensors                                          η (expected entry scale)   Amos slot shape
    embedding   nn.Embedding.weight [V, d]                       √(2/d)                     [V, 1]  per row
    kernel      nn.Linear.weight [out, in]                       √(1/in)                    [out, 1] per output unit
    ffn_out     the FFN's / GAU's output matrix [d, d_ff]        √(2/d_ff)                  [out, 1]
    bias        biases, LayerNorm β, GAU offsets (init 0)        0.5                        scalar
    gain        LayerNorm / RMSNorm γ, GAU scales (init 1)       1.0                        scalar

These are jestimator's BERT `eta_fn` / `shape_fn` rules: the fan-in of a kernel is the backbone's d (d_ff or
e = expansion·d for the FFN / GAU output), so η follows the config through the shapes. torch stores a Linear
weight as [out, in], so jestimator's per-output-column slot (1, out) of an (in, out) kernel is our [out, 1] row.
A module marks its FFN output matrix with a class attribute `ffn_output = "<child name>"`.
"""

import math
from typing import Iterator, NamedTuple

from torch import nn

ETA_CONSTANT = {"bias": 0.5, "gain": 1.0}


class Role(NamedTuple):
    name: str
    param: nn.Parameter
    role: str  # embedding | kernel | ffn_out | bias | gain
    eta: float
    slot: str  # row | scalar (column and full are supported by Amos for other layouts)


def _norm_like(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm)) or "norm" in type(module).__name__.lower()


def _own_role(module: nn.Module, pname: str, p: nn.Parameter, ffn_outputs: set):
    if isinstance(module, nn.Embedding) and pname == "weight":
        return "embedding", math.sqrt(2 / p.shape[1]), "row"
    if p.dim() >= 2:
        fan_in = p[0].numel()
        if id(module) in ffn_outputs:
            return "ffn_out", math.sqrt(2 / fan_in), "row"
        return "kernel", math.sqrt(1 / fan_in), "row"
    if _norm_like(module) and pname == "weight" or pname.endswith("scale"):
        return "gain", ETA_CONSTANT["gain"], "scalar"
    return "bias", ETA_CONSTANT["bias"], "scalar"


def parameter_roles(model: nn.Module) -> Iterator[Role]:
    """Each trainable parameter once (tied weights once), with its role, η and Amos slot shape."""
    ffn_outputs = set()
    for m in model.modules():
        child = getattr(type(m), "ffn_output", None)
        if child is not None:
            ffn_outputs.add(id(getattr(m, child)))
    seen = set()
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            role, eta, slot = _own_role(module, pname, p, ffn_outputs)
            yield Role(f"{mname}.{pname}" if mname else pname, p, role, eta, slot)


__all__ = ["Role", "parameter_roles"]
