"""oneshot: the global magnitude cut to the target at step 0, then masked training throughout."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dwfc.methods.pruning import PrunedWeights
from dwfc.sparsity import global_magnitude_masks

if TYPE_CHECKING:
    from dwfc.engine.trainer import Trainer


class OneShot(PrunedWeights):
    name = "oneshot"
    title = "one-shot magnitude pruning"

    def start(self, trainer: Trainer) -> None:
        trainer.final_cut(global_magnitude_masks(self.weights(), self.recipe.sparsity.target))
