"""Which weights get factorized: layer types, include/exclude patterns and per-pattern depth.

`plan(model, cfg)` resolves a `FactorizeConfig` into the exact list of weights (`dwfc plan`);
`dwfc.factorize.apply_plan_` factorizes them. Rules and pattern syntax: docs/selection.md.

Example:
    planned = plan(model, FactorizeConfig(exclude=["re:^fc\\d"], depth_overrides={"conv*": 4}))
    apply_plan_(model, planned)
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

from dwfc.config import FactorizeConfig
from dwfc.errors import InputError
from dwfc.layers import resolve_types, weights_of

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


def _class_names(module: nn.Module) -> frozenset[str]:
    return frozenset(c.__name__ for c in type(module).__mro__ if issubclass(c, nn.Module))


def _candidates(model: nn.Module, type_names: Iterable[str]) -> list[_Candidate]:
    """Every selectable weight in module order; a shared tensor only under its first name."""
    types = resolve_types(type_names)
    found: dict[int, _Candidate] = {}
    for fqn, module in model.named_modules(remove_duplicate=False):
        type_name = next((n for n, cls in types if isinstance(module, cls)), None)
        if type_name is None:
            continue
        for owner_fqn, owner, pname in weights_of(fqn, module):
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
