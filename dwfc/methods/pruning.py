"""What the pruning baselines share: they train the selected weights themselves, masked.

Same budget and schedule as DWF (dwfc/engine/schedule.py); plain L2 weight decay
(`train.weight_decay`) on the pruned weights only, and only in the sparsify phase. While a mask
is in force, pruned weights and their momentum are zeroed after every step (docs/baselines.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from dwfc.config import Recipe
from dwfc.engine.schedule import SPARSIFY, Schedule
from dwfc.errors import InputError
from dwfc.methods.base import Method
from dwfc.sparsity import fraction_below, global_magnitude_masks

if TYPE_CHECKING:
    from dwfc.engine.outcome import TrainOutcome
    from dwfc.engine.trainer import Trainer


class TrainsWeights:
    """What every baseline that trains its plain weights shares (mixed in before its Method
    class): the pruned tensors `self.params` in their own optimizer group with plain L2 decay
    in the sparsify phase only, their masks applied after each step."""

    params: dict[str, nn.Parameter]
    trains = "weights"

    def param_groups(self) -> list[dict[str, Any]]:
        pruned = {id(p) for p in self.params.values()}
        others = [p for p in self.model.parameters() if p.requires_grad and id(p) not in pruned]
        groups: list[dict[str, Any]] = [{"params": list(self.params.values()), "pruned": True}]
        if others:
            groups.append({"params": others, "pruned": False})
        return groups

    def before_step(self, trainer: Trainer, step: int, lr: float) -> None:
        decay = self.recipe.train.weight_decay if trainer.phase == SPARSIFY else 0.0
        for group in trainer.opt.param_groups:
            group["lr"] = lr
            group["weight_decay"] = decay if group["pruned"] else 0.0

    def after_step(self, trainer: Trainer, step: int) -> None:
        self.apply_masks(trainer.opt)

    def phase(self, step: int) -> str:
        return "masked"

    @classmethod
    def summary(cls, recipe: Recipe, outcome: TrainOutcome) -> dict[str, Any]:
        return {**super().summary(recipe, outcome), "weight_decay": recipe.train.weight_decay}


class PrunedWeights(TrainsWeights, Method):
    """A baseline: masks on the plain weights `names`, no factorization."""

    def __init__(self, model: nn.Module, names: list[str], recipe: Recipe, schedule: Schedule):
        try:
            self.params = {n: model.get_parameter(n) for n in names}
        except AttributeError as exc:
            raise InputError(f"sparsity.method={self.name}: {exc}") from None
        if not self.params:
            raise InputError(f"sparsity.method={self.name}: no weight selected to prune")
        super().__init__(model, names, recipe, schedule)

    def weights(self) -> dict[str, Tensor]:
        return {n: p.detach() for n, p in self.params.items()}

    def set_masks(self, masks: dict[str, Tensor] | None, opt: Optimizer | None) -> None:
        if masks is None:
            self.masks = None
            return
        self.masks = {n: m.to(self.params[n].device).bool() for n, m in masks.items()}
        self.apply_masks(opt)

    def apply_masks(self, opt: Optimizer | None) -> None:
        """Zero the pruned weights and their momentum."""
        if self.masks is None:
            return
        with torch.no_grad():
            for name, p in self.params.items():
                mask = self.masks[name]
                p.mul_(mask)
                buf = opt.state.get(p, {}).get("momentum_buffer") if opt is not None else None
                if buf is not None:
                    buf.mul_(mask)

    def end_of_sparsify(self, trainer: Trainer) -> None:
        sc = self.recipe.sparsity
        if not self.final:  # l1; gmp when its ramp ends with the sparsify phase
            trainer.final_cut(global_magnitude_masks(self.weights(), sc.target))
        weights, out = self.weights(), trainer.outcome
        out.sparsity_eps = fraction_below(weights, sc.eps)
        out.sparsity_relative = fraction_below(weights, self.relative)
        self.record_penalty(out)
