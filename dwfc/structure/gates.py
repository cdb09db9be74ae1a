"""D-Gating: each channel c of a group is w_c = omega_c * gamma_{c,1} * ... * gamma_{c,D-1}.

`omega_c` is the channel's slice of its gated tensors (dwfc/structure/groups.py), the gammas are
D - 1 scalars per channel, shared by every tensor of the group. Weight decay 2 lambda / D on
omega and the gammas is exactly the group penalty lambda * sum_c ||w_c||^(2/D) at balance
(../shared/dwf-method.md, section 7). `gate_` starts balanced from the trained weights, so the
gated model computes what the original did; `fold_gates_` multiplies the gates back in
(`dwfc.collapse_` does it too).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from dwfc.errors import InputError
from dwfc.structure.groups import ChannelGroup, GatedTensor


class ChannelGates(nn.Module):
    """The D - 1 gates of each channel of one group, and the mask of its removed channels."""

    mask: Tensor | None

    def __init__(self, group: str, size: int, depth: int) -> None:
        super().__init__()
        if depth < 2:
            raise InputError(f"depth must be at least 2, got {depth}")
        self.group, self.depth = group, depth
        self.gates = nn.Parameter(torch.ones(depth - 1, size))
        self.register_buffer("mask", None)

    def product(self) -> Tensor:
        """gamma_{c,1} * ... * gamma_{c,D-1} of each channel c; 0 where masked."""
        product = self.gates.prod(dim=0)
        if self.mask is not None:
            product = torch.where(self.mask, product, torch.zeros((), dtype=product.dtype,
                                                                  device=product.device))
        return product


class GatedChannels(nn.Module):
    """Parametrization of one gated tensor: its slices `positions` along `dim` scaled by their
    channel's gate product."""

    def __init__(
        self, gates: ChannelGates, gated: GatedTensor, parameter_order: list[str]
    ) -> None:
        super().__init__()
        self.gates = gates  # shared with the group's other tensors
        self.gated = gated
        self.parameter_order = parameter_order  # the owner's, to restore when folded
        # derived from the plan and rebuilt by gate_: not state, so checkpoints leave them out
        self.register_buffer("positions", torch.tensor(gated.positions, dtype=torch.long),
                             persistent=False)  # fmt: skip
        self.register_buffer("channels", torch.tensor(gated.channels, dtype=torch.long),
                             persistent=False)  # fmt: skip

    def forward(self, omega: Tensor) -> Tensor:
        ones = torch.ones(omega.shape[self.gated.dim], dtype=omega.dtype, device=omega.device)
        scale = ones.index_copy(
            0, self.positions, self.gates.product()[self.channels].to(omega.dtype)
        )
        return omega * self.gated.along(scale, omega)


def _value(model: nn.Module, name: str) -> Tensor:
    """The tensor `name` as the forward uses it (through the gates of other groups, if any)."""
    owner, _, attr = name.rpartition(".")
    return getattr(model.get_submodule(owner), attr)


def _channel_norms(model: nn.Module, group: ChannelGroup) -> Tensor:
    """||w_c|| of each channel c: over every gated entry of the channel."""
    squares = torch.zeros(group.size, dtype=torch.float64)
    for gt in group.gated:
        squares += gt.squares(_value(model, gt.param).detach().double().cpu(), group.size)
    return squares.sqrt()


def gate_(model: nn.Module, groups: list[ChannelGroup], depth: int) -> dict[str, ChannelGates]:
    """Gate every channel of `groups` with D - 1 balanced gates, in place: the model computes
    what it did. Returns the gates of each group by its name.

    Example:
        gates = gate_(model, plan.removable, depth=3)
    """
    made = {}
    orders: dict[nn.Module, list[str]] = {}  # each owner's parameter order before any gate
    for group in groups:
        norms = _channel_norms(model, group)
        root = norms.pow(1.0 / depth)  # gamma_{c,d} = ||w_c||^(1/D)
        gates = ChannelGates(group.name, group.size, depth)
        first = _value(model, group.gated[0].param)
        gates.to(device=first.device)
        with torch.no_grad():
            gates.gates.copy_(root.to(gates.gates.dtype).expand(depth - 1, -1))
        product = root.pow(depth - 1)
        for gt in group.gated:
            owner_name, _, attr = gt.param.rpartition(".")
            owner = model.get_submodule(owner_name)
            gated_before = parametrize.is_parametrized(owner, attr)
            if gated_before and not all(isinstance(p, GatedChannels)
                                        for p in owner.parametrizations[attr]):  # fmt: skip
                raise InputError(f"{gt.param} is reparametrized already: gate a plain model")
            # a tensor two groups read (a concatenation): the second gates other slices of the
            # same omega, so omega is divided by this group's product where it is this group's
            value = (owner.parametrizations[attr].original if gated_before
                     else getattr(owner, attr)).detach()  # fmt: skip
            scale = torch.ones(value.shape[gt.dim], dtype=torch.float64)
            scale[list(gt.positions)] = product[list(gt.channels)]
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # a zero channel: omega 0
            omega = value.double() / gt.along(scale.to(value.device), value)
            order = orders.setdefault(owner, list(owner._parameters))
            parametrize.register_parametrization(owner, attr, GatedChannels(gates, gt, order),
                                                 unsafe=True)  # fmt: skip
            with torch.no_grad():
                getattr(owner.parametrizations, attr).original.copy_(omega.to(value.dtype))
        made[group.name] = gates
    return made


def gated_tensors(model: nn.Module) -> Iterator[tuple[nn.Module, str, GatedChannels]]:
    """(owner, parameter name, parametrization) of every gated tensor of `model`."""
    for module in model.modules():
        if not parametrize.is_parametrized(module):
            continue
        for pname, plist in module.parametrizations.items():
            for param in plist:
                if isinstance(param, GatedChannels):
                    yield module, pname, param


def channel_gates(model: nn.Module) -> dict[str, ChannelGates]:
    """The gates of each gated group of `model`, by group name."""
    found: dict[str, ChannelGates] = {}
    for _, _, param in gated_tensors(model):
        found.setdefault(param.gates.group, param.gates)
    return found


def fold_gates_(model: nn.Module) -> None:
    """Multiply every gate back into its tensors, in place: plain parameters again, masked
    channels exactly zero, the original parameter names and order."""
    done = set()
    for module, pname, param in list(gated_tensors(model)):
        if (module, pname) in done:  # a tensor of two groups: folded with the first
            continue
        done.add((module, pname))
        order = param.parameter_order
        parametrize.remove_parametrizations(module, pname, leave_parametrized=True)
        params = module._parameters
        for key in sorted(params, key=lambda n: order.index(n) if n in order else len(order)):
            params[key] = params.pop(key)
