"""The step budget of a run and its learning-rate schedule, the same for every method.

A run has two phases on one loader: `sparsify` (`train.epochs`; the target is reached over its
first `ramp` steps) and `finetune` (`sparsity.finetune_epochs`, masked). The rate is `train.lr`
on a cosine down to `train.min_lr_ratio` (after an optional linear warm-up) over `sparsify`,
then `sparsity.finetune_lr` on a cosine down to 0 over `finetune`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

from dwfc.config import Recipe

SPARSIFY, FINETUNE = "sparsify", "finetune"  # the two phases of every run


def cosine(progress: float, min_ratio: float) -> float:
    """1 at progress 0, `min_ratio` at progress 1 and after, a half cosine between."""
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


@dataclass(frozen=True)
class Schedule:
    """Steps of each phase and the rate at each step.

    Example:
        schedule = Schedule.of(recipe, steps_per_epoch=len(train_loader))
        schedule.lr_at(0)  # train.lr
    """

    steps_per_epoch: int
    total: int  # steps of the sparsify phase
    ramp: int  # steps over which the sparsity ramps to the target
    finetune: int  # steps of the masked fine-tune
    lr: float
    warmup: int
    cosine: bool
    min_lr_ratio: float
    finetune_lr: float

    @classmethod
    def of(cls, recipe: Recipe, steps_per_epoch: int) -> Schedule:
        tc, sc = recipe.train, recipe.sparsity
        total = tc.epochs * steps_per_epoch
        return cls(
            steps_per_epoch=steps_per_epoch, total=total,
            ramp=max(1, round(sc.ramp_fraction * total)),
            finetune=sc.finetune_epochs * steps_per_epoch, lr=cast(float, tc.lr),  # set by Recipe
            warmup=round(tc.warmup_epochs * steps_per_epoch), cosine=tc.schedule == "cosine",
            min_lr_ratio=tc.min_lr_ratio, finetune_lr=sc.finetune_lr,
        )  # fmt: skip

    def lr_at(self, step: int) -> float:
        """The learning rate of global step `step` (fine-tune steps count on from `total`)."""
        if step >= self.total:
            return self.finetune_lr * cosine((step - self.total) / max(1, self.finetune), 0.0)
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        if self.cosine:
            return self.lr * cosine(step / self.total, self.min_lr_ratio)
        return self.lr
