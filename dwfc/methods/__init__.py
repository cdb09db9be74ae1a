"""Sparsification methods, one module each; `sparsity.method` picks one by name, from the
registry of the run's `structure.kind`.

To add a method: write dwfc/methods/<name>.py with a `Method` subclass (dwfc/methods/base.py;
channel methods: dwfc/methods/channels.py) and add it to one line below.
"""

from __future__ import annotations

from dwfc.errors import InputError
from dwfc.methods.base import Method
from dwfc.methods.dwf import Dwf
from dwfc.methods.filter_l1 import FilterL1
from dwfc.methods.gating import DGating
from dwfc.methods.gmp import Gmp
from dwfc.methods.group_gmp import GroupGmp
from dwfc.methods.group_lasso import GroupLasso
from dwfc.methods.l1 import L1
from dwfc.methods.oneshot import OneShot
from dwfc.methods.random import Random
from dwfc.methods.slimming import Slimming

METHODS: dict[str, type[Method]] = {m.name: m for m in (Dwf, Gmp, OneShot, Random, L1)}
CHANNEL_METHODS: dict[str, type[Method]] = {
    m.name: m for m in (DGating, FilterL1, GroupGmp, GroupLasso, Slimming)
}
REGISTRIES: dict[str, dict[str, type[Method]]] = {"unstructured": METHODS,
                                                   "channel": CHANNEL_METHODS}  # fmt: skip

__all__ = ["CHANNEL_METHODS", "METHODS", "REGISTRIES", "Method", "method_class"]


def method_class(name: str, structure: str = "unstructured") -> type[Method]:
    """The class registered for `name` under `structure` (a structure.kind).

    Example:
        method_class("gmp").trains  # 'weights'
        method_class("dwf", "channel").title  # 'structured DWF (D-Gating)'
    """
    methods = REGISTRIES.get(structure)
    if methods is None:
        raise InputError(f"unknown structure.kind '{structure}': use {', '.join(REGISTRIES)}")
    if name not in methods:
        raise InputError(f"unknown sparsity.method '{name}' for structure.kind={structure}: "
                         f"use {', '.join(methods)}")  # fmt: skip
    return methods[name]
