"""Optimiser groups and the warmup/decay schedule against their formulas."""

import math

import pytest
import torch

from kslm.nn import Backbone, BackboneConfig
from kslm.optim import build_optimizer, param_groups
from kslm.optim.schedules import WarmupDecay


@pytest.mark.parametrize("block", ["transformer", "gau"])
def test_no_weight_decay_on_norms_biases_scales_embeddings(block):
    m = Backbone(BackboneConfig(block=block, vocab_size=50, d_model=16, n_heads=2, qk_dim=8, n_layers=2,
                                tie_embeddings=False))
    groups = param_groups(m, 0.1)
    decayed = {id(p) for p in groups[0]["params"]}
    names = {n for n, p in m.named_parameters() if id(p) in decayed}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert "embed.weight" not in names
    assert not any("norm" in n or "scale" in n or "offset" in n for n in names)
    assert all(p.dim() == 2 for p in groups[0]["params"])
    assert "head.proj.weight" in names  # the untied output matrix is a matrix like any other
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in m.parameters())


def test_build_optimizer_unknown_name():
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer("sgdx", torch.nn.Linear(2, 2), lr=1.0)


def test_warmup_cosine_formula():
    f = WarmupDecay(warmup_steps=10, total_steps=110, kind="cosine", min_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    for t in (10, 35, 60, 85, 110, 500):
        p = min((t - 10) / 100, 1.0)
        assert f(t) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))
    lin = WarmupDecay(0, 100, "linear", 0.0)
    assert lin(50) == pytest.approx(0.5) and lin(100) == pytest.approx(0.0)
    assert WarmupDecay(5, 100, "constant")(60) == 1.0
