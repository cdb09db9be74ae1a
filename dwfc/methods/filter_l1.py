"""filter_l1: L1-norm filter pruning (Li et al. 2016), one-shot, then masked training throughout.

At step 0 each channel is scored by the L1 norm of its root layer's filter (Torch-Pruning's
`MagnitudeImportance(p=1, group_reduction="first")`) over its group's mean, and the exact cut
removes the weakest to the target speed-up; the whole budget then trains the smaller network.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch_pruning as tp

from dwfc.methods.channels import PrunedChannels

if TYPE_CHECKING:
    from dwfc.engine.trainer import Trainer


class FilterL1(PrunedChannels):
    name = "filter_l1"
    title = "L1-norm filter pruning"
    importance = tp.importance.MagnitudeImportance(p=1, group_reduction="first", normalizer=None)

    def start(self, trainer: Trainer) -> None:
        self.final_cut(trainer, self.scores())
