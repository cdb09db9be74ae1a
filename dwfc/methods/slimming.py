"""slimming: Network Slimming (Liu et al. 2017), L1 on the BatchNorm scales, then their cut.

After each sparsify step, gamma <- sign(gamma) * max(|gamma| - lr * lambda, 0) on the scale of
every BatchNorm of a removable group (lambda weighted per group by structure.penalty and
penalty_scale); lambda follows DWF's controller on the MAC share. Channels are ranked by |gamma|
(Torch-Pruning's `BNScaleImportance`, over the group's mean); groups without BatchNorm are not
pruned (their channels score +inf, which the cut never takes). Models without BatchNorm, and
targets that the BatchNorm groups alone cannot reach, are refused before training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch_pruning as tp
from torch import Tensor, nn

from dwfc.config import Recipe
from dwfc.engine.schedule import Schedule
from dwfc.errors import InputError, named
from dwfc.methods.base import Method
from dwfc.methods.channels import PrunedChannels
from dwfc.structure.groups import NORMS
from dwfc.structure.plan import ChannelPlan

if TYPE_CHECKING:
    from dwfc.engine.trainer import Trainer


class Slimming(PrunedChannels):
    name = "slimming"
    title = "Network Slimming"
    importance = tp.importance.BNScaleImportance(normalizer=None)

    def __init__(self, model: nn.Module, plan: ChannelPlan, recipe: Recipe, schedule: Schedule):
        modules = dict(model.named_modules())
        self.scales = {g.name: [gt for gt in g.members if gt.param.endswith(".weight")
                                and isinstance(modules[gt.param.rpartition(".")[0]], NORMS)]
                       for g in plan.removable}  # fmt: skip
        if not any(self.scales.values()):
            raise InputError("sparsity.method=slimming prunes by BatchNorm scales, and no "
                             "removable channel group has a BatchNorm")  # fmt: skip
        most = plan.speedup({g.name: list(range(g.size - g.keeps)) for g in plan.removable
                             if self.scales[g.name]})  # fmt: skip
        target = recipe.structure.target_speedup
        if most < target:
            raise InputError(f"sparsity.method=slimming removes only channels with a BatchNorm "
                             f"scale: at most {most:.2f}x, less than "
                             f"{named('structure.target_speedup')}={target:g}")  # fmt: skip
        super().__init__(model, plan, recipe, schedule)
        self.weighting = self.penalty_weights(1.0)
        self.ctl = self.make_controller(recipe.structure.lambda_init)

    phase = Method.phase

    def weights(self) -> dict[str, Tensor]:
        """|gamma| of each channel (over the group's BatchNorms): what the penalty shrinks; ones
        for a group without BatchNorm (never removed, so never counted as removable)."""
        return {g.name: self.channel_norms(g, self.scales[g.name]) if self.scales[g.name]
                else torch.ones(g.size) for g in self.groups}  # fmt: skip

    def after_step(self, trainer: Trainer, step: int) -> None:
        lam = self.lam
        if lam is not None:
            threshold = trainer.lr_at(step - 1) * lam
            with torch.no_grad():
                for name, scale in self.scales.items():
                    for gt in scale:
                        p = self.params[gt.param]
                        cut = threshold * self.weighting[name]
                        p.copy_(torch.sign(p) * (p.abs() - cut).clamp_min(0.0))
        super().after_step(trainer, step)
