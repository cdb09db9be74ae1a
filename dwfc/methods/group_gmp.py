"""group_gmp: gradual group-magnitude pruning, Torch-Pruning's importance on Zhu & Gupta's ramp.

Every `sparsity.prune_every` steps of the ramp, channels are scored by their group's L2 magnitude
(Torch-Pruning's `GroupMagnitudeImportance`, over the group's mean) and the weakest removed to
the MAC share of the cubic schedule (estimated); removed channels stay removed. At the end of
the ramp, the exact cut to the target speed-up, counted on the smaller model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch_pruning as tp

from dwfc.engine import distributed as dist
from dwfc.methods.channels import PrunedChannels
from dwfc.methods.gmp import gmp_sparsity

if TYPE_CHECKING:
    from dwfc.engine.trainer import Trainer


class GroupGmp(PrunedChannels):
    name = "group_gmp"
    title = "gradual group-magnitude pruning"
    importance = tp.importance.GroupMagnitudeImportance(
        p=2, group_reduction="mean", normalizer=None
    )

    def before_step(self, trainer: Trainer, step: int, lr: float) -> None:
        super().before_step(trainer, step, lr)
        ramp = self.schedule.ramp
        every = self.recipe.sparsity.prune_every or self.recipe.train.log_every
        if self.final or step > ramp or (step % every and step != ramp):
            return
        if step == ramp:
            self.final_cut(trainer, self.scores())
            return
        share = gmp_sparsity(step, self.target, ramp)
        if share > 0:
            masks = self.cut(self.scores(), 1.0 / (1.0 - share), exact=False)
            self.set_masks(dist.broadcast_masks(masks), trainer.opt)

    def phase(self, step: int) -> str:
        return "prune" if step <= self.schedule.ramp else "masked"
