"""group_lasso: group lasso by proximal SGD, lambda steered to the target, then magnitude pruning.

The penalty is sum_c lambda_g ||w_c||_2 over the same channel weights D-Gating gates (lambda_g:
lambda weighted by structure.penalty and penalty_scale, as for D-Gating). After each
sparsify step, w_c <- w_c * max(0, 1 - lr * lambda / ||w_c||); lambda follows DWF's controller
on the MAC share. Then the exact cut by channel norm and the masked fine-tune.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from dwfc.config import Recipe
from dwfc.engine.schedule import Schedule
from dwfc.methods.base import Method
from dwfc.methods.channels import PrunedChannels
from dwfc.structure.plan import ChannelPlan

if TYPE_CHECKING:
    from dwfc.engine.trainer import Trainer


class GroupLasso(PrunedChannels):
    name = "group_lasso"
    title = "group lasso + magnitude pruning"

    def __init__(self, model: nn.Module, plan: ChannelPlan, recipe: Recipe, schedule: Schedule):
        super().__init__(model, plan, recipe, schedule)
        self.weighting = self.penalty_weights(1.0)
        self.ctl = self.make_controller(recipe.structure.lambda_init)

    phase = Method.phase  # sparsify, then settle: as DWF

    def scores(self) -> dict[str, torch.Tensor]:
        return self.relative_norms()

    def after_step(self, trainer: Trainer, step: int) -> None:
        lam = self.lam
        if lam is not None:
            threshold = trainer.lr_at(step - 1) * lam
            with torch.no_grad():
                for g in self.groups:
                    cut = threshold * self.weighting[g.name]
                    shrink = (1.0 - cut / self.channel_norms(g).clamp_min(1e-12)).clamp_min(0.0)
                    for gt in g.gated:
                        param = self.params[gt.param]
                        factor = torch.ones(
                            param.shape[gt.dim], dtype=param.dtype, device=param.device
                        )
                        factor[list(gt.positions)] = shrink[list(gt.channels)].to(
                            param.device, param.dtype
                        )
                        param.mul_(gt.along(factor, param))
        super().after_step(trainer, step)
