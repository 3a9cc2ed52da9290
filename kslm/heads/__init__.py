"""Span-scoring heads for information extraction (pure PyTorch; never imports lightning)."""

from kslm.heads.global_pointer import EfficientGlobalPointer, GlobalPointer

__all__ = ["EfficientGlobalPointer", "GlobalPointer"]
