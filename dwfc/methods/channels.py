"""What the channel methods share (structure.kind=channel): their unit is a channel of a group.

A channel's weights w_c are its slices of the group's gated tensors (dwfc/structure/groups.py);
`weights()` gives each group's channel norms ||w_c||, and a group's scale is the RMS of its
initial channel norms. The sparsity a channel method measures is a share of MACs: 1 - (MACs
with the channels under a threshold removed) / dense MACs (the estimate of
dwfc/structure/macs.py), so the controller steers MACs; its target is 1 - 1 / target_speedup.
Masks are one bool per channel (True: kept); the exact cut is `dwfc.structure.cut`, counted by
Torch-Pruning on the smaller model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch.optim import Optimizer

from dwfc.config import Recipe
from dwfc.engine.schedule import Schedule
from dwfc.errors import InputError
from dwfc.methods.base import Method
from dwfc.methods.pruning import TrainsWeights
from dwfc.structure.cut import Removed, cut_to_speedup, keep_masks, removed_from
from dwfc.structure.groups import ChannelGroup, GatedTensor, build_graph
from dwfc.structure.plan import ChannelPlan

if TYPE_CHECKING:
    from dwfc.engine.outcome import TrainOutcome
    from dwfc.engine.trainer import Trainer


class ChannelMethod(Method):
    """A method over the channels of `plan.removable`."""

    structure = "channel"

    def __init__(self, model: nn.Module, plan: ChannelPlan, recipe: Recipe, schedule: Schedule):
        if not isinstance(plan, ChannelPlan):
            raise InputError(f"sparsity.method={self.name} with structure.kind=channel works "
                             "on a channel plan (dwfc.structure.plan_channels)")  # fmt: skip
        self.plan, self.groups = plan, plan.removable
        self.removed: Removed = {}
        super().__init__(model, [g.name for g in self.groups], recipe, schedule)

    # -- channels ------------------------------------------------------------------------
    def tensor(self, gt: GatedTensor) -> Tensor:
        """The current value of a gated tensor (its gates multiplied in, if any)."""
        owner, _, attr = gt.param.rpartition(".")
        return getattr(self.model.get_submodule(owner), attr)

    def channel_norms(
        self, group: ChannelGroup, tensors: list[GatedTensor] | None = None
    ) -> Tensor:
        """||w_c|| of each channel: over its slices of `tensors` (default: the gated ones)."""
        with torch.no_grad():
            squares = torch.zeros(group.size, dtype=torch.float32)
            for gt in group.gated if tensors is None else tensors:
                squares += gt.squares(self.tensor(gt).detach().float(), group.size).cpu()
        return squares.sqrt()

    def weights(self) -> dict[str, Tensor]:
        return {g.name: self.channel_norms(g) for g in self.groups}

    def relative_norms(self) -> dict[str, Tensor]:
        """Each channel's norm in units of its group's current RMS: a group's scale can be free
        (BatchNorm reads it), and a group shrinking as a whole is not sparse."""
        return {name: norms / (float(norms.pow(2).mean().sqrt()) or 1.0)
                for name, norms in self.weights().items()}  # fmt: skip

    def scores(self) -> dict[str, Tensor]:
        """What the cut ranks channels by: norms in units of the group's scale."""
        return self.relative_norms()

    def _mac_share(self, keep: dict[str, Tensor]) -> float:
        flat = torch.cat([keep[g.name] for g in self.groups])
        return 1.0 - self.plan.estimate.macs(flat) / self.plan.dense_macs

    def _kept_above(
        self, weights: dict[str, Tensor], thresholds: dict[str, float] | float
    ) -> dict[str, Tensor]:
        """The channels a cut at `thresholds` would keep: at or above them, rounded up to what
        a group may keep (a multiple of structure.round_to, its minimum, or all)."""
        keep, step = {}, self.plan.round_to
        for g in self.groups:
            t = thresholds if isinstance(thresholds, float) else thresholds[g.name]
            above = int((weights[g.name] >= t).sum())
            count = min(g.size, max(g.keeps, -(-above // step) * step))
            mask = torch.zeros(g.size, dtype=torch.bool)
            mask[torch.topk(weights[g.name], count).indices] = True
            keep[g.name] = mask
        return keep

    def measure(self) -> tuple[float, float, float]:
        weights, sc = self.weights(), self.recipe.sparsity
        relative = self.relative_norms()
        return (self._mac_share(self._kept_above(weights, sc.eps)),
                self._mac_share(self._kept_above(relative, sc.relative_threshold)),
                self._mac_share(self._kept_above(relative, sc.control_threshold)))  # fmt: skip

    @property
    def target(self) -> float:
        return 1.0 - 1.0 / self.recipe.structure.target_speedup

    def penalty_weights(self, exponent: float) -> dict[str, float]:
        """Each group's multiplier of lambda, for a penalty on `||w_c||^exponent`: by the MACs
        one channel costs (structure.penalty=macs) or equal, and with
        structure.penalty_scale=group divided by the group's scale^exponent, so that the
        penalty, like the cut and the controller, reads channel norms in units of the group's
        scale (a group a BatchNorm normalises is free in scale). 1 on average over the
        channels."""
        st = self.recipe.structure
        weights = {g.name: self.plan.channel_macs[g.name] if st.penalty == "macs" else 1.0
                   for g in self.groups}  # fmt: skip
        if st.penalty_scale == "group":
            weights = {n: w / max(self.rms[n], 1e-12) ** exponent for n, w in weights.items()}
        channels = sum(g.size for g in self.groups)
        mean = sum(weights[g.name] * g.size for g in self.groups) / channels if channels else 1.0
        return {n: w / mean if mean > 0 else 1.0 for n, w in weights.items()}

    def cut(
        self, scores: dict[str, Tensor], speedup: float, exact: bool = True
    ) -> dict[str, Tensor]:
        """Keep masks reaching `speedup`: counted on the smaller model (`exact`), or estimated."""
        def estimated(removed: Removed) -> float:
            return 1.0 / max(1e-12, 1.0 - self._mac_share(keep_masks(self.groups, removed)))

        measured = self.plan.speedup if exact else estimated
        removed = cut_to_speedup(self.groups, scores, self.plan.round_to, speedup, measured,
                                 estimated)  # fmt: skip
        return keep_masks(self.groups, removed)

    def final_cut(self, trainer: Trainer, scores: dict[str, Tensor]) -> None:
        """The exact cut to the target speed-up, made final; what training reached, recorded."""
        out = trainer.outcome
        out.sparsity_eps, out.sparsity_relative, out.sparsity_controlled = self.measure()
        self.record_penalty(out)
        masks = trainer.final_cut(self.cut(scores, self.recipe.structure.target_speedup))
        out.removed = removed_from(masks)

    def set_masks(self, masks: dict[str, Tensor] | None, opt: Optimizer | None) -> None:
        self.masks = None if masks is None else {n: m.bool().cpu() for n, m in masks.items()}
        self.removed = {} if masks is None else removed_from(self.masks or {})
        self.apply_masks(opt)

    def apply_masks(self, opt: Optimizer | None) -> None:  # noqa: B027 - gates mask themselves
        """Zero what the masks remove (methods that train the weights themselves)."""

    @classmethod
    def summary(cls, recipe: Recipe, outcome: TrainOutcome) -> dict[str, Any]:
        return {**super().summary(recipe, outcome), "structure": cls.structure}


class PrunedChannels(TrainsWeights, ChannelMethod):
    """A channel baseline: trains the plain weights; a removed channel's output slices (every
    layer's of the group, not only the gated ones) are held at zero, and stay removed."""

    importance: tp.importance.Importance  # Torch-Pruning's channel importance, for `scores`

    def __init__(self, model: nn.Module, plan: ChannelPlan, recipe: Recipe, schedule: Schedule):
        super().__init__(model, plan, recipe, schedule)
        self.params = {gt.param: model.get_parameter(gt.param)
                       for g in self.groups for gt in g.members}  # fmt: skip
        self._graph: tp.DependencyGraph | None = None

    def cut(self, scores: dict[str, Tensor], speedup: float, exact: bool = True
            ) -> dict[str, Tensor]:  # fmt: skip
        """As ChannelMethod.cut, but a channel removed once stays removed."""
        masks = super().cut(scores, speedup, exact)
        if self.masks is None:
            return masks
        return {name: mask & self.masks[name] for name, mask in masks.items()}

    def scores(self) -> dict[str, Tensor]:
        """Torch-Pruning's importance of each channel over the group's mean; -inf once removed."""
        if self._graph is None:
            device = next(self.model.parameters()).device
            self._graph = build_graph(
                self.model, torch.zeros(1, *self.plan.input_shape, device=device)
            )
        modules = dict(self.model.named_modules())
        scores = {}
        for g in self.groups:
            root = modules[g.name]
            pruner = self._graph.get_pruner_of_module(root)
            group = self._graph.get_pruning_group(
                root, pruner.prune_out_channels, list(range(g.size))
            )
            with torch.no_grad():
                importance = self.importance(group)
            if importance is None:  # no layer the importance reads: never removed
                scores[g.name] = torch.full((g.size,), float("inf"))
                continue
            score = importance.detach().float().cpu()
            score = score / score.mean().clamp_min(1e-12)
            score[self.removed.get(g.name, [])] = -float("inf")
            scores[g.name] = score
        return scores

    def apply_masks(self, opt: Optimizer | None) -> None:
        if self.masks is None:
            return
        with torch.no_grad():
            for g in self.groups:
                removed = set(self.removed.get(g.name, []))
                if not removed:
                    continue
                for gt in g.members:
                    param = self.params[gt.param]
                    gt.zero_(param, removed)
                    buf = (
                        opt.state.get(param, {}).get("momentum_buffer") if opt is not None else None
                    )
                    if buf is not None:
                        gt.zero_(buf, removed)

    def end_of_sparsify(self, trainer: Trainer) -> None:
        if not self.final:
            self.final_cut(trainer, self.scores())
        else:
            out = trainer.outcome
            out.sparsity_eps, out.sparsity_relative, out.sparsity_controlled = self.measure()
            self.record_penalty(out)

