"""kslm's optimisation ideas as config choices (pure torch, never lightning).

    config.py       OptimConfig / PenaltyConfig (typed, validated) and build(module, cfg) -> (optimizer, scheduler)
    optimizers.py   the optimisers by name (adamw, amos, amos_adamw, eg_adamw) and their parameter groups
    amos.py  amos_adamw.py  eg.py  gradient_penalty.py  schedules.py  roles.py   one technique per file
"""

from kslm.optim.amos import Amos
from kslm.optim.amos_adamw import AmosAdamW
from kslm.optim.config import OptimConfig, PenaltyConfig, build
from kslm.optim.eg import ExponentiatedGradient
from kslm.optim.optimizers import OPTIMIZERS, OPTIONS, amos_groups, build_optimizer, param_groups, state_bytes

__all__ = ["OPTIMIZERS", "OPTIONS", "Amos", "AmosAdamW", "ExponentiatedGradient", "OptimConfig", "PenaltyConfig",
           "amos_groups", "build", "build_optimizer", "param_groups", "state_bytes"]
