"""The exact cut to a MAC speed-up: remove the weakest channels, a rounding step at a time.

Each removable group keeps a multiple of `round_to` channels (or all of them, or its minimum):
its removal steps take its weakest remaining channels down to the next multiple. The steps of
all groups are merged by the largest score they remove, and the shortest prefix that reaches
the speed-up is cut: the target is met, overshot by at most one step. That step can be large (a
residual stream's last block of channels removes them from every layer it couples), so the
strongest steps taken before it are then given back, other groups' last steps first, while the
target still holds: in the end no group can keep one more step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from dwfc.structure.groups import ChannelGroup

Removed = dict[str, list[int]]


@dataclass(frozen=True)
class _Step:
    priority: float  # the largest score among the channels it removes
    order: int  # its place within its group
    group: str
    channels: tuple[int, ...]


def _next_size(kept: int, round_to: int) -> int:
    return kept - kept % round_to if kept % round_to else kept - round_to


def removal_steps(groups: list[ChannelGroup], scores: dict[str, Tensor],
                  round_to: int) -> list[_Step]:  # fmt: skip
    """Every group's removal steps, weakest first, merged by priority; a step that would remove
    a channel scored +inf (never to be removed) is not one."""
    steps = []
    for g in groups:
        score = scores[g.name].detach().double().cpu()
        ascending = torch.argsort(score, stable=True).tolist()
        kept, order = g.size, 0
        while (smaller := _next_size(kept, round_to)) >= g.keeps:
            channels = ascending[g.size - kept : g.size - smaller]
            priority = float(score[channels].max())
            if priority == float("inf"):
                break
            steps.append(_Step(priority, order, g.name, tuple(channels)))
            kept, order = smaller, order + 1
    return sorted(steps, key=lambda s: (s.priority, s.order))


def removed_by(steps: list[_Step], count: int) -> Removed:
    """The channels the first `count` steps remove, by group."""
    removed: Removed = {}
    for step in steps[:count]:
        removed.setdefault(step.group, []).extend(step.channels)
    return {name: sorted(channels) for name, channels in removed.items()}


def cut_to_speedup(groups: list[ChannelGroup], scores: dict[str, Tensor], round_to: int,
                   target: float, speedup: Callable[[Removed], float],
                   estimate: Callable[[Removed], float] | None = None) -> Removed:  # fmt: skip
    """The weakest channels whose removal reaches `speedup(removed) >= target` (all removable
    ones if even that falls short), given back a step at a time where it overshoots; `estimate`,
    a cheaper speed-up, picks the steps to give back, which `speedup` then confirms."""
    steps = removal_steps(groups, scores, round_to)
    low, high = 0, len(steps)  # speedup(removed_by(high)) is the most there is
    while low < high:
        middle = (low + high) // 2
        if speedup(removed_by(steps, middle)) >= target:
            high = middle
        else:
            low = middle + 1
    taken = steps[:low]  # reaches the target, unless even every step falls short
    if not taken or (low == len(steps) and speedup(removed_by(taken, low)) < target):
        return removed_by(taken, low)
    given_back = _given_back(taken, target, estimate or speedup)
    low, high = 0, len(given_back)  # the longest run of them the exact count confirms
    while low < high:
        middle = (low + high + 1) // 2
        if speedup(_without(taken, given_back[:middle])) >= target:
            low = middle
        else:
            high = middle - 1
    return _without(taken, given_back[:low])


def _given_back(taken: list[_Step], target: float,
                speedup: Callable[[Removed], float]) -> list[_Step]:  # fmt: skip
    """Taken steps that can be undone, strongest first, each while `speedup` still reaches the
    target; a group gives back only its last steps (the last taken step's group none), and
    never channels scored -inf (removed for good)."""
    blocked, back = {taken[-1].group}, []
    for step in reversed(taken[:-1]):  # a group's later steps come first
        if step.group in blocked or step.priority == -float("inf"):
            continue
        if speedup(_without(taken, [*back, step])) >= target:
            back.append(step)
        else:
            blocked.add(step.group)
    return back


def _without(steps: list[_Step], undone: list[_Step]) -> Removed:
    skipped = set(undone)
    return removed_by([s for s in steps if s not in skipped], len(steps))


def keep_masks(groups: list[ChannelGroup], removed: Removed) -> dict[str, Tensor]:
    """One bool per channel of each group: True where kept."""
    masks = {}
    for g in groups:
        mask = torch.ones(g.size, dtype=torch.bool)
        mask[removed.get(g.name, [])] = False
        masks[g.name] = mask
    return masks


def removed_from(masks: dict[str, Tensor]) -> Removed:
    """The removed channels of each group, from its keep mask."""
    return {name: (~m.bool()).nonzero().flatten().tolist() for name, m in masks.items()}
