"""MACs: counted by Torch-Pruning on the physically smaller model, and estimated on the way.

`count_macs` is Torch-Pruning's op counter (convolutions, Linear, BatchNorm, activations and
pooling, at batch 1): what the report and the speed-up target mean. `Skeleton` counts what a
model would have after a removal without touching its weights (a copy on the meta device).
`MacModel` is the controller's fast estimate during training: the exact cost of every
convolution, Linear and BatchNorm layer as a function of the channels each keeps, the rest
scaled with them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import Tensor, nn

from dwfc.structure.groups import NORMS, ChannelGroup, remove_channels

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def count_macs(model: nn.Module, example: Tensor) -> tuple[int, int]:
    """(MACs, parameters) of `model` on one example, as Torch-Pruning counts them."""
    was_training = model.training
    macs, params = tp.utils.count_ops_and_params(model, example[:1])
    model.train(was_training)
    return int(macs), int(params)


class Skeleton:
    """A weightless copy of a model, to count MACs and parameters after removals."""

    def __init__(self, model: nn.Module, example: Tensor) -> None:
        self.model = copy.deepcopy(model).to("meta")
        self.example = example[:1].to("meta")

    def count(self, removed: dict[str, list[int]] | None = None) -> tuple[int, int]:
        """(MACs, parameters) once `removed[group]` channels of each group are gone."""
        model = copy.deepcopy(self.model)
        if removed:
            remove_channels(model, self.example, removed)
        return count_macs(model, self.example)


@dataclass
class _Layer:
    in_map: Tensor  # channel id of each input position (-1: never removed)
    out_map: Tensor
    per_pair: float  # MACs per (kept input, kept output) pair
    per_out: float  # MACs per kept output


class MacModel:
    """MACs as a function of which channels are kept: `keep` is one bool per channel of the
    removable groups, in plan order (`offsets`)."""

    def __init__(self, model: nn.Module, example: Tensor, graph: tp.DependencyGraph,
                 groups: list[ChannelGroup], dense_macs: int) -> None:  # fmt: skip
        self.offsets: dict[str, int] = {}
        total = 0
        for g in groups:
            self.offsets[g.name] = total
            total += g.size
        self.channels = total
        maps = self._maps(model, graph, groups)
        self.layers = self._costs(model, example, maps)
        modelled = self.modelled(torch.ones(total, dtype=torch.bool))
        self.scale = dense_macs / modelled if modelled else 1.0

    def _maps(self, model: nn.Module, graph: tp.DependencyGraph,
              groups: list[ChannelGroup]) -> dict[nn.Module, tuple[Tensor, Tensor]]:  # fmt: skip
        names = dict(model.named_modules())
        maps: dict[nn.Module, tuple[Tensor, Tensor]] = {}
        for module in model.modules():
            if isinstance(module, CONVS):
                maps[module] = (torch.full((module.in_channels,), -1),
                                torch.full((module.out_channels,), -1))  # fmt: skip
            elif isinstance(module, nn.Linear):
                maps[module] = (torch.full((module.in_features,), -1),
                                torch.full((module.out_features,), -1))  # fmt: skip
            elif isinstance(module, NORMS):
                maps[module] = (torch.full((module.num_features,), -1),
                                torch.full((module.num_features,), -1))  # fmt: skip
        for g in groups:
            root = names[g.name]
            pruner = graph.get_pruner_of_module(root)
            full = graph.get_pruning_group(root, pruner.prune_out_channels, list(range(g.size)))
            for item in full.items:
                module = item.dep.target.module
                if module not in maps:
                    continue
                ids = torch.tensor(item.root_idxs) + self.offsets[g.name]
                idxs = torch.tensor(item.idxs)
                if graph.is_out_channel_pruning_fn(item.dep.handler):
                    maps[module][1][idxs] = ids
                    if isinstance(module, NORMS) or _depthwise(module):
                        maps[module][0][idxs] = ids
                elif graph.is_in_channel_pruning_fn(item.dep.handler):
                    maps[module][0][idxs] = ids
        return maps

    def _costs(self, model: nn.Module, example: Tensor,
               maps: dict[nn.Module, tuple[Tensor, Tensor]]) -> list[_Layer]:  # fmt: skip
        shapes: dict[nn.Module, tuple[torch.Size, torch.Size]] = {}

        def record(module: nn.Module, args: tuple, out: Tensor) -> None:
            shapes.setdefault(module, (args[0].shape, out.shape))

        hooks = [m.register_forward_hook(record) for m in maps]
        was_training = model.training
        try:
            with torch.no_grad():
                model.eval()(example[:1])
        finally:
            model.train(was_training)
            for hook in hooks:
                hook.remove()
        layers = []
        for module, (in_map, out_map) in maps.items():
            if module not in shapes:
                continue  # not run by the forward
            x, y = shapes[module]
            if isinstance(module, CONVS):
                kernel = int(torch.tensor(module.kernel_size).prod())
                active = int(y[0]) * int(torch.tensor(y[2:]).prod()) if len(y) > 2 else int(y[0])
                bias = active if module.bias is not None else 0
                if _depthwise(module):
                    layers.append(_Layer(in_map, out_map, 0.0, kernel * active + bias))
                else:
                    layers.append(_Layer(in_map, out_map, kernel * active / module.groups, bias))
            elif isinstance(module, nn.Linear):
                rows = int(torch.tensor(x).prod()) // module.in_features
                layers.append(_Layer(in_map, out_map, float(rows),
                                     1.0 if module.bias is not None else 0.0))  # fmt: skip
            else:  # BatchNorm
                per = int(torch.tensor(x).prod()) // module.num_features
                layers.append(_Layer(in_map, out_map, 0.0, per * (2 if module.affine else 1)))
        return layers

    def modelled(self, keep: Tensor) -> float:
        """MACs of the convolution, Linear and BatchNorm layers when `keep` is kept."""
        padded = torch.cat([keep.bool().cpu(), torch.ones(1, dtype=torch.bool)])  # -1: kept
        total = 0.0
        for layer in self.layers:
            kin = int(padded[layer.in_map].sum())
            kout = int(padded[layer.out_map].sum())
            total += layer.per_pair * kin * kout + layer.per_out * kout
        return total

    def macs(self, keep: Tensor) -> float:
        """The estimate of the whole model's MACs when `keep` is kept."""
        return self.modelled(keep) * self.scale


def _depthwise(module: nn.Module) -> bool:
    return (
        isinstance(module, CONVS)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )
