"""Learning-rate multipliers: linear warmup then constant, linear or cosine decay to `min_ratio`.

    m(t) = t / w                                             for t < w
    cosine: m(t) = r + (1 − r) · ½(1 + cos(π · p)),  p = (t − w) / (T − w) clipped to [0, 1]
"""

import math

from torch.optim.lr_scheduler import LambdaLR


class WarmupDecay:
    """A picklable multiplier function for LambdaLR."""

    def __init__(self, warmup_steps: int, total_steps: int, kind: str = "cosine", min_ratio: float = 0.1):
        if kind not in ("cosine", "linear", "constant"):
            raise ValueError(f"unknown schedule {kind!r} (cosine | linear | constant)")
        self.warmup, self.total, self.kind, self.min_ratio = warmup_steps, max(total_steps, 1), kind, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "constant":
            return 1.0
        p = min(max((step - self.warmup) / max(self.total - self.warmup, 1), 0.0), 1.0)
        shape = 0.5 * (1 + math.cos(math.pi * p)) if self.kind == "cosine" else 1 - p
        return self.min_ratio + (1 - self.min_ratio) * shape


def warmup_decay(optimizer, warmup_steps: int, total_steps: int, kind: str = "cosine", min_ratio: float = 0.1) -> LambdaLR:
    return LambdaLR(optimizer, WarmupDecay(warmup_steps, total_steps, kind, min_ratio))
