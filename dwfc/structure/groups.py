"""Channel groups: the channels structured DWF gates and removes together.

Torch-Pruning's dependency graph finds, for each convolution and Linear layer, everything coupled
to its output channels: BatchNorm, the next layers' input slices, residual additions,
concatenations, depthwise convolutions. One such coupling is a `ChannelGroup`; channel c of a
group is removed everywhere at once.

A channel's gated weights (docs/structured.md) are what carries its signal: the scale and shift
of its BatchNorms, the output slices (weight and bias) of its convolution and Linear layers that
no BatchNorm of the group normalises (such a filter is scale-free: a penalty would shrink it for
nothing), and the input slices of the layers that read it, unless those are a removable group's
outputs already (a weight belongs to one group: then the penalty is exactly the group penalty,
and a consumer that grew to make up for a shrinking channel pays for it). A group counts as
removable only when it is proven so on the model itself: with the gated tensors of one channel
zeroed, the model computes exactly what the model with that channel physically removed computes
(float64). Groups that reach the model's output (the classifier) are never removed.
"""

from __future__ import annotations

import copy
import fnmatch
import math
import re
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import Tensor, nn

from dwfc.errors import InputError, first_line

GATED_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
ROOTS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
EXACT = 1e-9  # removal must match zeroing to this, relative to the output's scale, in float64


@dataclass(frozen=True)
class GatedTensor:
    """The slices of one parameter that belong to a group: entries `positions` along `dim` (0:
    a layer's outputs, 1: a consumer's inputs), which are the group's channels `channels`."""

    param: str
    positions: tuple[int, ...]
    channels: tuple[int, ...]
    dim: int = 0

    def along(self, vector: Tensor, like: Tensor) -> Tensor:
        """`vector` (one value per position along `dim`) shaped to broadcast against `like`."""
        shape = [1] * like.dim()
        shape[self.dim] = -1
        return vector.view(shape)

    def squares(self, value: Tensor, size: int) -> Tensor:
        """Sum of squares of each of the `size` channels' slices of `value`."""
        rows = value.index_select(self.dim, torch.tensor(self.positions, device=value.device))
        per = rows.pow(2).transpose(0, self.dim).reshape(len(self.positions), -1).sum(1)
        out = torch.zeros(size, dtype=per.dtype, device=per.device)
        return out.index_add_(0, torch.tensor(self.channels, device=per.device), per)

    def slices(self, channels: set[int]) -> list[int]:
        """The positions of `channels` along `dim`."""
        return [p for p, c in zip(self.positions, self.channels, strict=True) if c in channels]

    def zero_(self, value: Tensor, channels: set[int]) -> None:
        """Zero the slices of `channels` in `value`, in place."""
        rows = self.slices(channels)
        if rows:
            value.index_fill_(self.dim, torch.tensor(rows, device=value.device), 0)


@dataclass
class ChannelGroup:
    """Channels removed together: `layers` lose output channels, `consumers` input channels."""

    name: str  # the root layer, whose output channels the group's channels are
    size: int
    layers: list[str]
    consumers: list[str]
    gated: list[GatedTensor]  # each channel's weights: outputs, and inputs no other group has
    members: list[GatedTensor]  # every slice of each channel: layers' outputs, consumers' inputs
    inputs: list[GatedTensor]  # the consumers' input slices
    keeps: int = 1  # channels it always keeps (a removable group never loses them all)
    removable: bool = True
    reason: str | None = None  # why not removable


def build_graph(model: nn.Module, example: Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of `model`, traced on `example`; a model that cannot be
    traced is an InputError naming the layer that failed."""
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(model, example_inputs=example,
                                                         verbose=False)  # fmt: skip
    except Exception as exc:  # tracing runs the user's forward: any error is the model's
        raise InputError(
            f"cannot trace the model for channel removal: {_failing_layer(model, example, exc)}"
        ) from None
    finally:
        model.train(was_training)


def _failing_layer(model: nn.Module, example: Tensor, exc: Exception) -> str:
    """Which layer the forward fails in: the innermost module running when it raised."""
    stack: list[str] = []
    failed: list[str] = []
    hooks = []
    for name, module in model.named_modules():
        def enter(mod: nn.Module, args: object, name: str = name) -> None:
            stack.append(name)

        def leave(mod: nn.Module, args: object, out: object) -> None:
            stack.pop()

        hooks += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    try:
        with torch.enable_grad():
            model(example)
    except Exception as again:
        failed = [stack[-1] if stack and stack[-1] else "the model's own forward"]
        exc = again
    finally:
        for hook in hooks:
            hook.remove()
    where = failed[0] if failed else "tracing"
    module = model.get_submodule(where) if failed and where in dict(model.named_modules()) else None
    kind = f" ({type(module).__name__})" if module is not None else ""
    return f"layer {where}{kind} failed: {first_line(exc)}"


def _out_channel_items(
    graph: tp.DependencyGraph, group: tp.Group
) -> list[tuple[nn.Module, list[int], list[int]]]:
    items = []
    for item in group.items:
        if graph.is_out_channel_pruning_fn(item.dep.handler):
            items.append((item.dep.target.module, list(item.idxs), list(item.root_idxs)))
    return items


def _describe(graph: tp.DependencyGraph, model_names: dict[nn.Module, str], group: tp.Group,
              patterns: list[str]) -> ChannelGroup:  # fmt: skip
    """The ChannelGroup of one Torch-Pruning group: its layers, consumers and gated tensors."""
    root = group.items[0].dep.target.module
    name = model_names[root]
    size = len(group.items[0].idxs)
    outs = _out_channel_items(graph, group)
    layers = [model_names[m] for m, _, _ in outs if m in model_names]
    consumers = [
        model_names[item.dep.target.module] for item in group.items
        if graph.is_in_channel_pruning_fn(item.dep.handler)
        and item.dep.target.module in model_names
    ]  # fmt: skip
    norms_in_group = {m for m, _, _ in outs if isinstance(m, NORMS)}
    gated: list[GatedTensor] = []
    outputs: list[GatedTensor] = []
    problems: list[str] = []
    for module, positions, channels in outs:
        if module not in model_names:
            continue  # an operation, not a layer: it has no parameters
        lname = model_names[module]
        if not isinstance(module, NORMS + GATED_LAYERS):
            continue  # e.g. PReLU, LayerNorm: left to the exactness proof below
        if isinstance(module, NORMS) and not module.affine:
            problems.append(f"{lname} is a BatchNorm without scale and shift")
            continue
        sliced = [GatedTensor(f"{lname}.{t}", tuple(positions), tuple(channels))
                  for t in ("weight", "bias") if getattr(module, t, None) is not None]  # fmt: skip
        outputs += sliced
        node = graph.module2node[module]
        if isinstance(module, NORMS) or not any(o.module in norms_in_group for o in node.outputs):
            gated += sliced  # a filter its BatchNorm normalises is scale-free: not gated
    inputs = []
    for item in group.items:  # the consumers' input slices
        module = item.dep.target.module
        if (graph.is_in_channel_pruning_fn(item.dep.handler) and module in model_names
                and isinstance(module, GATED_LAYERS) and getattr(module, "groups", 1) == 1):
            inputs.append(GatedTensor(f"{model_names[module]}.weight", tuple(item.idxs),
                                      tuple(item.root_idxs), dim=1))  # fmt: skip
    members = outputs + inputs
    cg = ChannelGroup(name, size, layers, consumers, gated, members, inputs)
    sinks = [model_names.get(m, "an operation") for m, _, _ in outs
             if len(graph.module2node[m].outputs) == 0]  # fmt: skip
    if sinks:
        cg.removable, cg.reason = False, f"its channels are the model's outputs ({sinks[0]})"
    elif problems:
        cg.removable, cg.reason = False, problems[0]
    elif not gated:
        cg.removable, cg.reason = False, "no layer of it carries the channel's signal"
    elif any(_matches(layer, patterns) for layer in layers):
        cg.removable, cg.reason = False, "excluded by structure.exclude"
    return cg


def _matches(name: str, patterns: list[str]) -> bool:
    for pattern in patterns:
        if pattern.startswith("re:"):
            if re.search(pattern[3:], name):
                return True
        elif fnmatch.fnmatchcase(name, pattern):
            return True
    return False


def zero_channels(
    model: nn.Module, groups: list[ChannelGroup], channels: dict[str, list[int]]
) -> None:
    """Zero the gated entries of `channels[group]` of each group, in place (what a removed
    channel is, before it is removed)."""
    by_name = {g.name: g for g in groups}
    with torch.no_grad():
        for group_name, removed in channels.items():
            for gt in by_name[group_name].gated:
                gt.zero_(model.get_parameter(gt.param), set(removed))


def remove_channels(model: nn.Module, example: Tensor, channels: dict[str, list[int]]) -> list:
    """Physically remove `channels[group]` of each group (named by its root layer) with
    Torch-Pruning, in place; returns the pruning history (replayable by `load_pruned`)."""
    graph = build_graph(model, example)
    names = dict(model.named_modules())
    for group_name, removed in channels.items():
        if not removed:
            continue
        root = names[group_name]
        pruner = graph.get_pruner_of_module(root)
        graph.get_pruning_group(root, pruner.prune_out_channels, sorted(removed)).prune()
    return [
        [name, bool(out), [int(i) for i in idxs]] for name, out, idxs in graph.pruning_history()
    ]


def _outputs(model: nn.Module, example: Tensor) -> Tensor:
    with torch.no_grad():
        out = model.eval()(example)
    return out if isinstance(out, Tensor) else torch.cat([o.flatten() for o in out])


def exact_removal(model: nn.Module, example: Tensor, groups: list[ChannelGroup]) -> list[str]:
    """The groups whose first channel's removal is not exactly its zeroing (float64): empty when
    all are removable as gated."""
    if not groups:
        return []
    base = copy.deepcopy(model).double().eval()
    x = example.double() if example.is_floating_point() else example
    probe = {g.name: [0] for g in groups}
    zeroed, removed = copy.deepcopy(base), copy.deepcopy(base)
    zero_channels(zeroed, groups, probe)
    try:
        remove_channels(removed, x, probe)
        a, b = _outputs(zeroed, x), _outputs(removed, x)
        if a.shape == b.shape and (
            float((a - b).abs().max()) <= EXACT * max(1.0, float(a.abs().max()))
        ):
            return []
    except Exception:  # noqa: BLE001 - a removal Torch-Pruning cannot do is not exact either
        pass
    if len(groups) == 1:
        return [groups[0].name]
    half = len(groups) // 2
    return (
        exact_removal(model, example, groups[:half]) + exact_removal(model, example, groups[half:])
    )


def _gate_inputs(groups: list[ChannelGroup]) -> None:
    """Gate the consumers' input slices too, where the consumer's own outputs are not gated."""
    outputs = {gt.param for g in groups if g.removable for gt in g.gated}
    for g in groups:
        if g.removable:
            g.gated += [gt for gt in g.inputs if gt.param not in outputs]


def least_kept(size: int, round_to: int, min_keep: float = 0.0) -> int:
    """The channels a group of `size` always keeps: round_to, or the share min_keep of them
    rounded up to a multiple of round_to; all if that is as many."""
    share = math.ceil(size * min_keep - 1e-9)
    return min(size, max(round_to, -(-share // round_to) * round_to))


def find_groups(model: nn.Module, example: Tensor, graph: tp.DependencyGraph, round_to: int,
                exclude: list[str], min_keep: float = 0.0) -> list[ChannelGroup]:  # fmt: skip
    """Every channel group of `model` (traced into `graph` on `example`, one sample), with which
    are removable and why not."""
    model_names = {m: n for n, m in model.named_modules()}
    groups = [_describe(graph, model_names, g, exclude)
              for g in graph.get_all_groups(root_module_types=ROOTS)]  # fmt: skip
    for g in groups:
        if g.removable:
            g.keeps = least_kept(g.size, round_to, min_keep)
            if g.size <= round_to:
                g.removable = False
                g.reason = f"{g.size} channels: no more than structure.round_to={round_to}"
            elif g.keeps == g.size:
                g.removable = False
                g.reason = (f"{g.size} channels: structure.min_keep={min_keep:g} rounded up to "
                            f"structure.round_to={round_to} keeps them all")  # fmt: skip
    carriers = {g.name: list(g.gated) for g in groups}
    while True:  # input slices are gated by removable groups only: again if the proof drops one
        for g in groups:
            g.gated = list(carriers[g.name])
        _gate_inputs(groups)
        inexact = set(exact_removal(model, example, [g for g in groups if g.removable]))
        if not inexact:
            break
        for g in groups:
            if g.name in inexact:
                g.removable = False
                g.reason = ("removing a channel changes the output (an operation whose output "
                            "at 0 is not 0, or a layer Torch-Pruning cannot shrink exactly)")
    return groups
