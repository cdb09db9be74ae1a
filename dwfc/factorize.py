"""The D-factor Hadamard parametrization: w = w_1 * w_2 * ... * w_D, then collapse back.

Built on `torch.nn.utils.parametrize`: the factors become `original0 .. original{D-1}` of the
parametrized weight, every module keeps working unchanged (it still reads `module.weight`),
and `remove_parametrizations(..., leave_parametrized=True)` is the collapse. See
docs/factorization.md for why this rather than a custom module. By default `factorize_` selects
what `dwfc compress` selects (dwfc/select.py, dwfc/layers.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, get_args

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from dwfc.config import FactorizeConfig, Init
from dwfc.errors import InputError
from dwfc.select import PlannedWeight, plan
from dwfc.structure.gates import fold_gates_

FilterFn = Callable[[nn.Module, str], bool]
INITS: tuple[str, ...] = get_args(Init)


class HadamardFactors(nn.Module):
    """Parametrization that rebuilds a weight from D same-shaped factors and an optional mask."""

    mask: Tensor | None
    fused_value: Tensor | None  # this weight, as dwfc.fused computed it for the current forward

    def __init__(self, depth: int) -> None:
        super().__init__()
        if depth < 2:
            raise InputError(f"depth must be at least 2, got {depth}")
        self.depth = depth
        self.register_buffer("mask", None)
        self.parameter_order: list[str] = []  # the owner's parameter names, to restore on collapse
        self.fused_value = None

    def forward(self, *factors: Tensor) -> Tensor:
        if self.fused_value is not None:
            return self.fused_value
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


def _layer_factors(weight: Tensor, depth: int) -> list[Tensor]:
    """w_1 = w / c^(D-1) and w_d = c for d >= 2, c = RMS(w)^(1/D): the weight exactly (to
    rounding), every entry with the gradient scale of a weight of the layer's RMS."""
    rms = float(weight.double().pow(2).mean().sqrt())
    c = (rms if rms > 0 else 1.0) ** (1.0 / depth)
    return [weight / c ** (depth - 1), *(torch.full_like(weight, c) for _ in range(depth - 1))]


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
    elif filter_fn is not None:
        for fqn, module in model.named_modules():
            weight = module._parameters.get("weight") if hasattr(module, "_parameters") else None
            if isinstance(weight, nn.Parameter) and filter_fn(module, fqn):
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

    By default the weights `dwfc compress` factorizes by default are selected: those of the
    layer types in `dwfc.layers.DEFAULT_LAYER_TYPES` (Linear, convolutions, embeddings, attention
    and recurrent projections), a shared tensor once. `filter_fn(module, fqn)` instead picks
    modules whose `weight` is factorized; `params` names parameters directly (any tensor, e.g.
    "attn.in_proj_weight"). `init="balanced"` reproduces the current weights exactly
    (w_1 = sign(w)|w|^(1/D), w_d = |w|^(1/D)); `init="layer"` reproduces them too, but
    unbalanced: w_d = RMS^(1/D) for d >= 2 (RMS: the layer's root-mean-square weight) and
    w_1 = w / RMS^((D-1)/D), so that every weight, small or large, starts moving at the rate of a
    typical one and balance emerges under weight decay; `init="varmatch"` draws fresh factors for
    training from scratch. Create the optimizer after this call: the factors are new parameters.

    Example:
        model = torch.nn.Sequential(torch.nn.Linear(4, 3))
        dwfc.factorize_(model, depth=3)
        dwfc.collapse_(model)
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 2:
        raise InputError(f"depth must be an integer of at least 2, got {depth!r}")
    if init not in INITS:
        raise InputError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    if filter_fn is None and params is None:
        done = next(factorized_weights(model), None)
        if done is not None:
            raise InputError(f"'{done.name}' is already parametrized; collapse_ it first")
        apply_plan_(model, plan(model, FactorizeConfig(depth=depth)), init, generator)
        return
    targets = _named_targets(model, filter_fn, params)
    if not targets:
        raise InputError("no weight matched the selection: nothing to factorize")
    for name, module, pname in targets:
        _factorize_one(name, module, pname, depth, init, generator)


def _factorize_one(
    name: str, module: nn.Module, pname: str, depth: int, init: str,
    generator: torch.Generator | None,
) -> None:  # fmt: skip
    if parametrize.is_parametrized(module, pname):
        raise InputError(f"'{name}' is already parametrized; collapse_ it first")
    weight = module._parameters[pname]
    hadamard = HadamardFactors(depth)
    hadamard.parameter_order = _parameter_order(module)
    parametrize.register_parametrization(module, pname, hadamard)
    if init != "balanced":
        values = (_varmatch_factors(weight.detach(), depth, generator) if init == "varmatch"
                  else _layer_factors(weight.detach(), depth))  # fmt: skip
        for factor, value in zip(FactorizedWeight(name, module, pname).factors, values,
                                 strict=True):  # fmt: skip
            with torch.no_grad():
                factor.copy_(value)


def _owner(modules: dict[str, nn.Module], name: str) -> tuple[nn.Module, str]:
    owner, _, pname = name.rpartition(".")
    return modules[owner], pname


def _tie(alias: nn.Module, pname: str, source: nn.Module, source_name: str) -> None:
    """Make `alias.<pname>` read `source.<source_name>` (the factorized product) on every access.

    Like torch's parametrize, this swaps in a subclass with a property; `collapse_` undoes it.
    """
    order = list(alias._parameters)
    del alias._parameters[pname]
    cls = type(alias)
    attrs = {
        pname: property(lambda self: getattr(source, source_name)),
        "_dwfc_tied": (pname, source, source_name, order),
    }
    alias.__class__ = type(f"Tied{cls.__name__}", (cls,), attrs)


def apply_plan_(
    model: nn.Module, planned: list[PlannedWeight], init: str = "balanced",
    generator: torch.Generator | None = None,
) -> None:  # fmt: skip
    """Factorize exactly the weights of `planned`, each with its own depth, in place.

    A shared (tied) tensor is factorized once, under its first name; its other names read
    the same product, so the tie holds during training; `collapse_` makes them one parameter
    again.

    Example:
        apply_plan_(model, plan(model, FactorizeConfig()))
    """
    if not planned:
        raise InputError("the plan is empty: nothing to factorize")
    modules = dict(model.named_modules(remove_duplicate=False))
    by_depth: dict[int, list[PlannedWeight]] = {}
    for pw in planned:
        by_depth.setdefault(pw.depth, []).append(pw)
    for depth, group in by_depth.items():
        for pw in group:
            _factorize_one(pw.name, *_owner(modules, pw.name), depth, init, generator)
    for pw in planned:
        source, source_name = _owner(modules, pw.name)
        for alias in pw.aliases:
            _tie(*_owner(modules, alias), source, source_name)


def retie_(model: nn.Module) -> None:
    """Turn each tied alias made by `apply_plan_` back into the shared parameter (`collapse_`
    does this; a model whose factors are still there is refused).

    Example:
        apply_plan_(model, planned); ...train...; collapse_(model)  # ties restored
    """
    for name, module in model.named_modules():
        while "_dwfc_tied" in type(module).__dict__:
            pname, source, source_name, order = type(module)._dwfc_tied
            param = source._parameters.get(source_name)
            if not isinstance(param, nn.Parameter):
                raise InputError(f"cannot retie '{name}.{pname}': collapse_ the model first")
            module.__class__ = type(module).__bases__[0]
            module.register_parameter(pname, param)
            _restore_order(module._parameters, order)


def _restore_order(params: dict[str, Any], order: list[str]) -> None:
    for key in sorted(params, key=lambda n: order.index(n) if n in order else len(order)):
        params[key] = params.pop(key)


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
    """Multiply every factorized weight back into one plain parameter, masks applied, in place;
    channel gates (dwfc.structure.gates) are folded in the same way.

    After this the model has its original classes, parameter names and state_dict keys (tied
    weights are one parameter again), and pruned entries are exact zeros.

    Example:
        dwfc.factorize_(model); ...train...; dwfc.collapse_(model)
    """
    from dwfc.fused import unfuse_

    unfuse_(model)
    for fw in list(factorized_weights(model)):
        order = fw.parametrization.parameter_order
        parametrize.remove_parametrizations(fw.module, fw.param, leave_parametrized=True)
        _restore_order(fw.module._parameters, order)  # back to the original state_dict keys
    retie_(model)
    fold_gates_(model)


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
