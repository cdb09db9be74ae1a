"""random: a uniformly random mask with the exact count at step 0 (seeded by train.seed), then
masked training throughout: the floor any pruning criterion must beat."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from dwfc.methods.pruning import PrunedWeights
from dwfc.sparsity import split_flat

if TYPE_CHECKING:
    from dwfc.engine.trainer import Trainer


def random_masks(
    weights: dict[str, Tensor], sparsity: float, generator: torch.Generator
) -> dict[str, Tensor]:
    """Uniformly random masks over all weights keeping exactly N - round(sparsity * N) entries."""
    total = sum(w.numel() for w in weights.values())
    keep = total - round(sparsity * total)
    keep_flat = torch.zeros(total, dtype=torch.bool)
    keep_flat[torch.randperm(total, generator=generator)[:keep]] = True
    return split_flat(keep_flat, weights)


class Random(PrunedWeights):
    name = "random"
    title = "random pruning"

    def start(self, trainer: Trainer) -> None:
        generator = torch.Generator().manual_seed(self.recipe.train.seed)
        trainer.final_cut(random_masks(self.weights(), self.recipe.sparsity.target, generator))
