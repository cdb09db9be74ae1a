"""The D-factor Hadamard parametrization: w = w_1 * w_2 * ... * w_D, then collapse back.

Built on `torch.nn.utils.parametrize`: the factors become `original0 .. original{D-1}` of the
parametrized weight, every module keeps working unchanged (it still reads `module.weight`),
and `remove_parametrizations(..., leave_parametrized=True)` is the collapse. See
docs/factorization.md for why this rather than a custom module.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .errors import InputError

FilterFn = Callable[[nn.Module, str], bool]
Init = Literal["balanced", "varmatch"]

DEFAULT_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class HadamardFactors(nn.Module):
    """Parametrization that rebuilds a weight from D same-shaped factors and an optional mask."""

    mask: Tensor | None

    def __init__(self, depth: int) -> None:
        super().__init__()
        if depth < 2:
            raise InputError(f"depth must be at least 2, got {depth}")
        self.depth = depth
        self.register_buffer("mask", None)
        self.parameter_order: list[str] = []  # the owner's parameter names, to restore on collapse

    def forward(self, *factors: Tensor) -> Tensor:
        weight = factors[0]
        for factor in factors[1:]:
            weight = weight * factor
        if self.mask is not None:  # where(), not a product: pruned entries are +0.0, never -0.0
            weight = torch.where(
                self.mask, weight, torch.zeros((), dtype=weight.dtype, device=weight.device)
            )
        return weight

    def right_inverse(self, weight: Tensor) -> tuple[Tensor, ...]:
        """Balanced root factorization: |w_d| = |w|^(1/D), the sign carried by the first."""
        root = weight.detach().abs().pow(1.0 / self.depth)
        return (torch.sign(weight.detach()) * root, *(root.clone() for _ in range(self.depth - 1)))


@dataclass(frozen=True)
class FactorizedWeight:
    """One factorized weight: `name` is its fully qualified parameter name in the model."""

    name: str
    module: nn.Module
    param: str

    @property
    def parametrization(self) -> HadamardFactors:
        return self.module.parametrizations[self.param][0]

    @property
    def factors(self) -> list[nn.Parameter]:
        originals = self.module.parametrizations[self.param]
        return [getattr(originals, f"original{i}") for i in range(self.parametrization.depth)]

    def collapsed(self) -> Tensor:
        """The current weight (product of the factors, mask applied), without autograd."""
        with torch.no_grad():
            return getattr(self.module, self.param).detach()


def default_filter(module: nn.Module, fqn: str) -> bool:
    """Select the weights of Linear and Conv1d/2d/3d layers (biases and norms stay dense)."""
    return isinstance(module, DEFAULT_LAYER_TYPES)


def _varmatch_factors(
    weight: Tensor, depth: int, generator: torch.Generator | None
) -> list[Tensor]:
    """DWF initialisation from scratch: truncated Gaussian factors whose product has Kaiming std.

    Each entry is drawn from N(0, s^(2/D)) and redrawn until eps^(1/D) < |x| < min(1, (2s)^(1/D)),
    eps = 0.25 s, with s = sqrt(2 / fan_in) (the method page, section 3).
    """
    fan_in = weight[0].numel() if weight.dim() > 1 else weight.numel()
    s = math.sqrt(2.0 / max(fan_in, 1))
    low, high = (0.25 * s) ** (1.0 / depth), min(1.0, (2.0 * s) ** (1.0 / depth))
    std = s ** (1.0 / depth)
    factors = []
    for _ in range(depth):
        x = torch.empty(weight.shape, dtype=weight.dtype)
        bad = torch.ones(weight.shape, dtype=torch.bool)
        for _ in range(1000):
            n = int(bad.sum())
            if n == 0:
                break
            draw = torch.randn(n, generator=generator, dtype=weight.dtype) * std
            x[bad] = draw
            bad = (x.abs() <= low) | (x.abs() >= high)
        else:  # practically unreachable: acceptance is well above 10% for any fan_in
            x[bad] = torch.sign(x[bad]) * (low + high) / 2
        factors.append(x.to(weight.device))
    return factors


def _named_targets(
    model: nn.Module, filter_fn: FilterFn | None, params: Iterable[str] | None
) -> list[tuple[str, nn.Module, str]]:
    targets: dict[int, tuple[str, nn.Module, str]] = {}
    if params is not None:
        modules = dict(model.named_modules())
        for fqn in params:
            owner, _, pname = fqn.rpartition(".")
            module = modules.get(owner)
            if module is None or not isinstance(module._parameters.get(pname), nn.Parameter):
                raise InputError(f"'{fqn}' is not a parameter of the model")
            targets[id(module._parameters[pname])] = (fqn, module, pname)
    else:
        select = filter_fn or default_filter
        for fqn, module in model.named_modules():
            weight = module._parameters.get("weight") if hasattr(module, "_parameters") else None
            if isinstance(weight, nn.Parameter) and select(module, fqn):
                name = f"{fqn}.weight" if fqn else "weight"
                targets.setdefault(id(weight), (name, module, "weight"))
    return list(targets.values())


def _parameter_order(module: nn.Module) -> list[str]:
    """The module's parameter names before any factorization: modules with several factorized
    weights (LSTM/GRU `weight_ih_l{k}`/`weight_hh_l{k}`, attention q/k/v) must all restore
    the order seen before the first one was moved into `parametrizations`."""
    if parametrize.is_parametrized(module):
        for plist in module.parametrizations.values():
            if isinstance(plist[0], HadamardFactors):
                return list(plist[0].parameter_order)
    return list(module._parameters)


def factorize_(
    model: nn.Module,
    depth: int = 3,
    filter_fn: FilterFn | None = None,
    init: Init = "balanced",
    params: Iterable[str] | None = None,
    generator: torch.Generator | None = None,
) -> None:
    """Replace selected weights of `model`, in place, by a Hadamard product of `depth` factors.

    `filter_fn(module, fqn)` picks modules whose `weight` is factorized (default: Linear and
    Conv layers); `params` instead names parameters directly (any tensor, e.g.
    "attn.in_proj_weight"). `init="balanced"` reproduces the current weights exactly
    (w_1 = sign(w)|w|^(1/D), w_d = |w|^(1/D)); `init="varmatch"` draws fresh factors for
    training from scratch. Create the optimizer after this call: the factors are new parameters.

    Example:
        model = torch.nn.Sequential(torch.nn.Linear(4, 3))
        dwfc.factorize_(model, depth=3)
        dwfc.collapse_(model)
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 2:
        raise InputError(f"depth must be an integer of at least 2, got {depth!r}")
    if init not in ("balanced", "varmatch"):
        raise InputError(f"init must be 'balanced' or 'varmatch', got {init!r}")
    targets = _named_targets(model, filter_fn, params)
    if not targets:
        raise InputError("no weight matched the selection: nothing to factorize")
    for name, module, pname in targets:
        if parametrize.is_parametrized(module, pname):
            raise InputError(f"'{name}' is already parametrized; collapse_ it first")
        weight = module._parameters[pname]
        hadamard = HadamardFactors(depth)
        hadamard.parameter_order = _parameter_order(module)
        parametrize.register_parametrization(module, pname, hadamard)
        if init == "varmatch":
            for factor, value in zip(
                FactorizedWeight(name, module, pname).factors,
                _varmatch_factors(weight.detach(), depth, generator),
                strict=True,
            ):
                with torch.no_grad():
                    factor.copy_(value)


def factorized_weights(model: nn.Module) -> Iterator[FactorizedWeight]:
    """Every weight of `model` currently held as Hadamard factors, in module order."""
    for fqn, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for pname, plist in module.parametrizations.items():
            if isinstance(plist[0], HadamardFactors):
                yield FactorizedWeight(f"{fqn}.{pname}" if fqn else pname, module, pname)


def factor_parameters(model: nn.Module) -> list[nn.Parameter]:
    """All factor tensors of `model` (these get the weight decay)."""
    return [f for fw in factorized_weights(model) for f in fw.factors]


def set_masks(model: nn.Module, masks: dict[str, Tensor]) -> None:
    """Fix the pruning mask of each factorized weight named in `masks` (1 keeps, 0 prunes)."""
    for fw in factorized_weights(model):
        if fw.name in masks:
            fw.parametrization.mask = masks[fw.name].to(
                device=fw.factors[0].device, dtype=torch.bool
            )


def collapse_(model: nn.Module) -> None:
    """Multiply every factorized weight back into one plain parameter, masks applied, in place.

    After this the model has its original classes, parameter names and state_dict keys, and
    pruned entries are exact zeros.

    Example:
        dwfc.factorize_(model); ...train...; dwfc.collapse_(model)
    """
    for fw in list(factorized_weights(model)):
        order = fw.parametrization.parameter_order
        parametrize.remove_parametrizations(fw.module, fw.param, leave_parametrized=True)
        params = fw.module._parameters
        for name in sorted(params, key=lambda n: order.index(n) if n in order else len(order)):
            params[name] = params.pop(name)  # back to the original state_dict key order


def misalignment(model: nn.Module) -> float:
    """M = sum over weights of (1/D) sum_d ||w_d||^2 - sum_j |w_j|^(2/D); >= 0, 0 when balanced."""
    total = 0.0
    with torch.no_grad():
        for fw in factorized_weights(model):
            d = fw.parametrization.depth
            product = fw.factors[0]
            for factor in fw.factors[1:]:
                product = product * factor
            squares = sum(float(f.pow(2).sum()) for f in fw.factors)
            total += squares / d - float(product.abs().pow(2.0 / d).sum())
    return total


def factor_penalty(model: nn.Module, lam: float) -> Tensor:
    """The DWF regulariser (lambda / D) * sum_d ||w_d||^2, summed over all factorized weights."""
    terms = [
        (lam / fw.parametrization.depth) * sum(f.pow(2).sum() for f in fw.factors)
        for fw in factorized_weights(model)
    ]
    return torch.stack(terms).sum() if terms else torch.zeros(())
