"""The paper's per-step learning-rate schedule (docs/method.md, Training)."""
from __future__ import annotations

import math


def warmup_cosine_lr(step: int, *, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float) -> float:
    """Linear warm-up from ``min_lr`` to ``base_lr`` over ``warmup_steps``, then cosine back to ``min_lr``.

    ``lr = (base_lr - min_lr) * 0.5 * (1 + cos(pi * progress)) + min_lr`` after warm-up, ``progress`` in [0, 1].
    """
    if warmup_steps > 0 and step < warmup_steps:
        return min_lr + (base_lr - min_lr) * step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress)) + min_lr
