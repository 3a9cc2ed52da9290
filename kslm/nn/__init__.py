"""Pure-PyTorch building blocks (never imports lightning)."""

from kslm.nn.backbone import Backbone, BackboneConfig

__all__ = ["Backbone", "BackboneConfig"]
