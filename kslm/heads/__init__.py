"""Span-scoring heads for information extraction (pure PyTorch; never imports lightning)."""

from kslm.heads.global_pointer import EfficientGlobalPointer, GlobalPointer
from kslm.heads.gplinker import GPLinker, decode_triples, flatten_pairs, gplinker_loss, gplinker_targets

__all__ = [
    "EfficientGlobalPointer",
    "GPLinker",
    "GlobalPointer",
    "decode_triples",
    "flatten_pairs",
    "gplinker_loss",
    "gplinker_targets",
]
