"""The channel plan of a model: its groups, what removing them costs and can give.

`plan_channels` is what `dwfc plan --structure channel` prints and what every channel method
works from: the groups (dwfc/structure/groups.py), the dense MACs and parameters, and the
largest speed-up, reached when every removable group keeps only its minimum.

Example:
    plan = plan_channels(model, example_batch, round_to=8)
    plan.max_speedup, [g.name for g in plan.removable]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from dwfc.errors import InputError, named
from dwfc.structure.groups import ChannelGroup, build_graph, find_groups
from dwfc.structure.macs import MacModel, Skeleton


@dataclass
class ChannelPlan:
    """The groups of a model, and what removing them can give."""

    groups: list[ChannelGroup]
    round_to: int
    input_shape: list[int]  # of one example, without the batch
    dense_macs: int
    dense_params: int
    max_speedup: float
    skeleton: Skeleton = field(repr=False)
    estimate: MacModel = field(repr=False)
    channel_macs: dict[str, float] = field(default_factory=dict)  # MACs one channel costs, dense
    min_keep: float = 0.0  # share of each group's channels always kept

    @property
    def removable(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.removable]

    def group(self, name: str) -> ChannelGroup:
        return next(g for g in self.groups if g.name == name)

    def speedup(self, removed: dict[str, list[int]]) -> float:
        """Dense MACs over MACs once `removed` is gone, counted on the smaller model."""
        return self.dense_macs / self.skeleton.count(removed)[0]

    def summary(self) -> dict[str, Any]:
        """The plan as JSON-ready data (`dwfc plan --structure channel --json`)."""
        return {
            "groups": [
                {"name": g.name, "channels": g.size, "removable": g.removable,
                 "keeps_at_least": g.keeps if g.removable else g.size, "reason": g.reason,
                 "layers": g.layers, "consumers": g.consumers,
                 "gated": sorted({t.param for t in g.gated})}
                for g in self.groups
            ],
            "removable_groups": len(self.removable),
            "removable_channels": sum(g.size - g.keeps for g in self.removable),
            "round_to": self.round_to, "min_keep": self.min_keep, "dense_macs": self.dense_macs,
            "dense_parameters": self.dense_params, "max_speedup": self.max_speedup,
        }  # fmt: skip


def minimum(groups: list[ChannelGroup]) -> dict[str, list[int]]:
    """Every removable channel of every group but its first `keeps`: the largest removal."""
    return {g.name: list(range(g.keeps, g.size)) for g in groups}


def plan_channels(model: nn.Module, example: Tensor, round_to: int = 8,
                  exclude: list[str] | None = None,
                  min_keep: float = 0.0) -> ChannelPlan:  # fmt: skip
    """Trace `model` on one example and plan its channel removal: each removable group keeps a
    multiple of `round_to` channels, at least `round_to` and the share `min_keep` of them.

    Raises InputError when the model cannot be traced (naming the layer) or has no removable
    group (saying why for each).
    """
    model, example = model.cpu(), example[:1].cpu()
    graph = build_graph(model, example)
    groups = find_groups(model, example, graph, round_to, exclude or [], min_keep)
    removable = [g for g in groups if g.removable]
    if not removable:
        reasons = (
            "; ".join(f"{g.name}: {g.reason}" for g in groups[:3])
            or "no convolution or Linear layer"
        )
        raise InputError(f"the model has no removable channel group ({reasons})")
    skeleton = Skeleton(model, example)
    dense_macs, dense_params = skeleton.count()
    if dense_macs <= 0:
        raise InputError("the model has no MACs that Torch-Pruning counts: nothing to speed up")
    smallest = skeleton.count(minimum(removable))[0]
    estimate = MacModel(model, example, graph, removable, dense_macs)
    return ChannelPlan(groups, round_to, list(example.shape[1:]), dense_macs, dense_params,
                       dense_macs / smallest, skeleton, estimate,
                       _channel_macs(estimate, removable), min_keep)  # fmt: skip


def _channel_macs(estimate: MacModel, groups: list[ChannelGroup]) -> dict[str, float]:
    """The MACs removing one channel of each group saves, from the dense model (estimated)."""
    full = torch.ones(estimate.channels, dtype=torch.bool)
    dense = estimate.macs(full)
    costs = {}
    for g in groups:
        keep = full.clone()
        keep[estimate.offsets[g.name]] = False
        costs[g.name] = dense - estimate.macs(keep)
    return costs


def check_target(plan: ChannelPlan, target: float) -> None:
    """Refuse a speed-up no removal reaches, before any training."""
    if target > plan.max_speedup:
        floor = f" and {named('structure.min_keep')}={plan.min_keep:g}" if plan.min_keep else ""
        raise InputError(
            f"{named('structure.target_speedup')}={target:g} is more than removing every "
            f"removable channel gives: at most {plan.max_speedup:.2f}x with "
            f"{named('structure.round_to')}={plan.round_to}{floor} ({len(plan.removable)} "
            "removable groups; `dwfc plan --structure channel` lists them)"
        )  # fmt: skip
