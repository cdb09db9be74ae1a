"""Sparsification methods, one module each; `sparsity.method` picks one by name.

To add a method: write dwfc/methods/<name>.py with a `Method` subclass (dwfc/methods/base.py)
and add one line below.
"""

from __future__ import annotations

from dwfc.errors import InputError
from dwfc.methods.base import Method
from dwfc.methods.dwf import Dwf
from dwfc.methods.gmp import Gmp
from dwfc.methods.l1 import L1
from dwfc.methods.oneshot import OneShot
from dwfc.methods.random import Random

METHODS: dict[str, type[Method]] = {m.name: m for m in (Dwf, Gmp, OneShot, Random, L1)}

__all__ = ["METHODS", "Method", "method_class"]


def method_class(name: str) -> type[Method]:
    """The class registered for `name`.

    Example:
        method_class("gmp").trains  # 'weights'
    """
    if name not in METHODS:
        raise InputError(f"unknown sparsity.method '{name}': use {', '.join(METHODS)}")
    return METHODS[name]
