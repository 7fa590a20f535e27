"""Learning-rate schedules as pure functions of the optimizer step.

The official AVS-Mamba, TPAVI and AVSegFormer recipes train at a constant rate (``constant``, the default); COMBO-AVS
and mmseg-style recipes use ``poly``; ``cosine`` suits short fixed budgets such as the CPU smoke runs. Each can start
with a linear warm-up. The rate depends on the step alone, so a resumed run continues the curve with no extra state.
"""

from __future__ import annotations

import math
from typing import Literal

__all__ = ["LR_SCHEDULES", "LRSchedule", "lr_at"]

LRSchedule = Literal["constant", "cosine", "poly"]
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine", "poly")
POLY_POWER = 0.9  # mmseg / COMBO-AVS


def lr_at(step: int, total_steps: int, base_lr: float, schedule: str = "constant", warmup_steps: int = 0) -> float:
    """Learning rate of optimizer step ``step`` (0-based) out of ``total_steps``.

    Warm-up: steps 0..warmup_steps-1 rise linearly to ``base_lr`` (step 0 at base_lr / warmup_steps). After it,
    ``cosine`` decays as 0.5 (1 + cos(pi p)) and ``poly`` as (1 - p)^0.9, with p the fraction of the post-warm-up
    steps already taken, so the last step runs at a small positive rate and a run never takes a step at rate 0.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; choose from {', '.join(LR_SCHEDULES)}")
    if total_steps < 1 or not 0 <= step < total_steps:
        raise ValueError(f"step {step} is outside a schedule of {total_steps} steps")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return base_lr * (1.0 - progress) ** POLY_POWER
