"""gmp: gradual magnitude pruning (Zhu & Gupta 2017) with a global magnitude criterion.

The mask's sparsity follows a cubic ramp from 0 to the target over the ramp (the share
`sparsity.ramp_fraction` of the sparsify steps), recomputed every `sparsity.prune_every` steps;
from the end of the ramp on the mask is final.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from dwfc.config import Recipe
from dwfc.engine import distributed as dist
from dwfc.engine.schedule import Schedule
from dwfc.methods.pruning import PrunedWeights
from dwfc.sparsity import global_magnitude_masks

if TYPE_CHECKING:
    from dwfc.engine.trainer import Trainer


def gmp_sparsity(step: int, target: float, ramp_steps: int, start: float = 0.0) -> float:
    """Zhu & Gupta's cubic schedule: `start` at step 0, `target` from `ramp_steps` on.

    Example:
        >>> gmp_sparsity(0, 0.9, 100), gmp_sparsity(100, 0.9, 100)
        (0.0, 0.9)
    """
    p = min(max(step / max(ramp_steps, 1), 0.0), 1.0)
    return target + (start - target) * (1.0 - p) ** 3


class Gmp(PrunedWeights):
    name = "gmp"
    title = "gradual magnitude pruning"

    def __init__(self, model: nn.Module, names: list[str], recipe: Recipe, schedule: Schedule):
        super().__init__(model, names, recipe, schedule)
        self.prune_every = recipe.sparsity.prune_every or recipe.train.log_every

    def before_step(self, trainer: Trainer, step: int, lr: float) -> None:
        super().before_step(trainer, step, lr)
        ramp = self.schedule.ramp
        due = step % self.prune_every == 0 or step == ramp
        if self.final or step > ramp or not due:
            return
        masks = global_magnitude_masks(
            self.weights(), gmp_sparsity(step, self.recipe.sparsity.target, ramp)
        )
        if step == ramp:
            trainer.final_cut(masks)
        else:
            self.set_masks(dist.broadcast_masks(masks), trainer.opt)

    def phase(self, step: int) -> str:
        return "prune" if step <= self.schedule.ramp else "masked"
