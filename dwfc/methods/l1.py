"""l1: L1 trained directly by proximal SGD, lambda steered to the target like DWF's.

After each sparsify step, w <- sign(w) * max(|w| - lr * lambda, 0) on the pruned weights; then
the exact global magnitude cut and the masked fine-tune.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from dwfc.config import Recipe
from dwfc.engine.schedule import Schedule
from dwfc.methods.base import Method
from dwfc.methods.pruning import PrunedWeights

if TYPE_CHECKING:
    from dwfc.engine.trainer import Trainer


class L1(PrunedWeights):
    name = "l1"
    title = "L1 proximal SGD"

    def __init__(self, model: nn.Module, names: list[str], recipe: Recipe, schedule: Schedule):
        super().__init__(model, names, recipe, schedule)
        self.ctl = self.make_controller(recipe.sparsity.l1_lambda_init)

    phase = Method.phase  # sparsify, then settle: as DWF

    def after_step(self, trainer: Trainer, step: int) -> None:
        lam = self.lam
        if lam is not None:  # before the cut: the proximal step of lambda * sum |w|
            threshold = trainer.lr_at(step - 1) * lam
            with torch.no_grad():
                for p in self.params.values():
                    p.copy_(torch.sign(p) * (p.abs() - threshold).clamp_min(0.0))
        super().after_step(trainer, step)
