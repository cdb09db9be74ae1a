"""Which weights get factorized: layer types, include/exclude patterns and per-pattern depth.

`plan(model, cfg)` resolves a `FactorizeConfig` into the exact list of weights (the `--dry-run`
table); `apply_plan_` factorizes them. Rules and pattern syntax: docs/selection.md.

Example:
    planned = plan(model, FactorizeConfig(exclude=["re:^fc\\d"], depth_overrides={"conv*": 4}))
    print(format_plan(planned, model))
    apply_plan_(model, planned)
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from .config import FactorizeConfig
from .errors import InputError
from .factorize import factorize_

# Normalisation layers: their parameters are never factorized, even when listed.
_NORM_TYPES: tuple[type[nn.Module], ...] = (
    _NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.RMSNorm,
)
_TYPE_PREFIX = "type:"
_RE_PREFIX = "re:"


@dataclass(frozen=True)
class PlannedWeight:
    """One weight that will be factorized.

    `name` is the fully qualified parameter name, `module_type` the entry of
    `FactorizeConfig.layer_types` that selected it, `aliases` the other names of a shared
    (tied) tensor, which is factorized once under `name`.

    Example:
        PlannedWeight("fc.weight", "Linear", (10, 784), 7840, 3)
    """

    name: str
    module_type: str
    shape: tuple[int, ...]
    numel: int
    depth: int
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Candidate:
    name: str
    module_type: str
    class_names: frozenset[str]  # the owner's class and its bases, for "type:" patterns
    param: nn.Parameter


def _resolve_types(type_names: Iterable[str]) -> list[tuple[str, type[nn.Module]]]:
    resolved = []
    for name in type_names:
        cls = getattr(nn, name, None)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise InputError(f"unknown layer type '{name}': expected a torch.nn class name")
        if issubclass(cls, _NORM_TYPES):
            raise InputError(f"layer type '{name}' is a normalisation layer: never factorized")
        resolved.append((name, cls))
    return resolved


def _weights_of(module: nn.Module) -> list[str]:
    """Names of `module`'s own weight tensors that DWF factorizes (never biases or 1-D)."""
    params = module._parameters
    if isinstance(module, nn.MultiheadAttention):
        names = ["in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"]
    elif isinstance(module, nn.RNNBase):
        names = [n for n in module._flat_weights_names if n.startswith("weight_")]
    else:
        names = ["weight"]
    return [n for n in names if isinstance(params.get(n), nn.Parameter) and params[n].dim() >= 2]


def _class_names(module: nn.Module) -> frozenset[str]:
    return frozenset(c.__name__ for c in type(module).__mro__ if issubclass(c, nn.Module))


def _candidates(model: nn.Module, type_names: Iterable[str]) -> list[_Candidate]:
    """Every selectable weight in module order; a shared tensor only under its first name."""
    types = _resolve_types(type_names)
    found: dict[int, _Candidate] = {}
    for fqn, module in model.named_modules(remove_duplicate=False):
        type_name = next((n for n, cls in types if isinstance(module, cls)), None)
        if type_name is None:
            continue
        owned = [(fqn, module, pname) for pname in _weights_of(module)]
        if isinstance(module, nn.MultiheadAttention):
            # out_proj is a Linear subclass: it belongs to the attention layer listed here.
            owned += [(f"{fqn}.out_proj" if fqn else "out_proj", module.out_proj, "weight")]
        for owner_fqn, owner, pname in owned:
            param = owner._parameters.get(pname)
            if isinstance(param, nn.Parameter) and id(param) not in found:
                name = f"{owner_fqn}.{pname}" if owner_fqn else pname
                found[id(param)] = _Candidate(name, type_name, _class_names(owner), param)
    return list(found.values())


def _aliases(model: nn.Module) -> dict[int, list[tuple[str, nn.Module, str]]]:
    """For each parameter id, its distinct (name, owner, attribute) places, in module order."""
    places: dict[int, list[tuple[str, nn.Module, str]]] = {}
    seen: set[tuple[int, str]] = set()
    for fqn, module in model.named_modules(remove_duplicate=False):
        for pname, param in module._parameters.items():
            if param is None or (id(module), pname) in seen:
                continue  # the same module reached by a second path is not another alias
            seen.add((id(module), pname))
            name = f"{fqn}.{pname}" if fqn else pname
            places.setdefault(id(param), []).append((name, module, pname))
    return places


def _matcher(pattern: str, where: str) -> Any:
    """A predicate on candidates for one pattern: glob, `re:<regex>` or `type:<Class>`."""
    if not isinstance(pattern, str) or not pattern.strip():
        raise InputError(f"{where}: empty pattern")
    if pattern.startswith(_RE_PREFIX):
        try:
            regex = re.compile(pattern[len(_RE_PREFIX) :])
        except re.error as exc:
            raise InputError(f"{where}: invalid regular expression {pattern!r}: {exc}") from None
        return lambda c: regex.search(c.name) is not None
    if pattern.startswith(_TYPE_PREFIX):
        type_name = pattern[len(_TYPE_PREFIX) :]
        return lambda c: type_name == c.module_type or type_name in c.class_names
    return lambda c: fnmatch.fnmatchcase(c.name, pattern)


def _compile(
    patterns: Iterable[str], where: str, candidates: list[_Candidate]
) -> list[tuple[str, Any]]:
    compiled = []
    for pattern in patterns:
        match = _matcher(pattern, where)
        if not any(match(c) for c in candidates):
            sample = ", ".join(c.name for c in candidates[:4])
            more = ", ..." if len(candidates) > 4 else ""
            raise InputError(
                f"{where} pattern {pattern!r} matches no candidate weight "
                f"(candidates: {sample}{more}; see `dwfc plan`)"
            )
        compiled.append((pattern, match))
    return compiled


def plan(model: nn.Module, cfg: FactorizeConfig) -> list[PlannedWeight]:
    """Resolve `cfg` (layer types, include, exclude, depth overrides) into the weights to factorize.

    Raises InputError for an unknown layer type, an invalid or unmatched pattern, a depth
    below 2 or an empty selection.

    Example:
        planned = plan(model, FactorizeConfig(include=["encoder.*"], depth_overrides={"re:fc": 4}))
    """
    candidates = _candidates(model, cfg.layer_types)
    if not candidates:
        raise InputError(
            f"the model has no weights of the layer types {', '.join(cfg.layer_types)}"
        )
    include = _compile(cfg.include, "include", candidates)
    exclude = _compile(cfg.exclude, "exclude", candidates)
    overrides = _compile(cfg.depth_overrides, "depth_overrides", candidates)
    for pattern, depth in cfg.depth_overrides.items():
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 2:
            raise InputError(f"depth_overrides[{pattern!r}] must be an integer >= 2, got {depth!r}")
    aliases = _aliases(model)
    planned = []
    for c in candidates:
        if include and not any(match(c) for _, match in include):
            continue
        if any(match(c) for _, match in exclude):
            continue
        depth = next((cfg.depth_overrides[p] for p, match in overrides if match(c)), cfg.depth)
        others = tuple(n for n, _, _ in aliases.get(id(c.param), []) if n != c.name)
        shape = tuple(c.param.shape)
        planned.append(PlannedWeight(c.name, c.module_type, shape, c.param.numel(), depth, others))
    if not planned:
        raise InputError("the include/exclude patterns leave no weight to factorize")
    return planned


def _owner(modules: dict[str, nn.Module], name: str) -> tuple[nn.Module, str]:
    owner, _, pname = name.rpartition(".")
    return modules[owner], pname


def _tie(alias: nn.Module, pname: str, source: nn.Module, source_name: str) -> None:
    """Make `alias.<pname>` read `source.<source_name>` (the factorized product) on every access.

    Like torch's parametrize, this swaps in a subclass with a property; `retie_` undoes it.
    """
    order = list(alias._parameters)
    del alias._parameters[pname]
    cls = type(alias)
    attrs = {
        pname: property(lambda self: getattr(source, source_name)),
        "_dwfc_tied": (pname, source, source_name, order),
    }
    alias.__class__ = type(f"Tied{cls.__name__}", (cls,), attrs)


def apply_plan_(model: nn.Module, planned: list[PlannedWeight], init: str = "balanced") -> None:
    """Factorize exactly the weights of `planned`, each with its own depth, in place.

    A shared (tied) tensor is factorized once, under its first name; its other names read
    the same product, so the tie holds during training. After `collapse_`, call `retie_` to
    make them one parameter again.

    Example:
        apply_plan_(model, plan(model, FactorizeConfig()))
    """
    if not planned:
        raise InputError("the plan is empty: nothing to factorize")
    by_depth: dict[int, list[str]] = {}
    for pw in planned:
        by_depth.setdefault(pw.depth, []).append(pw.name)
    for depth, names in by_depth.items():
        factorize_(model, depth=depth, params=names, init=init)  # type: ignore[arg-type]
    modules = dict(model.named_modules(remove_duplicate=False))
    for pw in planned:
        source, source_name = _owner(modules, pw.name)
        for alias in pw.aliases:
            _tie(*_owner(modules, alias), source, source_name)


def retie_(model: nn.Module) -> None:
    """After `collapse_`, turn each tied alias made by `apply_plan_` back into the shared parameter.

    Example:
        apply_plan_(model, planned); ...train...; collapse_(model); retie_(model)
    """
    for name, module in model.named_modules():
        while "_dwfc_tied" in type(module).__dict__:
            pname, source, source_name, order = type(module)._dwfc_tied
            param = source._parameters.get(source_name)
            if not isinstance(param, nn.Parameter):
                raise InputError(f"cannot retie '{name}.{pname}': collapse_ the model first")
            module.__class__ = type(module).__bases__[0]
            module.register_parameter(pname, param)
            params = module._parameters
            for key in sorted(params, key=lambda n: order.index(n) if n in order else len(order)):
                params[key] = params.pop(key)


def _total_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def plan_summary(planned: list[PlannedWeight], model: nn.Module) -> dict[str, Any]:
    """The plan as JSON-ready data: one entry per weight, and the totals.

    Example:
        json.dumps(plan_summary(planned, model))
    """
    factorized = sum(pw.numel for pw in planned)
    total = _total_parameters(model)
    return {
        "weights": [
            {
                "name": pw.name,
                "type": pw.module_type,
                "shape": list(pw.shape),
                "numel": pw.numel,
                "depth": pw.depth,
                "aliases": list(pw.aliases),
            }
            for pw in planned
        ],
        "factorized_tensors": len(planned),
        "factorized_weights": factorized,
        "total_parameters": total,
        "unfactorized_parameters": total - factorized,
        "factorized_share": factorized / total if total else 0.0,
    }


def format_plan(planned: list[PlannedWeight], model: nn.Module) -> str:
    """A plain-text table of the plan (name, type, shape, weights, depth) with totals.

    Example:
        print(format_plan(plan(model, FactorizeConfig()), model))
    """
    rows = [("name", "type", "shape", "weights", "depth")]
    for pw in planned:
        name = pw.name + (f" (= {', '.join(pw.aliases)})" if pw.aliases else "")
        shape = "x".join(str(d) for d in pw.shape)
        rows.append((name, pw.module_type, shape, f"{pw.numel:,}", str(pw.depth)))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    right = (False, False, False, True, True)
    lines = []
    for row in rows:
        cells = [
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    s = plan_summary(planned, model)
    lines += [
        "",
        f"factorized: {s['factorized_tensors']} tensors, {s['factorized_weights']:,} weights "
        f"of {s['total_parameters']:,} parameters ({100 * s['factorized_share']:.1f}%); "
        f"{s['unfactorized_parameters']:,} stay dense",
    ]
    return "\n".join(lines)
